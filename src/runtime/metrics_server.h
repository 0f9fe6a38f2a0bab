// The /metrics endpoint of one rank (docs/observability.md): a small HTTP/1.1 server on
// one thread of its own (Boost.Beast over Asio) that answers GET /metrics with the
// registry rendered in Prometheus' text format (200), other methods on /metrics with 405,
// and every other path with 404. One request per connection (the response closes it).
//
// Bounded against slow or hostile clients: a request's header may take at most
// maxRequestBytes and carry no body, a connection lives at most requestTimeout from
// accept to the end of its response, and at most maxConnections are open at once (more
// are closed at accept). A malformed request gets 400 and the connection closes.
//
// Ownership: shares the registry. Threads: the constructor and stop() from any one
// thread; render() of the registry runs on the server's thread. Failure: the constructor
// throws TransportError naming the address and port when it cannot listen (in use, no
// permission, address not on this host); nothing leaves the server's thread (a failed
// render answers 500; an unexpected error is logged and the server keeps serving).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "skyring/logging.h"
#include "skyring/metrics.h"

namespace skyring::runtime {

struct MetricsServerOptions {
  std::string address = "127.0.0.1";  // numeric IPv4 or IPv6
  int port = 0;                       // 0: a free port the system picks (see port())
  std::chrono::milliseconds requestTimeout{5000};
  std::size_t maxRequestBytes = 8192;
  int maxConnections = 8;
};

class MetricsServer {
 public:
  MetricsServer(std::shared_ptr<const metrics::Registry> registry, MetricsServerOptions options,
                Logger logger);
  // stop(). noexcept.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port it listens on (the system's choice when options.port was 0).
  int port() const noexcept { return port_; }
  // Closes the listening socket and every connection, and joins the thread. Idempotent.
  void stop() noexcept;

  struct State;

 private:
  std::unique_ptr<State> state_;
  int port_ = 0;
};

}  // namespace skyring::runtime
