// The coordinator's network service (internal; the `skyring-coordinator` executable wraps
// it, tests run it in-process): Boost.Asio on one io_context thread serving many cluster
// leaders over the framed protocol of wire.h, feeding an Aggregator as chunks arrive.
//
// Per connection: challenge -> hello (job-token proof, auth.h) -> welcome; then any number
// of submit-begin / submit-chunk* / submit-end, fetch (weights streamed in frames; a fetch
// of a round still open waits until it closes), status. Replies:
//   submit-begin: round-status (accepted or duplicate: `counted` says which) or late
//                 (carried: go on streaming; dropped: do not);
//   submit-end:   round-status (counted) or late (dropped or carried);
//   fetch(r):     weights frames of the weights after the last closed round >= r (their
//                 `round` field names it; kLatestRound asks for the current ones);
//   status(r):    round-status.
// Bad input (a wrong token or version, garbage, a truncated or oversized frame, a message
// out of place, a payload not of the model's size) is answered with an error frame naming
// the reason, then that connection alone is closed. A connection that completes no frame
// within idleTimeout (nor takes any of the weights sent to it) is closed; connections
// beyond maxConnections are refused with `overloaded`.
//
// Durability: every closed round is checkpointed (checkpoint.h) before anything that
// depends on it is sent; the constructor resumes from the checkpoint in checkpointDir.
//
// Observability: options.metricsPort serves /metrics (runtime/metrics_server.h).
//
// Security: TLS 1.3 (asio::ssl over OpenSSL) when options name a certificate and key;
// otherwise plain TCP, and the constructor refuses a non-loopback address. Either way the
// job token proves membership.
//
// Threads: the constructor binds; start() runs the loop on a thread of its own, run() on
// the caller's; stop() is safe from any thread (and a signal-handling thread). A failed
// checkpoint stops the service (it must not acknowledge what is not durable); run() then
// throws it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/aggregator.h"

namespace skyring::coordinator {

// fetch(kLatestRound): the current global weights, whatever round they are from.
inline constexpr std::uint64_t kLatestRound = ~std::uint64_t{0};

struct ServiceOptions {
  std::string address = "127.0.0.1";  // numeric; any when TLS is on, else loopback only
  // TLS 1.3 (and nothing older) when both are set: PEM files of the certificate chain and
  // its private key. Unset: plain TCP, loopback only (tests, or behind a tunnel).
  std::string tlsCertificate, tlsKey;
  std::uint16_t port = 0;     // 0: any free port (see Service::port())
  std::string token;          // the job token; empty allowed (loopback only)
  std::string checkpointDir;  // empty: no durability (tests)
  AggregatorOptions aggregator;
  // The weights of round 0 when checkpointDir holds no checkpoint; their size is the model's.
  std::vector<float> initialWeights;
  std::size_t maxFramePayload = (std::size_t{4} << 20) + 64;
  std::size_t maxConnections = 256;
  std::chrono::milliseconds idleTimeout{std::chrono::seconds(60)};
  std::size_t weightsFrameElements = std::size_t{1} << 18;  // 1 MiB of f32 per weights frame
  // GET /metrics in Prometheus' text format (service_metrics.h) on a thread of its own;
  // -1: not served, 0: any free port (see Service::metricsPort()).
  int metricsPort = -1;
  std::string metricsAddress = "127.0.0.1";
};

class Service {
 public:
  // Validates the options, loads the checkpoint (if any) and binds. Throws InvalidArgument
  // for bad options (a non-loopback address among them) or a corrupt checkpoint, and
  // TransportError when the address cannot be bound.
  explicit Service(ServiceOptions options);
  ~Service();  // stop(), then joins the thread of start()
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  std::uint16_t port() const noexcept;
  int metricsPort() const noexcept;  // -1 when not served
  void start();                      // serve on a thread of its own
  void run();                        // serve on this thread until stop(); rethrows a fatal error
  void stop();
  // The open round (read on the loop's thread; approximate from another).
  std::uint64_t openRound() const noexcept;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring::coordinator
