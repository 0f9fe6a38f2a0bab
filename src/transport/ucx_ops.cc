// Sends, receives and progress of the UCX transport (see ucx_core.h for the locking).
#include <poll.h>

#include <algorithm>
#include <thread>

#include "transport/ucx_core.h"

namespace skyring::transport::ucx {
namespace {

// Spinning this long before sleeping keeps latency low when the answer is already on its
// way; sleeping in slices bounds how long a missed wake-up can cost. The event fd does miss
// some (UCX 1.13, over its shared-memory and TCP transports alike): with a fixed 100 ms
// slice, steps of the Python digits example in two emulated clouds took 2 to 5 times as long
// with int8 as without (examples/python, 3 epochs: 0.20-0.52 s against 0.07-0.16 s an
// epoch), every few steps waiting out a slice. So a slice is a quarter of the time this wait
// has lasted, between kMinSlice and kSleepSlice: a missed wake-up costs at most a quarter
// more than the wait it delays (plus 1 ms), and a long wait still sleeps 100 ms at a time.
constexpr auto kSpin = std::chrono::microseconds(30);
constexpr auto kMinSlice = std::chrono::milliseconds(1);
constexpr auto kSleepSlice = std::chrono::milliseconds(100);
// How long a lost connection waits for an abort that explains it (checkLocked).
constexpr auto kLossGrace = std::chrono::milliseconds(300);
// How long a destroyed send may take to complete on its own in a healthy group.
constexpr auto kAbandonGrace = std::chrono::seconds(1);

ucp_request_param_t baseParams(Op& op) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.user_data = &op;
  param.datatype = ucp_dt_make_contig(1);
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  return param;
}

}  // namespace

void Core::onSend(void*, ucs_status_t status, void* user) noexcept {
  auto* op = static_cast<Op*>(user);
  op->core->completeLocked(*op, status, 0);
}

void Core::onRecv(void*, ucs_status_t status, const ucp_tag_recv_info_t* info,
                  void* user) noexcept {
  auto* op = static_cast<Op*>(user);
  op->core->completeLocked(*op, status, info != nullptr ? info->length : 0);
}

void Core::raise(const Failure& failure, int peer) const {
  throwError(failure.kind, failure.detail, ErrorContext{rank_, failure.remote ? -1 : peer, {}});
}

std::unique_ptr<Op> Core::postSendLocked(int peer, Tag tag, std::span<const std::byte> data) {
  if (auto why = blockerLocked(peer)) raise(*why, peer);
  auto op = std::make_unique<Op>();
  op->core = this;
  op->peer = peer;
  ucp_request_param_t param = baseParams(*op);
  param.cb.send = &Core::onSend;
  ucs_status_ptr_t request =
      ucp_tag_send_nbx(peers_[static_cast<std::size_t>(peer)].ep, data.data(), data.size(),
                       layout_.data(rank_, tag), &param);
  if (UCS_PTR_IS_ERR(request)) raise(failureLocked(*op, UCS_PTR_STATUS(request)), peer);
  trackLocked(*op, request);
  return op;
}

std::unique_ptr<Op> Core::postRecvLocked(int peer, Tag tag, std::span<std::byte> data) {
  auto op = std::make_unique<Op>();
  op->core = this;
  op->peer = peer;
  op->isRecv = true;
  op->expected = data.size();
  if (closing_) return op;  // the worker is gone; checkLocked reports why
  ucp_request_param_t param = recvParams(*op);
  trackLocked(*op, ucp_tag_recv_nbx(worker_, data.data(), data.size(), layout_.data(peer, tag),
                                    TagLayout::kExact, &param));
  return op;
}

ucp_request_param_t Core::recvParams(Op& op) {
  ucp_request_param_t param = baseParams(op);
  // UCX 1.13 leaves recv_info unset when a receive completes in place, so completion always
  // goes through the callback, which reports the received length.
  param.op_attr_mask |= UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  param.cb.recv = &Core::onRecv;
  return param;
}

void Core::trackLocked(Op& op, ucs_status_ptr_t request) {
  if (UCS_PTR_IS_PTR(request)) {
    if (op.finished) {
      ucp_request_free(request);  // its callback already ran, inside the posting call
    } else {
      op.request = request;
      outstanding_.insert(&op);
    }
  } else {
    completeLocked(op, UCS_PTR_STATUS(request), 0);  // sends completed in place, or errors
  }
}

void Core::completeLocked(Op& op, ucs_status_t status, std::size_t length) noexcept {
  if (op.request != nullptr) {
    ucp_request_free(op.request);
    op.request = nullptr;
  }
  outstanding_.erase(&op);
  op.finished = true;
  events_ = true;
  // Cancelled by release() (nobody looks at it again) or by close() (checkLocked then
  // reports the shutdown, or the abort that came first).
  if (status == UCS_ERR_CANCELED) return;
  op.length = length;
  const bool sizeOk = !op.isRecv || !op.exactSize || length == op.expected;
  if (status == UCS_OK && sizeOk) {
    op.done = true;
    return;
  }
  try {
    if (status == UCS_OK || status == UCS_ERR_MESSAGE_TRUNCATED) {
      // UCX reports the sent length on truncation in some protocols only.
      const bool known = status == UCS_OK || length > op.expected;
      op.failure =
          Failure{ErrorKind::transport,
                  detail::concat("message from rank ", op.peer, " to rank ", rank_, " has ",
                                 known ? "" : "more than ", known ? length : op.expected,
                                 " bytes but the receive expects ", op.expected,
                                 ": the ranks disagree about the call (count or "
                                 "dtype mismatch)")};
    } else {
      op.failure = failureLocked(op, status);
    }
  } catch (...) {
    op.failure = Failure{ErrorKind::transport, {}};  // out of memory for the message
  }
}

Failure Core::failureLocked(const Op& op, ucs_status_t status) const {
  if (op.peer >= 0) {
    const Peer& peer = peers_[static_cast<std::size_t>(op.peer)];
    if (peer.failure) return *peer.failure;
    if (peer.lost != UCS_OK) {
      return Failure{ErrorKind::transport, deathOf(op.peer, peer.lost), false, true};
    }
  }
  return Failure{ErrorKind::transport,
                 detail::concat(op.isRecv ? "receive from" : "send to", " rank ", op.peer,
                                " failed: ", ucs_status_string(status))};
}

std::optional<Failure> Core::blockerLocked(int peer) const {
  if (abort_) return abort_;
  if (closing_) return Failure{ErrorKind::aborted, "this rank has shut down"};
  if (peer >= 0 && peers_[peer].failure) return peers_[peer].failure;
  return std::nullopt;
}

bool Core::checkLocked(const Op& op) {
  std::optional<Failure> why = op.failure;
  if (!why && op.done) return true;
  if (!why) why = blockerLocked(op.peer);
  if (!why) return false;
  if (why->lost) {
    // A peer that exits right after an abort (its own, or one it heard of) can reset the
    // connection before its abort, or the originator's, is read here: the loss would then
    // hide the cause. Wait up to kLossGrace from the first loss for an abort to explain it.
    if (abort_) raise(*abort_, op.peer);
    const auto now = Clock::now();
    if (!lossSeen_) lossSeen_ = now;
    if (now < *lossSeen_ + kLossGrace) return false;
  }
  raise(*why, op.peer);
}

unsigned Core::progressLocked() {
  if (closed_) return 0;
  const unsigned n = ucp_worker_progress(worker_);
  handleControlLocked();
  // Another thread may be asleep on the event fd waiting for what this progress did.
  if ((n > 0 || events_) && sleepers_ > 0) ucp_worker_signal(worker_);
  events_ = false;
  return n;
}

void Core::idleLocked(std::unique_lock<std::mutex>& lock, Clock::time_point deadline,
                      Clock::time_point since) {
  if (closed_) {
    lock.unlock();
    std::this_thread::sleep_until(std::min(deadline, Clock::now() + kSleepSlice));
    lock.lock();
    return;
  }
  if (options_.busyPoll) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
    return;
  }
  const auto spinEnd = std::min(deadline, Clock::now() + kSpin);
  do {
    if (progressLocked() > 0) return;
  } while (Clock::now() < spinEnd);
  const auto now = Clock::now();
  if (now >= deadline) return;
  const ucs_status_t armed = ucp_worker_arm(worker_);
  if (armed == UCS_ERR_BUSY) return;  // events arrived meanwhile: progress them first
  const auto grown = std::clamp<Clock::duration>((now - since) / 4, kMinSlice, kSleepSlice);
  const auto slice = std::min<Clock::duration>(deadline - now, grown);
  const int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(slice).count());
  ++sleepers_;
  lock.unlock();
  if (armed == UCS_OK) {
    pollfd fd{efd_, POLLIN, 0};
    ::poll(&fd, 1, ms);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // cannot arm: poll slowly
  }
  lock.lock();
  if (--sleepers_ == 0) sleepersGone_.notify_all();
}

void Core::forceCloseLocked(int peer, const std::string& why) {
  Peer& p = peers_[static_cast<std::size_t>(peer)];
  if (!p.failure) {
    p.failure = Failure{ErrorKind::transport,
                        detail::concat("connection to rank ", peer, " was closed: ", why)};
  }
  if (p.ep == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  void* request = ucp_ep_close_nbx(p.ep, &param);
  p.ep = nullptr;
  events_ = true;
  if (UCS_PTR_IS_PTR(request)) {
    // Forced closes finish within a progress call or two; no need to sleep for them.
    for (int i = 0; i < 1000 && ucp_request_check_status(request) == UCS_INPROGRESS; ++i)
      ucp_worker_progress(worker_);
    ucp_request_free(request);
  }
}

void Core::release(std::unique_ptr<Op> op) noexcept {
  std::unique_lock lock(mu_);
  if (op->request == nullptr) return;
  if (op->isRecv) ucp_request_cancel(worker_, op->request);  // completes it unless matched
  if (op->request == nullptr) return;
  // A matched receive or a send: UCX still uses the buffer. Let it finish while the group
  // is healthy; otherwise (or if it does not) cut the connection, which completes it.
  const auto unhealthy = [&] {
    return abort_.has_value() || closing_ || peers_[op->peer].failure.has_value();
  };
  try {
    const auto grace = unhealthy() ? Clock::duration::zero() : kAbandonGrace;
    waitLocked(lock, Clock::now() + grace, [&] { return op->request == nullptr || unhealthy(); });
    if (op->request != nullptr && !closed_) {
      forceCloseLocked(op->peer, "a pending request to it was abandoned");
      waitLocked(lock, Clock::now() + kAbandonGrace, [&] { return op->request == nullptr; });
    }
    if (op->request != nullptr) orphans_.push_back(std::move(op));
  } catch (...) {
    if (op && op->request != nullptr) orphans_.push_back(std::move(op));
  }
}

}  // namespace skyring::transport::ucx
