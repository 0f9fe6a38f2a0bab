#include "runtime/metrics_server.h"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <thread>

#include "skyring/error.h"

namespace skyring::runtime {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Members in destruction order that matters: io is destroyed before the counters and the
// registry that the sessions its pending handlers own still touch, and after the acceptor
// and timer that live on it.
struct MetricsServer::State {
  State(std::shared_ptr<const metrics::Registry> r, MetricsServerOptions o, Logger l)
      : registry(std::move(r)), options(std::move(o)), logger(l) {}
  std::shared_ptr<const metrics::Registry> registry;
  MetricsServerOptions options;
  Logger logger;
  std::atomic<int> open{0};
  std::atomic<bool> stopped{false};
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer retry{io};
  std::thread thread;
};

namespace {

using State = MetricsServer::State;

// One connection: read one request (bounded in size and time), answer, close.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, State& state)
      : stream_(std::move(socket)), buffer_(state.options.maxRequestBytes), state_(state) {
    state_.open.fetch_add(1, std::memory_order_relaxed);
  }
  ~Session() { state_.open.fetch_sub(1, std::memory_order_relaxed); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start() {
    // One deadline for the whole exchange: a client that trickles bytes is cut off too.
    stream_.expires_after(state_.options.requestTimeout);
    parser_.header_limit(static_cast<std::uint32_t>(state_.options.maxRequestBytes));
    http::async_read(
        stream_, buffer_, parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->onRead(ec); });
  }

 private:
  void onRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted) {
      close();
      return;
    }
    if (ec) {
      respond(http::status::bad_request, "bad request: " + ec.message() + "\n");
      return;
    }
    const auto& request = parser_.get();
    std::string_view target(request.target().data(), request.target().size());
    target = target.substr(0, target.find('?'));
    if (target != "/metrics") {
      respond(http::status::not_found, "not found: skyring serves /metrics only\n");
      return;
    }
    if (request.method() != http::verb::get) {
      respond(http::status::method_not_allowed, "method not allowed: GET /metrics\n");
      return;
    }
    std::string body;
    try {
      body = state_.registry->render();
    } catch (const std::exception& e) {
      respond(http::status::internal_server_error, std::string("error: ") + e.what() + "\n");
      return;
    }
    respond(http::status::ok, std::move(body), "text/plain; version=0.0.4; charset=utf-8");
  }

  void respond(http::status status, std::string body,
               const char* type = "text/plain; charset=utf-8") {
    response_.version(11);
    response_.result(status);
    response_.set(http::field::server, "skyring");
    response_.set(http::field::content_type, type);
    if (status == http::status::method_not_allowed) response_.set(http::field::allow, "GET");
    response_.keep_alive(false);
    response_.body() = std::move(body);
    response_.prepare_payload();
    http::async_write(
        stream_, response_,
        [self = shared_from_this()](beast::error_code, std::size_t) { self->close(); });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;                      // limited to maxRequestBytes
  http::request_parser<http::empty_body> parser_;  // a body is an error (GET has none)
  http::response<http::string_body> response_;
  State& state_;
};

void accept(State& s) {
  s.acceptor.async_accept([&s](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || s.stopped.load()) return;
    if (ec) {
      // Out of descriptors, say: try again shortly rather than spin.
      SKYRING_LOG(s.logger, debug, "metrics: accept failed: ", ec.message());
      s.retry.expires_after(std::chrono::milliseconds(100));
      s.retry.async_wait([&s](beast::error_code e) {
        if (!e) accept(s);
      });
      return;
    }
    if (s.open.load(std::memory_order_relaxed) >= s.options.maxConnections) {
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      std::make_shared<Session>(std::move(socket), s)->start();
    }
    accept(s);
  });
}

}  // namespace

MetricsServer::MetricsServer(std::shared_ptr<const metrics::Registry> registry,
                             MetricsServerOptions options, Logger logger)
    : state_(std::make_unique<State>(std::move(registry), std::move(options), logger)) {
  State& s = *state_;
  const ErrorContext ctx{logger.rank(), -1, "metrics"};
  const std::string where = s.options.address + ":" + std::to_string(s.options.port);
  beast::error_code ec;
  const auto address = asio::ip::make_address(s.options.address, ec);
  if (ec) {
    SKYRING_THROW(InvalidArgument, ctx, "metrics address '", s.options.address,
                  "' is not a numeric IPv4 or IPv6 address");
  }
  if (s.options.port < 0 || s.options.port > 65535) {
    SKYRING_THROW(InvalidArgument, ctx, "metrics port ", s.options.port, " is not in 0..65535");
  }
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(s.options.port));
  auto check = [&](const char* step) {
    if (ec) {
      SKYRING_THROW(TransportError, ctx, "cannot serve metrics on ", where, " (", step,
                    "): ", ec.message());
    }
  };
  s.acceptor.open(endpoint.protocol(), ec);
  check("socket");
  // Lets a restarted job bind while the old connections linger in TIME_WAIT; a port with
  // a live listener still fails (Linux refuses SO_REUSEADDR over a listening socket).
  s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  check("SO_REUSEADDR");
  s.acceptor.bind(endpoint, ec);
  check("bind");
  s.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  check("listen");
  port_ = s.acceptor.local_endpoint(ec).port();
  check("local address");
  accept(s);
  s.thread = std::thread([&s] {
    // Nothing leaves this thread: an unexpected error from a handler is logged, and the
    // loop goes on serving.
    while (!s.stopped.load()) {
      try {
        s.io.run();
        return;
      } catch (const std::exception& e) {
        SKYRING_LOG(s.logger, warn, "metrics server: ", e.what());
      } catch (...) {
        SKYRING_LOG(s.logger, warn, "metrics server: unknown error");
      }
    }
  });
}

MetricsServer::~MetricsServer() {
  stop();
}

void MetricsServer::stop() noexcept {
  State& s = *state_;
  if (s.stopped.exchange(true)) return;
  // The acceptor belongs to the server's thread: close it there, then stop the loop.
  asio::post(s.io, [&s] {
    beast::error_code ignored;
    s.acceptor.close(ignored);
    s.retry.cancel();
    s.io.stop();
  });
  if (s.thread.joinable()) s.thread.join();
}

}  // namespace skyring::runtime
