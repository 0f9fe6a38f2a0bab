#include "coordinator/service.h"

#include <boost/asio/ip/tcp.hpp>
#include <exception>
#include <iostream>
#include <thread>

#include "coordinator/checkpoint.h"
#include "coordinator/service_connection.h"
#include "skyring/error.h"

namespace skyring::coordinator {

using service_detail::Connection;
using Impl = Service::Impl;

namespace {

const ErrorContext kCtx{-1, -1, "coordinator service"};

bool isLoopback(const asio::ip::address& a) {
  return a.is_loopback() ||
         (a.is_v6() && a.to_v6().is_v4_mapped() &&
          asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback());
}

}  // namespace

void Impl::accept() {
  acceptor.async_accept([this](error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || stopped) return;
    if (ec) {  // out of descriptors, say: try again shortly rather than spin
      retry.expires_after(std::chrono::milliseconds(100));
      retry.async_wait([this](error_code e) {
        if (!e) accept();
      });
      return;
    }
    const std::uint64_t id = nextId++;
    auto c = std::make_shared<Connection>(std::move(socket), *this, id);
    connections[id] = c;
    if (open >= options.maxConnections) {
      c->refuse("too many connections (the limit is " + std::to_string(options.maxConnections) +
                "); try again later");
    } else {
      c->start();
    }
    accept();
  });
}

void Impl::fatal(std::exception_ptr e) {
  if (!failure) failure = e;
  stopped = true;
  io.stop();
}

void Impl::afterEvent() {
  publish();
  const std::uint64_t now = agg->state().round;
  if (now == round.load()) return;
  round = now;
  const auto closed = Clock::now();
  metrics.roundClosed(std::chrono::duration<double>(closed - opened).count());
  opened = closed;
  if (!options.checkpointDir.empty()) {
    try {
      saveCheckpoint(options.checkpointDir, agg->state());
    } catch (...) {
      fatal(std::current_exception());
      return;
    }
  }
  armDeadline();
  std::vector<std::shared_ptr<Connection>> live;
  for (auto& [id, weak] : connections)
    if (auto c = weak.lock()) live.push_back(std::move(c));
  for (auto& c : live)
    c->roundClosed();
}

void Impl::armDeadline() {
  deadline.expires_at(agg->deadline());
  deadline.async_wait([this](error_code ec) {
    if (ec || stopped) return;
    agg->poll(Clock::now());
    afterEvent();  // re-arms if it closed; otherwise the quorum's last end() closes it
  });
}

Service::Service(ServiceOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl& s = *impl_;
  error_code ec;
  const auto address = asio::ip::make_address(s.options.address, ec);
  if (ec) {
    SKYRING_THROW(InvalidArgument, kCtx, "listen address '", s.options.address,
                  "' is not a numeric IPv4 or IPv6 address");
  }
  SKYRING_CHECK_ARG(s.options.tlsCertificate.empty() == s.options.tlsKey.empty(), kCtx,
                    "TLS needs both a certificate and its private key");
  if (!s.options.tlsCertificate.empty()) {
    s.tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    SSL_CTX_set_min_proto_version(s.tls->native_handle(), TLS1_3_VERSION);
    try {
      s.tls->use_certificate_chain_file(s.options.tlsCertificate);
      s.tls->use_private_key_file(s.options.tlsKey, asio::ssl::context::pem);
    } catch (const boost::system::system_error& e) {
      SKYRING_THROW(InvalidArgument, kCtx, "cannot use the TLS certificate '",
                    s.options.tlsCertificate, "' and key '", s.options.tlsKey, "': ", e.what());
    }
    // auth.h: an empty token is a key anyone can compute.
    SKYRING_CHECK_ARG(!s.options.token.empty() || isLoopback(address), kCtx,
                      "an empty job token on ", s.options.address,
                      " would let anyone in; give a token (--token-file) or listen on loopback");
  } else if (!isLoopback(address)) {
    SKYRING_THROW(InvalidArgument, kCtx, "refusing to listen on ", s.options.address,
                  " without TLS: plain TCP is for loopback only (127.0.0.1 or ::1); give a "
                  "certificate and key (--tls-cert, --tls-key)");
  }
  SKYRING_CHECK_ARG(s.options.maxConnections >= 1, kCtx, "maxConnections must be at least 1");
  SKYRING_CHECK_ARG(s.options.idleTimeout.count() > 0, kCtx, "idleTimeout must be positive");
  SKYRING_CHECK_ARG(s.options.weightsFrameElements >= 1 &&
                        s.options.weightsFrameElements * 4 + 64 <= s.options.maxFramePayload,
                    kCtx, "weightsFrameElements must fit one frame of maxFramePayload bytes");
  s.key = auth::deriveKey(s.options.token);
  std::optional<CoordinatorState> state;
  if (!s.options.checkpointDir.empty()) state = loadCheckpoint(s.options.checkpointDir);
  if (!state) {
    state.emplace();
    state->weights = s.options.initialWeights;
  } else if (!s.options.initialWeights.empty() &&
             state->weights.size() != s.options.initialWeights.size()) {
    SKYRING_THROW(InvalidArgument, kCtx, "the checkpoint in ", s.options.checkpointDir, " has ",
                  state->weights.size(), " elements, the options say ",
                  s.options.initialWeights.size());
  }
  s.agg = std::make_unique<Aggregator>(s.options.aggregator, std::move(*state), Clock::now());
  s.round = s.agg->state().round;

  const tcp::endpoint endpoint(address, s.options.port);
  const std::string where = s.options.address + ":" + std::to_string(s.options.port);
  auto check = [&](const char* step) {
    if (ec) {
      SKYRING_THROW(TransportError, kCtx, "cannot listen on ", where, " (", step,
                    "): ", ec.message());
    }
  };
  s.acceptor.open(endpoint.protocol(), ec);
  check("socket");
  s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  check("SO_REUSEADDR");
  s.acceptor.bind(endpoint, ec);
  check("bind");
  s.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  check("listen");
  s.port = s.acceptor.local_endpoint(ec).port();
  check("local address");
  s.accept();
  s.armDeadline();
  s.publish();
  if (s.options.metricsPort >= 0) {
    runtime::MetricsServerOptions mo;
    mo.address = s.options.metricsAddress;
    mo.port = s.options.metricsPort;
    s.metricsServer = std::make_unique<runtime::MetricsServer>(s.metrics.registry(), mo, Logger());
  }
}

Service::~Service() {
  stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  // Close what is left on this thread (the loop is over): no handler runs any more.
  impl_->stopped = true;
  std::vector<std::shared_ptr<Connection>> live;
  for (auto& [id, weak] : impl_->connections)
    if (auto c = weak.lock()) live.push_back(std::move(c));
  for (auto& c : live)
    c->shutdown();
}

std::uint16_t Service::port() const noexcept {
  return impl_->port;
}

int Service::metricsPort() const noexcept {
  return impl_->metricsServer ? impl_->metricsServer->port() : -1;
}

std::uint64_t Service::openRound() const noexcept {
  return impl_->round.load();
}

void Service::start() {
  impl_->thread = std::thread([this] {
    try {
      run();
    } catch (const std::exception& e) {
      std::cerr << "skyring-coordinator: " << e.what() << "\n";
    }
  });
}

void Service::run() {
  Impl& s = *impl_;
  while (!s.stopped) {
    try {
      s.io.run();
      break;
    } catch (const std::exception& e) {
      // A handler's unexpected error: the loop goes on serving the others.
      std::cerr << "skyring-coordinator: " << e.what() << "\n";
    }
  }
  if (s.failure) std::rethrow_exception(s.failure);
}

void Service::stop() {
  Impl& s = *impl_;
  asio::post(s.io, [&s] {
    s.stopped = true;
    error_code ignored;
    s.acceptor.close(ignored);
    s.io.stop();
  });
  if (s.stopped) s.io.stop();
}

}  // namespace skyring::coordinator
