// The state of one rank of the UCX transport: UCP context, worker, endpoints, the state of
// each peer and of the group, and the control channel (hello, abort, goodbye).
//
// Locking: one mutex guards everything here, and every UCX call is made with it held
// (the worker runs in UCS_THREAD_MODE_SERIALIZED). UCX invokes completion and error
// callbacks only from inside those calls (progress, cancel, close, and a receive's own
// posting, which completes through its callback), i.e. with the mutex held, so callbacks
// update state directly. Functions named *Locked require the mutex; waitLocked releases
// it while sleeping.
//
// Ownership: an Op (one send or receive) is owned by its Request. While UCX holds the
// request, the Op is listed in outstanding_; a Request destroyed before completion hands
// its Op to release(), which cancels or drains it, or keeps it in orphans_ when UCX does
// not let go.
#pragma once

#include <ucp/api/ucp.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "skyring/ucx_transport.h"
#include "transport/ucx_tags.h"

namespace skyring::transport::ucx {

struct Failure {
  ErrorKind kind;
  std::string detail;
  bool remote = false;  // from another rank's abort(): raised with peer -1
  bool lost = false;    // a peer's connection lost or closed: maybe the echo of an abort
};

class Core;

struct Op {
  Core* core = nullptr;
  int peer = -1;
  bool isRecv = false;
  bool control = false;   // the transport's own message, not a user's
  bool exactSize = true;  // receives: the message must have exactly `expected` bytes
  std::size_t expected = 0;
  std::size_t length = 0;   // bytes received
  void* request = nullptr;  // the UCX request while outstanding
  bool finished = false;    // UCX has reported its completion (of any status)
  bool done = false;        // finished successfully
  std::optional<Failure> failure;
};

class Core {
 public:
  Core(int rank, int size, const AllgatherFn& oob, const UcxOptions& options);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  std::mutex& mutex() noexcept { return mu_; }

  // Post operations; throw if UCX refuses them. A send to a peer that cannot be reached
  // throws the reason (as test() would).
  std::unique_ptr<Op> postSendLocked(int peer, Tag tag, std::span<const std::byte> data);
  std::unique_ptr<Op> postRecvLocked(int peer, Tag tag, std::span<std::byte> data);

  // Why a request involving peer can no longer complete, if it cannot.
  std::optional<Failure> blockerLocked(int peer) const;
  // True once op completed; throws its failure, or the blocker of its peer.
  bool checkLocked(const Op& op);

  unsigned progressLocked();
  // Progresses until done() or the deadline; returns done(). done() may throw.
  template <typename Done>
  bool waitLocked(std::unique_lock<std::mutex>& lock, Clock::time_point deadline, Done done) {
    const auto since = Clock::now();
    for (;;) {
      progressLocked();
      if (done()) return true;
      if (Clock::now() >= deadline) return false;
      idleLocked(lock, deadline, since);
    }
  }

  // Takes back a pending op whose Request is destroyed (see ucx_transport.h).
  void release(std::unique_ptr<Op> op) noexcept;
  void abort(ErrorKind kind, const std::string& reason) noexcept;
  void close() noexcept;

  // Callbacks from UCX (mutex held).
  static void onSend(void* request, ucs_status_t status, void* user) noexcept;
  static void onRecv(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                     void* user) noexcept;
  static void onEndpointError(void* peer, ucp_ep_h ep, ucs_status_t status) noexcept;

 private:
  struct Peer {
    Core* core = nullptr;
    int rank = -1;
    ucp_ep_h ep = nullptr;
    std::optional<Failure> failure;
    // Endpoint error seen but not yet turned into failure: a goodbye that arrived before
    // it must win (a peer that shut down is not a peer that died).
    ucs_status_t lost = UCS_OK;
  };
  struct ControlRecv {
    std::unique_ptr<Op> op;
    std::vector<std::byte> buffer;
  };

  void completeLocked(Op& op, ucs_status_t status, std::size_t length) noexcept;
  // Records what UCX did with a just-posted op: completed it, failed it, or holds it.
  void trackLocked(Op& op, ucs_status_ptr_t request);
  static ucp_request_param_t recvParams(Op& op);
  Failure failureLocked(const Op& op, ucs_status_t status) const;
  [[noreturn]] void raise(const Failure& failure, int peer) const;
  void initUcx(const AllgatherFn& oob);
  void handshake();
  // Spins briefly, then sleeps on the worker's event fd for a slice that grows with the
  // time waited since `since` (ucx_ops.cc: kSleepSlice).
  void idleLocked(std::unique_lock<std::mutex>& lock, Clock::time_point deadline,
                  Clock::time_point since);
  std::unique_ptr<Op> postControlSendLocked(int peer, ControlKind kind,
                                            std::span<const std::byte> payload);
  void postControlRecvLocked(ControlRecv& recv, ControlKind kind);
  void handleControlLocked();
  // With a control seal: the bytes to send peer for payload (kept until the Core goes),
  // and a received control message's payload, or nullopt when it does not open. Without
  // one: the payload itself.
  std::span<const std::byte> controlPayloadLocked(int peer, ControlKind kind,
                                                  std::span<const std::byte> payload);
  std::optional<std::vector<std::byte>> openControlLocked(ControlKind kind,
                                                          std::span<const std::byte> frame) const;
  void cancelReceivesLocked(bool control);
  std::string deathOf(int peer, ucs_status_t status) const;
  void forceCloseLocked(int peer, const std::string& why);
  void closeEndpointsLocked(std::unique_lock<std::mutex>& lock);
  void destroyUcx() noexcept;

  const int rank_;
  const int size_;
  const UcxOptions options_;
  const TagLayout layout_;

  mutable std::mutex mu_;
  std::condition_variable sleepersGone_;
  int sleepers_ = 0;
  bool events_ = false;  // a callback ran since the last wake-up of the sleepers
  bool lost_ = false;    // some Peer::lost is set

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int efd_ = -1;
  std::vector<Peer> peers_;

  std::optional<Failure> abort_;
  // When this rank first saw a lost connection that no abort explained (checkLocked).
  std::optional<Clock::time_point> lossSeen_;
  bool abortedHere_ = false;  // this rank's abort() sent the news: linger at close
  bool closing_ = false;
  bool controlClosed_ = false;  // control receives cancelled: not reposted any more
  bool closed_ = false;

  std::set<Op*> outstanding_;
  std::vector<std::unique_ptr<Op>> orphans_;
  std::vector<std::unique_ptr<Op>> controlSends_;
  std::vector<std::byte> abortPayload_;
  std::vector<std::byte> rankPayload_;                  // this rank's number: hello and goodbye
  std::vector<std::vector<std::byte>> sealedPayloads_;  // what controlPayloadLocked made
  ControlRecv abortRecv_;
  ControlRecv goodbyeRecv_;
};

}  // namespace skyring::transport::ucx
