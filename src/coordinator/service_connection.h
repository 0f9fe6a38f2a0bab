// The service's loop state and one client connection (internal to service.cc, which alone
// includes this): the per-connection protocol machine of service.h on the loop's thread.
// Split from service.cc only to keep files short; see service.h for the behaviour.
#pragma once

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <deque>
#include <exception>
#include <unordered_map>

#include "coordinator/auth.h"
#include "coordinator/service.h"
#include "coordinator/service_metrics.h"
#include "runtime/metrics_server.h"
#include "skyring/error.h"

namespace skyring::coordinator {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace service_detail {
class Connection;
}  // namespace service_detail

// Members the connections touch are declared before io, so io (and the handlers it still
// owns, holding connections) is destroyed first.
struct Service::Impl {
  explicit Impl(ServiceOptions o) : options(std::move(o)) {}
  void accept();
  void afterEvent();  // checkpoint and re-arm after a close; wakes waiting fetches
  void armDeadline();
  void fatal(std::exception_ptr e);
  void publish() noexcept {
    metrics.publish(agg->stats(), agg->state().round);
    metrics.connections(open);
  }

  ServiceOptions options;
  auth::Key key{};
  std::unique_ptr<Aggregator> agg;
  ServiceMetrics metrics;
  std::unique_ptr<runtime::MetricsServer> metricsServer;
  std::unique_ptr<asio::ssl::context> tls;  // null: plain TCP (loopback only)
  Clock::time_point opened = Clock::now();  // of the open round (or of the start)
  std::atomic<std::uint64_t> round{0};      // agg's open round, for openRound()
  std::size_t open = 0;                     // authenticated or not, refused ones excluded
  std::uint64_t nextId = 1;
  std::unordered_map<std::uint64_t, std::weak_ptr<service_detail::Connection>> connections;
  // cluster -> the connection whose submission is in flight (a reconnect's begin takes it
  // over, and the old connection's close must not abort the new one's submission).
  std::unordered_map<std::string, std::uint64_t> owner;
  std::exception_ptr failure;
  std::atomic<bool> stopped{false};
  std::uint16_t port = 0;
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer deadline{io};
  asio::steady_timer retry{io};
  std::thread thread;
};

namespace service_detail {

using Impl = Service::Impl;

inline std::string clip(std::string s) {
  if (s.size() > wire::kMaxReasonBytes) s.resize(wire::kMaxReasonBytes);
  return s;
}

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, Impl& impl, std::uint64_t id)
      : socket_(std::move(socket)),
        idle_(impl.io),
        decoder_(impl.options.maxFramePayload),
        impl_(impl),
        id_(id) {
    if (impl.tls) tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, *impl.tls);
  }

  void start() {
    ++impl_.open;
    counted_ = true;
    secure([this] {
      challenge_.serverNonce = auth::randomNonce();
      send(wire::encode(challenge_));
      read();
    });
  }

  // Answers `overloaded` and closes, without counting as an open connection.
  void refuse(const std::string& reason) {
    secure([this, reason] { fail(wire::ErrorCode::overloaded, reason); });
  }

  // Called by the service after a round closed: serves a fetch waiting for it.
  void roundClosed() {
    if (waitingFetch_ && impl_.agg->state().round > waitRound_) {
      waitingFetch_ = false;
      startFetch();
      touch();
    }
  }

  void shutdown() { teardown(); }

 private:
  // Runs then() once the TLS handshake is done (at once without TLS); the idle timeout
  // bounds the handshake too.
  template <typename F>
  void secure(F then) {
    touch();
    if (!tls_) {
      then();
      return;
    }
    tls_->async_handshake(asio::ssl::stream_base::server,
                          [self = shared_from_this(), then](error_code ec) {
                            if (self->closed_) return;
                            if (ec) {  // not TLS, or a TLS we do not take (below 1.3)
                              self->impl_.metrics.refused();
                              self->teardown();
                              return;
                            }
                            then();
                          });
  }

  void touch() {
    if (closed_) return;
    idle_.expires_after(impl_.options.idleTimeout);
    idle_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->closed_) return;
      if (self->waitingFetch_) return;  // the service makes it wait, not the client
      self->teardown();
    });
  }

  void read() {
    if (closed_ || closing_ || reading_) return;
    if (out_.size() >= 4) {  // the peer does not take our replies: stop reading it
      readPaused_ = true;
      return;
    }
    reading_ = true;
    auto done = [self = shared_from_this()](error_code ec, std::size_t n) {
      self->reading_ = false;
      self->onRead(ec, n);
    };
    if (tls_) {
      tls_->async_read_some(asio::buffer(buffer_), std::move(done));
    } else {
      socket_.async_read_some(asio::buffer(buffer_), std::move(done));
    }
  }

  void onRead(error_code ec, std::size_t n) {
    if (closed_ || closing_) return;
    if (ec) {
      teardown();  // a peer that closes mid-frame merely truncated its own stream
      return;
    }
    try {
      decoder_.feed(std::span(buffer_).first(n));
      wire::Frame frame;
      while (!closing_ && !closed_ && decoder_.next(frame)) {
        touch();
        handle(frame);
      }
    } catch (const Error& e) {
      const bool version = e.detail().find("version") != std::string::npos;
      fail(version ? wire::ErrorCode::badVersion : wire::ErrorCode::badFrame, e.detail());
      return;
    }
    impl_.publish();
    read();
  }

  void handle(const wire::Frame& frame) {
    try {
      if (cluster_.empty()) {
        hello(frame);
        return;
      }
      Aggregator& agg = *impl_.agg;
      switch (frame.type) {
        case wire::FrameType::submitBegin: {
          const auto b = wire::parseSubmitBegin(frame);
          if (b.count != agg.elementCount()) {
            fail(wire::ErrorCode::badRequest, "submission of " + std::to_string(b.count) +
                                                  " elements; the model has " +
                                                  std::to_string(agg.elementCount()));
            return;
          }
          const Admission a = agg.begin(cluster_, b, Clock::now());
          if (a == Admission::accepted || a == Admission::carried) impl_.owner[cluster_] = id_;
          impl_.afterEvent();  // begin closes a round whose deadline passed with quorum
          reply(a, b.round);
          break;
        }
        case wire::FrameType::submitChunk: {
          const auto c = wire::parseSubmitChunk(frame);
          agg.chunk(cluster_, c.offset, c.blob);
          break;
        }
        case wire::FrameType::submitEnd: {
          const auto e = wire::parseSubmitEnd(frame);
          const Admission a = agg.end(cluster_, e.round, Clock::now());
          release();
          impl_.afterEvent();  // the checkpoint comes before the answer
          reply(a, e.round);
          break;
        }
        case wire::FrameType::fetch: {
          const auto f = wire::parseFetch(frame);
          if (fetching_ || waitingFetch_) {
            fail(wire::ErrorCode::badRequest, "a fetch while another is being answered");
            return;
          }
          if (f.offset >= agg.elementCount()) {
            fail(wire::ErrorCode::badRequest, "fetch from element " + std::to_string(f.offset) +
                                                  " of a model of " +
                                                  std::to_string(agg.elementCount()));
            return;
          }
          fetchFrom_ = f.offset;
          if (f.round != kLatestRound && f.round >= agg.state().round) {
            waitingFetch_ = true;  // answered when the round closes (Impl::afterEvent)
            waitRound_ = f.round;
            return;
          }
          startFetch();
          break;
        }
        case wire::FrameType::status: {
          const auto s = wire::parseStatus(frame);
          send(wire::encode(agg.status(cluster_, s.round)));
          break;
        }
        default:
          fail(wire::ErrorCode::badRequest,
               "unexpected frame of type " + std::to_string(static_cast<int>(frame.type)));
      }
    } catch (const Error& e) {
      release();
      impl_.afterEvent();
      fail(wire::ErrorCode::badRequest, e.detail());
    }
  }

  void hello(const wire::Frame& frame) {
    if (frame.type != wire::FrameType::hello) {
      fail(wire::ErrorCode::badRequest, "the first message must be hello");
      return;
    }
    const auto h = wire::parseHello(frame);
    const auto& members = impl_.options.aggregator.clusters;
    if (std::find(members.begin(), members.end(), h.cluster) == members.end()) {
      fail(wire::ErrorCode::unauthorized, "unknown cluster '" + h.cluster + "'");
      return;
    }
    const auto expected =
        auth::clientProof(impl_.key, challenge_.serverNonce, h.clientNonce, h.cluster);
    if (!auth::sameMac(expected, h.proof)) {
      fail(wire::ErrorCode::unauthorized,
           "cluster '" + h.cluster + "': wrong job token (the proof does not match)");
      return;
    }
    cluster_ = h.cluster;
    impl_.agg->join(cluster_);
    wire::Welcome w;
    w.round = impl_.agg->state().round;
    w.count = impl_.agg->elementCount();
    w.proof = auth::serverProof(impl_.key, challenge_.serverNonce, h.clientNonce, h.cluster);
    send(wire::encode(w));
  }

  void reply(Admission a, std::uint64_t round) {
    const Aggregator& agg = *impl_.agg;
    if (a == Admission::lateDropped || a == Admission::carried) {
      wire::Late late;
      late.round = round;
      late.current = agg.state().round;
      late.disposition =
          a == Admission::carried ? wire::LateDisposition::carried : wire::LateDisposition::dropped;
      send(wire::encode(late));
    } else {
      send(wire::encode(agg.status(cluster_, round)));
    }
  }

  void startFetch() {
    fetching_ = true;
    fetchAt_ = fetchFrom_;
    pump();
  }

  // Queues the next weights frames, two at a time: memory stays at two frames whatever
  // the model, and a round that closes meanwhile shows in the frames' round field (the
  // client then starts over).
  void pump() {
    const CoordinatorState& s = impl_.agg->state();
    while (fetching_ && out_.size() < 2) {
      const std::uint64_t n =
          std::min<std::uint64_t>(impl_.options.weightsFrameElements, s.weights.size() - fetchAt_);
      wire::Weights w;
      w.round = s.round - 1;  // kLatestRound (all ones) before any close: the initial weights
      w.offset = fetchAt_;
      w.total = s.weights.size();
      w.values = std::as_bytes(std::span(s.weights).subspan(fetchAt_, n));
      send(wire::encode(w));
      fetchAt_ += n;
      if (fetchAt_ == s.weights.size()) fetching_ = false;
    }
  }

  // The cluster's submission through this connection is over (ended, refused or gone).
  void release() {
    auto it = impl_.owner.find(cluster_);
    if (it != impl_.owner.end() && it->second == id_) impl_.owner.erase(it);
  }

  void fail(wire::ErrorCode code, const std::string& reason) {
    if (closing_ || closed_) return;
    wire::ErrorMessage m;
    m.code = code;
    m.reason = clip(reason);
    fetching_ = false;
    waitingFetch_ = false;
    impl_.metrics.refused();
    send(wire::encode(m));
    closing_ = true;  // closes once the error is written (or the idle timer fires)
  }

  void send(std::vector<std::byte> bytes) {
    out_.push_back(std::move(bytes));
    if (!writing_) write();
  }

  void write() {
    writing_ = true;
    auto done = [self = shared_from_this()](error_code ec, std::size_t) { self->onWritten(ec); };
    if (tls_) {
      asio::async_write(*tls_, asio::buffer(out_.front()), std::move(done));
    } else {
      asio::async_write(socket_, asio::buffer(out_.front()), std::move(done));
    }
  }

  void onWritten(error_code ec) {
    if (closed_ || ec) {
      writing_ = false;
      teardown();
      return;
    }
    impl_.metrics.bytesSent(out_.front().size());
    out_.pop_front();
    touch();
    if (fetching_) pump();  // only queues: writing_ is still set
    writing_ = false;
    if (!out_.empty()) {
      write();
    } else if (closing_) {
      teardown();
      return;
    }
    if (readPaused_ && out_.size() < 2) {
      readPaused_ = false;
      read();
    }
  }

  void teardown() {
    if (closed_) return;
    closed_ = true;
    error_code ignored;
    idle_.cancel();
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    if (counted_) --impl_.open;
    impl_.connections.erase(id_);
    impl_.publish();
    auto it = cluster_.empty() ? impl_.owner.end() : impl_.owner.find(cluster_);
    if (it != impl_.owner.end() && it->second == id_) {
      impl_.owner.erase(it);
      if (impl_.agg && !impl_.stopped) impl_.agg->abort(cluster_);
    }
  }

  tcp::socket socket_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;  // over socket_; null: plain
  asio::steady_timer idle_;
  wire::FrameDecoder decoder_;
  Impl& impl_;
  std::uint64_t id_;
  std::array<std::byte, 64 * 1024> buffer_{};
  std::deque<std::vector<std::byte>> out_;
  wire::Challenge challenge_;
  std::string cluster_;  // empty until the hello is accepted
  bool counted_ = false, reading_ = false, readPaused_ = false, writing_ = false;
  bool closing_ = false, closed_ = false;
  bool fetching_ = false, waitingFetch_ = false;
  std::uint64_t fetchAt_ = 0, fetchFrom_ = 0, waitRound_ = 0;
};

}  // namespace service_detail
}  // namespace skyring::coordinator
