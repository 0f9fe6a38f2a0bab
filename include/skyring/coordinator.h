// The weight-aggregation coordinator's C++ client (docs/coordinator.md): what one leader
// of a cluster calls every H inner steps to submit its pseudo-gradient and fetch the new
// global weights from a `skyring-coordinator` service.
//
//   skyring::coordinator::Client c({.host = "127.0.0.1", .port = 7070,
//                                   .cluster = "aws", .token = token});
//   c.submit(round, delta, samples, "int8");  // delta = weights at round start - now
//   c.fetch(round, weights);                  // waits for the round to close
//
// TLS 1.3 when options.tls (the service must have a certificate); plain TCP otherwise
// (which the service serves on loopback only).
//
// Failure: every error is a skyring::Error: TransportError for a refusal (the service's
// reason in the message: wrong token, unknown cluster, size mismatch, ...) or a broken
// connection; Timeout when the service does not answer in time (no call waits longer
// than its timeout); InvalidArgument for bad arguments. After a TransportError or Timeout
// the connection is closed: the next call reconnects (and re-authenticates) first, so a
// caller simply retries the call; the service counts a (cluster, round) once, so a
// repeated submit is answered as a duplicate rather than counted twice.
//
// Threads: one Client per thread at a time. Owns its socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace skyring::coordinator {

struct ClientOptions {
  std::string host = "127.0.0.1";  // numeric address or name
  std::uint16_t port = 0;
  std::string cluster;  // this cluster's name, one of the service's members
  std::string token;    // the job token (the service's --token-file)
  // TLS 1.3 (the service's --tls-cert): the service's certificate must chain to tlsCaFile
  // (PEM; empty: the system's CAs) and name tlsServerName (empty: host; an IP address is
  // matched against the certificate's IP entries).
  bool tls = false;
  std::string tlsCaFile;
  std::string tlsServerName;
  // Connecting: each attempt is bounded by connectTimeout; failed attempts are retried
  // with a growing pause (100 ms doubling, at most 2 s) for up to connectAttempts in all.
  std::chrono::milliseconds connectTimeout{std::chrono::seconds(10)};
  int connectAttempts = 5;
  // Any send or any reply (but fetch's wait for the round to close) must progress within it.
  std::chrono::milliseconds ioTimeout{std::chrono::seconds(60)};
  // How long fetch() waits for its round to close.
  std::chrono::milliseconds roundTimeout{std::chrono::minutes(30)};
  std::size_t chunkElements = std::size_t{1} << 18;  // elements per submit-chunk frame
};

enum class SubmitOutcome : std::uint8_t {
  counted,    // in this round's average
  duplicate,  // (cluster, round) was counted already (a retry): nothing added
  carried,    // late, carried into the open round's average (late policy `carry`)
  late,       // the round had closed: dropped
};
std::string_view submitOutcomeName(SubmitOutcome o) noexcept;

struct RoundInfo {
  std::uint64_t round = 0;  // the round asked about
  std::uint64_t open = 0;   // the service's open round
  enum class State : std::uint8_t { open = 0, closed = 1, future = 2 } state = State::open;
  bool counted = false;  // this cluster's submission of `round` is counted
  std::uint32_t submitted = 0, quorum = 0, members = 0;
};

// fetch(kLatest, ...): the current global weights, whatever round they are from (a
// cluster that (re)joins starts from them).
inline constexpr std::uint64_t kLatest = ~std::uint64_t{0};

class Client {
 public:
  // Connects and authenticates (both sides prove the token); throws as above.
  explicit Client(ClientOptions options);
  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;

  // The service's open round and the model's element count, as of the last hello.
  std::uint64_t openRound() const noexcept;
  std::uint64_t elementCount() const noexcept;

  // Streams delta (the model's size) encoded with codec ("none", "fp16", "bf16", "int8")
  // in chunks, weighted by samples (> 0). Memory: one encoded chunk.
  SubmitOutcome submit(std::uint64_t round, std::span<const float> delta, std::uint64_t samples,
                       std::string_view codec = "none");
  // Waits until round has closed (up to roundTimeout), then fills weights (the model's
  // size) with the global weights after it; returns the round they are from (the latest
  // closed one, >= round; kLatest for the initial weights when none has closed).
  std::uint64_t fetch(std::uint64_t round, std::span<float> weights);
  RoundInfo status(std::uint64_t round);
  void close() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring::coordinator
