// In-process transport: one mailbox per rank, guarded by one world mutex.
//
// A single mutex keeps the matching logic obviously correct (this transport exists for
// tests and examples); each rank sleeps on its own condition variable so idle ranks
// burn no CPU.
#include "skyring/inprocess_transport.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

namespace skyring::transport {
namespace {

struct Failure {
  ErrorKind kind;
  std::string detail;
  bool remote = false;  // raised by another rank's abort(): carries no peer of ours
};

struct RecvOp {
  int src = 0;
  Tag tag = 0;
  std::span<std::byte> buffer;
  bool done = false;
  std::optional<Failure> failure;
};

using Key = std::pair<int, Tag>;

struct Mailbox {
  std::map<Key, std::deque<std::shared_ptr<RecvOp>>> posted;
  std::map<Key, std::deque<std::vector<std::byte>>> unexpected;
  std::condition_variable cv;
  bool dead = false;  // killed: peers see a broken connection
  bool left = false;  // shut down cleanly
};

}  // namespace

struct InProcessWorld::State {
  explicit State(int n) : boxes(static_cast<std::size_t>(n)) {}
  std::mutex mu;
  std::vector<Mailbox> boxes;
  std::optional<Failure> abort;

  int size() const { return static_cast<int>(boxes.size()); }
  void notifyAll() {
    for (auto& b : boxes)
      b.cv.notify_all();
  }
  // Why a request of `self` involving `peer` can no longer complete, if it cannot.
  std::optional<Failure> blocker(int self, int peer) const {
    if (abort) return abort;
    if (boxes[self].left) return Failure{ErrorKind::aborted, "this rank has shut down"};
    if (boxes[self].dead) return Failure{ErrorKind::aborted, "this rank was killed"};
    if (boxes[peer].dead) {
      return Failure{ErrorKind::transport, "connection to rank " + std::to_string(peer) +
                                               " lost: rank " + std::to_string(peer) + " died"};
    }
    if (boxes[peer].left) {
      return Failure{ErrorKind::transport,
                     "rank " + std::to_string(peer) + " has left the group (shut down)"};
    }
    return std::nullopt;
  }
};

namespace {

[[noreturn]] void raise(const Failure& f, int rank, int peer) {
  throwError(f.kind, f.detail, ErrorContext{rank, f.remote ? -1 : peer, {}});
}

Failure sizeMismatch(int self, int peer, std::size_t got, std::size_t expected) {
  return Failure{ErrorKind::transport,
                 "message from rank " + std::to_string(peer) + " to rank " + std::to_string(self) +
                     " has " + std::to_string(got) + " bytes but the receive expects " +
                     std::to_string(expected) +
                     ": the ranks disagree about the call (count or dtype mismatch)"};
}

class CompletedSend final : public Request {
 public:
  explicit CompletedSend(int peer) : peer_(peer) {}
  bool test() override { return true; }
  bool waitUntil(Clock::time_point) override { return true; }
  int peer() const noexcept override { return peer_; }

 private:
  int peer_;
};

class InProcessRecv final : public Request {
 public:
  InProcessRecv(std::shared_ptr<InProcessWorld::State> state, int self, std::shared_ptr<RecvOp> op)
      : state_(std::move(state)), self_(self), op_(std::move(op)) {}

  ~InProcessRecv() override {
    std::lock_guard lock(state_->mu);
    if (op_->done || op_->failure) return;
    auto& queue = state_->boxes[self_].posted[{op_->src, op_->tag}];
    std::erase(queue, op_);
  }

  bool test() override {
    std::lock_guard lock(state_->mu);
    return checkLocked();
  }

  bool waitUntil(Clock::time_point deadline) override {
    std::unique_lock lock(state_->mu);
    auto& cv = state_->boxes[self_].cv;
    while (!checkLocked()) {
      if (cv.wait_until(lock, deadline) == std::cv_status::timeout) return checkLocked();
    }
    return true;
  }

  int peer() const noexcept override { return op_->src; }

 private:
  bool checkLocked() {
    if (op_->failure) raise(*op_->failure, self_, op_->src);
    if (op_->done) return true;
    if (auto why = state_->blocker(self_, op_->src)) raise(*why, self_, op_->src);
    return false;
  }

  std::shared_ptr<InProcessWorld::State> state_;
  int self_;
  std::shared_ptr<RecvOp> op_;
};

class InProcessTransport final : public Transport {
 public:
  InProcessTransport(std::shared_ptr<InProcessWorld::State> state, int rank)
      : state_(std::move(state)), rank_(rank) {}
  ~InProcessTransport() override { shutdown(); }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return state_->size(); }

  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override {
    checkPeer(peer);
    std::lock_guard lock(state_->mu);
    if (auto why = state_->blocker(rank_, peer)) raise(*why, rank_, peer);
    Mailbox& box = state_->boxes[peer];
    auto it = box.posted.find({rank_, tag});
    if (it != box.posted.end() && !it->second.empty()) {
      std::shared_ptr<RecvOp> op = std::move(it->second.front());
      it->second.pop_front();
      if (op->buffer.size() != data.size()) {
        op->failure = sizeMismatch(peer, rank_, data.size(), op->buffer.size());
      } else {
        if (!data.empty()) std::memcpy(op->buffer.data(), data.data(), data.size());
        op->done = true;
      }
    } else {
      box.unexpected[{rank_, tag}].emplace_back(data.begin(), data.end());
    }
    box.cv.notify_all();
    return std::make_unique<CompletedSend>(peer);
  }

  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override {
    checkPeer(peer);
    auto op = std::make_shared<RecvOp>();
    op->src = peer;
    op->tag = tag;
    op->buffer = data;
    std::lock_guard lock(state_->mu);
    Mailbox& box = state_->boxes[rank_];
    auto it = box.unexpected.find({peer, tag});
    if (it != box.unexpected.end() && !it->second.empty()) {
      std::vector<std::byte> msg = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) box.unexpected.erase(it);
      if (msg.size() != data.size()) {
        op->failure = sizeMismatch(rank_, peer, msg.size(), data.size());
      } else {
        if (!msg.empty()) std::memcpy(data.data(), msg.data(), msg.size());
        op->done = true;
      }
    } else {
      box.posted[{peer, tag}].push_back(op);
    }
    return std::make_unique<InProcessRecv>(state_, rank_, std::move(op));
  }

  void abort(ErrorKind kind, const std::string& reason) noexcept override {
    std::lock_guard lock(state_->mu);
    if (!state_->abort) state_->abort = Failure{kind, reason, true};
    state_->notifyAll();
  }

  void shutdown() noexcept override {
    std::lock_guard lock(state_->mu);
    Mailbox& box = state_->boxes[rank_];
    if (box.left) return;
    box.left = true;
    state_->notifyAll();
  }

 private:
  void checkPeer(int peer) const {
    SKYRING_CHECK_ARG(peer >= 0 && peer < size(), (ErrorContext{rank_, peer, {}}),
                      "peer out of range for a group of ", size());
  }

  std::shared_ptr<InProcessWorld::State> state_;
  int rank_;
};

}  // namespace

InProcessWorld::InProcessWorld(int size) {
  SKYRING_CHECK_ARG(size >= 1, {}, "world size must be at least 1, got ", size);
  state_ = std::make_shared<State>(size);
}

InProcessWorld::~InProcessWorld() = default;

int InProcessWorld::size() const noexcept {
  return state_->size();
}

std::shared_ptr<Transport> InProcessWorld::transport(int rank) {
  SKYRING_CHECK_ARG(rank >= 0 && rank < size(), {}, "rank ", rank, " out of range for a world of ",
                    size());
  return std::make_shared<InProcessTransport>(state_, rank);
}

void InProcessWorld::kill(int rank) noexcept {
  if (rank < 0 || rank >= size()) return;
  std::lock_guard lock(state_->mu);
  state_->boxes[rank].dead = true;
  state_->notifyAll();
}

}  // namespace skyring::transport
