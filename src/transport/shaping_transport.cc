// ShapingTransport: per-class departure queues and a timer thread that posts each message
// to the inner transport at its delivery time (see the header for the model).
#include "skyring/shaping_transport.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace skyring::transport {
namespace {

using topology::LinkClass;

struct Failure {
  ErrorKind kind;
  std::string detail;
  Clock::time_point at;  // sends that departed before this completed before the failure
};

struct Message {
  int peer = 0;
  Tag tag = 0;
  std::vector<std::byte> payload;
};

// While posted inner sends are outstanding the timer thread polls them this often (the
// in-process transport completes them at once; others may need a few polls).
constexpr auto kReapInterval = std::chrono::milliseconds(1);

}  // namespace

struct ShapingTransport::State {
  std::shared_ptr<Transport> inner;
  std::shared_ptr<const topology::Topology> topology;
  LinkShapes shapes;

  std::mutex mu;
  std::condition_variable cv;  // the timer thread and waiting senders
  std::array<Clock::time_point, topology::kLinkClassCount> linkFreeAt{};
  // Keyed by (delivery time, posting order): begin() is the next message to deliver.
  std::map<std::pair<Clock::time_point, std::uint64_t>, Message> queue;
  std::uint64_t nextSeq = 0;
  std::optional<Failure> failure;  // this rank aborted or shut down
  bool stopping = false;           // destructor: deliver what is queued, then exit

  void fail(ErrorKind kind, const std::string& detail) {
    std::lock_guard lock(mu);
    if (!failure) failure = Failure{kind, detail, Clock::now()};
    queue.clear();
    cv.notify_all();
  }

  void run() noexcept;
};

namespace {

class ShapedSend final : public Request {
 public:
  ShapedSend(std::shared_ptr<ShapingTransport::State> state, int peer, Clock::time_point departs)
      : state_(std::move(state)), peer_(peer), departs_(departs) {}

  bool test() override {
    std::lock_guard lock(state_->mu);
    return checkLocked(Clock::now());
  }

  bool waitUntil(Clock::time_point deadline) override {
    std::unique_lock lock(state_->mu);
    for (;;) {
      const auto now = Clock::now();
      if (checkLocked(now)) return true;
      if (now >= deadline) return false;
      // Woken early by abort() or shutdown(); otherwise sleeps to the departure.
      state_->cv.wait_until(lock, std::min(departs_, deadline));
    }
  }

  int peer() const noexcept override { return peer_; }

 private:
  bool checkLocked(Clock::time_point now) const {
    const auto& f = state_->failure;
    if (f && departs_ > f->at) {
      throwError(f->kind, f->detail, ErrorContext{state_->inner->rank(), peer_, "shaped send"});
    }
    return now >= departs_;
  }

  std::shared_ptr<ShapingTransport::State> state_;
  int peer_;
  Clock::time_point departs_;
};

}  // namespace

void ShapingTransport::State::run() noexcept {
  struct Posted {
    Message message;  // keeps the payload alive until the inner send completes
    std::unique_ptr<Request> request;
  };
  std::vector<Posted> posted;
  auto reap = [&posted] {
    std::erase_if(posted, [](Posted& p) {
      try {
        return p.request->test();
      } catch (const std::exception&) {
        return true;  // dropped: see "Failure" in the header
      }
    });
  };

  std::unique_lock lock(mu);
  for (;;) {
    const auto now = Clock::now();
    if (queue.empty() || queue.begin()->first.first > now) {
      if (queue.empty() && (stopping || failure)) break;
      auto wake = queue.empty() ? Clock::time_point::max() : queue.begin()->first.first;
      if (!posted.empty()) wake = std::min(wake, now + kReapInterval);
      if (wake == Clock::time_point::max()) {
        cv.wait(lock);
      } else {
        cv.wait_until(lock, wake);
      }
      lock.unlock();
      reap();
      lock.lock();
      continue;
    }
    // Only this thread posts shaped messages, so posting outside the lock keeps order.
    Message m = std::move(queue.begin()->second);
    queue.erase(queue.begin());
    lock.unlock();
    try {
      auto request = inner->isend(m.peer, m.tag, m.payload);
      posted.push_back(Posted{std::move(m), std::move(request)});
    } catch (const std::exception&) {
      // The group failed or the peer is gone: the receiver learns it from its requests.
    }
    reap();
    lock.lock();
  }
  lock.unlock();
  // Inner sends still pending now are cancelled by destroying them (the header says so).
  reap();
}

ShapingTransport::ShapingTransport(std::shared_ptr<Transport> inner,
                                   std::shared_ptr<const topology::Topology> topology,
                                   const LinkShapes& shapes)
    : state_(std::make_shared<State>()) {
  SKYRING_CHECK_ARG(inner != nullptr && topology != nullptr, {},
                    "ShapingTransport needs a transport and a topology");
  SKYRING_CHECK_ARG(topology->size() == inner->size(), (ErrorContext{inner->rank(), -1, {}}),
                    "the topology describes ", topology->size(), " ranks but the transport has ",
                    inner->size());
  for (std::size_t c = 0; c < shapes.size(); ++c) {
    const auto name = topology::linkClassName(static_cast<LinkClass>(c));
    SKYRING_CHECK_ARG(
        std::isfinite(shapes[c].bandwidthBytesPerSec) && shapes[c].bandwidthBytesPerSec >= 0, {},
        "bandwidth of the ", name, " shape must be finite and >= 0 (0: unlimited)");
    SKYRING_CHECK_ARG(shapes[c].latency.count() >= 0, {}, "latency of the ", name,
                      " shape must be >= 0");
  }
  state_->inner = std::move(inner);
  state_->topology = std::move(topology);
  state_->shapes = shapes;
  timer_ = std::thread([state = state_] { state->run(); });
}

ShapingTransport::~ShapingTransport() {
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = true;
    state_->cv.notify_all();
  }
  timer_.join();
}

LinkShapes ShapingTransport::shapesFrom(const topology::CostModel& costs,
                                        std::initializer_list<LinkClass> classes) {
  LinkShapes shapes{};
  for (LinkClass c : classes) {
    shapes[topology::index(c)] = LinkShape{costs[c].bandwidthBytesPerSec,
                                           std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(costs[c].latencySec))};
  }
  return shapes;
}

int ShapingTransport::rank() const noexcept {
  return state_->inner->rank();
}

int ShapingTransport::size() const noexcept {
  return state_->inner->size();
}

std::unique_ptr<Request> ShapingTransport::isend(int peer, Tag tag,
                                                 std::span<const std::byte> data) {
  SKYRING_CHECK_ARG(peer >= 0 && peer < size(), (ErrorContext{rank(), peer, {}}),
                    "peer out of range for a group of ", size());
  const LinkClass cls = state_->topology->linkClass(rank(), peer);
  const LinkShape& shape = state_->shapes[topology::index(cls)];
  if (shape.bandwidthBytesPerSec == 0 && shape.latency.count() == 0) {
    return state_->inner->isend(peer, tag, data);
  }
  Message m{peer, tag, std::vector<std::byte>(data.begin(), data.end())};
  const auto wire = shape.bandwidthBytesPerSec == 0
                        ? Clock::duration::zero()
                        : std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                              static_cast<double>(data.size()) / shape.bandwidthBytesPerSec));
  Clock::time_point departs;
  {
    std::lock_guard lock(state_->mu);
    if (const auto& f = state_->failure) {
      throwError(f->kind, f->detail, ErrorContext{rank(), peer, "shaped send"});
    }
    // `now` is read under the lock so that delivery times on a class follow posting order.
    auto& freeAt = state_->linkFreeAt[topology::index(cls)];
    departs = std::max(Clock::now(), freeAt) + wire;
    freeAt = departs;
    state_->queue.emplace(std::make_pair(departs + shape.latency, state_->nextSeq++), std::move(m));
    state_->cv.notify_all();
  }
  return std::make_unique<ShapedSend>(state_, peer, departs);
}

std::unique_ptr<Request> ShapingTransport::irecv(int peer, Tag tag, std::span<std::byte> data) {
  return state_->inner->irecv(peer, tag, data);
}

void ShapingTransport::abort(ErrorKind kind, const std::string& reason) noexcept {
  state_->inner->abort(kind, reason);
  state_->fail(kind, reason);
}

void ShapingTransport::shutdown() noexcept {
  state_->inner->shutdown();
  state_->fail(ErrorKind::aborted, "this rank has shut down");
}

}  // namespace skyring::transport
