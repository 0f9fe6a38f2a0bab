// Set-up, control channel and teardown of the UCX transport (see ucx_core.h).
#include "transport/ucx_core.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "transport/ucx_check.h"

namespace skyring::transport::ucx {
namespace {

// Bounds on waiting for peers that may be gone or not progressing.
constexpr auto kAbortDelivery = std::chrono::seconds(2);
constexpr auto kCloseTimeout = std::chrono::seconds(1);
// Flushing and saying goodbye after the group failed: the data no longer matters and a
// stopped peer would never acknowledge it, so these waits are short; only the linger that
// lets peers read this rank's abort keeps kCloseTimeout. (A process then exits about a
// second after its error instead of two.)
constexpr auto kFailedCloseTimeout = std::chrono::milliseconds(200);
// Largest control message: an abort's kind, sender and (truncated) reason.
constexpr std::size_t kControlBytes = 4096;

struct AbortHeader {
  std::uint8_t kind;
  std::uint8_t pad[3];
  std::int32_t sender;
};
static_assert(sizeof(AbortHeader) == 8);

// A sealed control message: the sender's rank (u32, big-endian), then what the control
// seal made of the payload.
constexpr std::size_t kSenderBytes = 4;

// At most room bytes in all (room: kControlBytes, less what sealing adds).
std::vector<std::byte> encodeAbort(ErrorKind kind, int sender, const std::string& reason,
                                   std::size_t room) {
  const AbortHeader header{static_cast<std::uint8_t>(kind), {}, sender};
  const std::size_t n = std::min(reason.size(), room - sizeof header);
  std::vector<std::byte> out(sizeof header + n);
  std::memcpy(out.data(), &header, sizeof header);
  if (n > 0) std::memcpy(out.data() + sizeof header, reason.data(), n);
  return out;
}

// Worker addresses travel framed: magic | u32 rank | u32 length | address. UCX's packed
// address carries no length of its own and ucp_ep_create trusts it: bytes that are not
// a worker address (a stranger's, a truncated record, another rank's) are read past
// their end or end in an assertion (ucp_address_unpack_header aborts on an unknown
// address version), killing the process with SIGABRT. The frame lets a malformed record
// fail as a TransportError naming its rank before UCX sees it. (A record crafted to pass
// these checks is kept out by the out-of-band channel itself: MPI, or the bootstrap
// store, which admits only the job's ranks and takes rank r's record only from rank r.)
constexpr std::array<char, 4> kAddressMagic = {'S', 'K', 'U', 'A'};
constexpr std::size_t kAddressHeaderBytes = kAddressMagic.size() + 4 + 4;
// UCX worker addresses are a few hundred bytes to a few KiB.
constexpr std::size_t kMaxWorkerAddressBytes = 64 * 1024;

void putU32(std::byte* p, std::uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8)
    p[i] = static_cast<std::byte>(v & 0xffU);
}

std::uint32_t getU32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}

std::vector<std::byte> frameAddress(int rank, std::span<const std::byte> address) {
  std::vector<std::byte> out(kAddressHeaderBytes + address.size());
  std::memcpy(out.data(), kAddressMagic.data(), kAddressMagic.size());
  putU32(out.data() + 4, static_cast<std::uint32_t>(rank));
  putU32(out.data() + 8, static_cast<std::uint32_t>(address.size()));
  std::memcpy(out.data() + kAddressHeaderBytes, address.data(), address.size());
  return out;
}

// The low 4 bits of a packed address's first byte are its format version (UCX 1.13: 0 or
// 1); a peer's may not be newer than this process's UCX can read.
unsigned addressVersion(std::span<const std::byte> address) {
  return std::to_integer<unsigned>(address[0]) & 0xfU;
}

// Rank p's worker address out of its record, or a TransportError naming rank p.
std::span<const std::byte> unframeAddress(std::span<const std::byte> record, int p,
                                          unsigned maxVersion, const ErrorContext& ctx) {
  const char* problem = nullptr;
  if (record.size() < kAddressHeaderBytes + 1 ||
      std::memcmp(record.data(), kAddressMagic.data(), kAddressMagic.size()) != 0) {
    problem = "is not a framed worker address";
  } else if (getU32(record.data() + 4) != static_cast<std::uint32_t>(p)) {
    problem = "carries another rank's worker address";
  } else if (getU32(record.data() + 8) != record.size() - kAddressHeaderBytes ||
             record.size() - kAddressHeaderBytes > kMaxWorkerAddressBytes) {
    problem = "has a worker address of the wrong length (truncated or oversized)";
  } else if (addressVersion(record.subspan(kAddressHeaderBytes)) > maxVersion) {
    problem = "has a worker address of a format this UCX cannot read (another UCX version?)";
  }
  if (problem != nullptr) {
    SKYRING_THROW(TransportError, ctx, "the ", record.size(), "-byte record of rank ", p,
                  " from the out-of-band exchange ", problem, ": refused before UCX sees it");
  }
  return record.subspan(kAddressHeaderBytes);
}

std::int32_t decodeRank(std::span<const std::byte> bytes) {
  std::int32_t r = -1;
  if (bytes.size() >= sizeof r) std::memcpy(&r, bytes.data(), sizeof r);
  return r;
}

}  // namespace

Core::Core(int rank, int size, const AllgatherFn& oob, const UcxOptions& options)
    : rank_(rank), size_(size), options_(options), layout_(size) {
  try {
    initUcx(oob);
    handshake();
  } catch (...) {
    close();
    throw;
  }
}

Core::~Core() {
  close();
}

void Core::initUcx(const AllgatherFn& oob) {
  const ErrorContext ctx{rank_, -1, "ucx setup"};
  ucp_config_t* config = nullptr;
  SKYRING_UCX_CHECK(ucp_config_read(nullptr, nullptr, &config), ctx, "reading UCX configuration");
  if (options_.eagerOnly) {
    const ucs_status_t modified = ucp_config_modify(config, "RNDV_THRESH", "inf");
    if (modified != UCS_OK) ucp_config_release(config);
    SKYRING_UCX_CHECK(modified, ctx, "setting UCX's rendezvous threshold");
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_TAG_SENDER_MASK |
                      UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
  params.tag_sender_mask = layout_.senderMask();
  params.mt_workers_shared = 0;
  params.estimated_num_eps = static_cast<std::size_t>(size_);
  const ucs_status_t initialized = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  SKYRING_UCX_CHECK(initialized, ctx, "creating the UCP context");

  ucp_worker_params_t workerParams{};
  workerParams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  workerParams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  SKYRING_UCX_CHECK(ucp_worker_create(context_, &workerParams, &worker_), ctx,
                    "creating the UCP worker");
  SKYRING_UCX_CHECK(ucp_worker_get_efd(worker_, &efd_), ctx, "getting the worker's event fd");

  ucp_address_t* address = nullptr;
  std::size_t length = 0;
  SKYRING_UCX_CHECK(ucp_worker_get_address(worker_, &address, &length), ctx,
                    "getting the worker address");
  const std::span<const std::byte> own(reinterpret_cast<const std::byte*>(address), length);
  const std::vector<std::byte> mine = frameAddress(rank_, own);
  const unsigned maxVersion = std::max(1U, addressVersion(own));
  ucp_worker_release_address(worker_, address);

  const std::vector<std::vector<std::byte>> all = oob(mine);
  SKYRING_CHECK(all.size() == static_cast<std::size_t>(size_), TransportError, ctx,
                "the out-of-band exchange returned ", all.size(), " addresses for a group of ",
                size_);
  peers_.resize(static_cast<std::size_t>(size_));
  for (int p = 0; p < size_; ++p) {
    Peer& peer = peers_[static_cast<std::size_t>(p)];
    peer.core = this;
    peer.rank = p;
    const std::span<const std::byte> remote =
        unframeAddress(all[p], p, maxVersion, ErrorContext{rank_, p, "ucx setup"});
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = reinterpret_cast<const ucp_address_t*>(remote.data());
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &Core::onEndpointError;
    ep.err_handler.arg = &peer;
    SKYRING_UCX_CHECK(ucp_ep_create(worker_, &ep, &peer.ep), (ErrorContext{rank_, p, "ucx setup"}),
                      "connecting to rank ", p);
  }

  const std::int32_t self = rank_;
  rankPayload_.resize(sizeof self);
  std::memcpy(rankPayload_.data(), &self, sizeof self);
  std::lock_guard lock(mu_);
  abortRecv_.buffer.resize(kControlBytes);
  goodbyeRecv_.buffer.resize(
      sizeof self + (options_.controlSeal ? kSenderBytes + options_.controlSeal->overhead() : 0));
  postControlRecvLocked(abortRecv_, ControlKind::abort);
  postControlRecvLocked(goodbyeRecv_, ControlKind::goodbye);
}

// Every rank sends a hello to every other and waits for one from each: this completes
// UCX's wire-up of all endpoints before the first collective.
void Core::handshake() {
  std::unique_lock lock(mu_);
  const std::size_t others = static_cast<std::size_t>(size_ - 1);
  std::vector<ControlRecv> hellos(others);
  for (auto& hello : hellos) {
    hello.buffer.resize(sizeof(std::int32_t));
    postControlRecvLocked(hello, ControlKind::hello);
  }
  std::vector<std::unique_ptr<Op>> sends;
  for (int p = 0; p < size_; ++p) {
    if (p != rank_) sends.push_back(postControlSendLocked(p, ControlKind::hello, rankPayload_));
  }
  const auto finished = [](const Op& op) { return op.done || op.failure.has_value(); };
  waitLocked(lock, Clock::now() + options_.connectTimeout, [&] {
    const bool sendFailed =
        std::any_of(sends.begin(), sends.end(), [](auto& s) { return s->failure.has_value(); });
    return sendFailed ||
           (std::all_of(hellos.begin(), hellos.end(), [&](auto& h) { return finished(*h.op); }) &&
            std::all_of(sends.begin(), sends.end(), [&](auto& s) { return finished(*s); }));
  });

  std::vector<bool> heard(static_cast<std::size_t>(size_), false);
  heard[static_cast<std::size_t>(rank_)] = true;
  for (auto& hello : hellos) {
    const std::int32_t from = decodeRank(hello.buffer);
    if (hello.op->done && from >= 0 && from < size_) heard[static_cast<std::size_t>(from)] = true;
  }
  std::ostringstream missing;
  int nMissing = 0;
  for (int p = 0; p < size_; ++p) {
    if (heard[static_cast<std::size_t>(p)]) continue;
    missing << (nMissing++ > 0 ? ", " : "") << p;
  }
  for (auto& hello : hellos) {
    if (hello.op->request != nullptr) ucp_request_cancel(worker_, hello.op->request);
    if (hello.op->request != nullptr) orphans_.push_back(std::move(hello.op));
  }
  std::optional<Failure> sendFailure;
  int failedPeer = -1;
  for (auto& send : sends) {
    if (send->failure && !sendFailure) {
      sendFailure = send->failure;
      failedPeer = send->peer;
    }
    if (send->request != nullptr) orphans_.push_back(std::move(send));
  }
  if (sendFailure) raise(*sendFailure, failedPeer);
  if (nMissing > 0) {
    SKYRING_THROW(Timeout, (ErrorContext{rank_, -1, "ucx setup"}), "rank",
                  nMissing > 1 ? "s " : " ", missing.str(), " did not connect within ",
                  options_.connectTimeout.count(), " ms");
  }
}

std::unique_ptr<Op> Core::postControlSendLocked(int peer, ControlKind kind,
                                                std::span<const std::byte> payload) {
  auto op = std::make_unique<Op>();
  op->core = this;
  op->peer = peer;
  op->control = true;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &Core::onSend;
  param.user_data = op.get();
  trackLocked(*op, ucp_tag_send_nbx(peers_[static_cast<std::size_t>(peer)].ep, payload.data(),
                                    payload.size(), layout_.control(kind), &param));
  return op;
}

// Control receives match their kind from any sender; the payload names the sender.
void Core::postControlRecvLocked(ControlRecv& recv, ControlKind kind) {
  if (controlClosed_) {
    recv.op.reset();
    return;
  }
  recv.op = std::make_unique<Op>();
  recv.op->core = this;
  recv.op->isRecv = true;
  recv.op->control = true;
  recv.op->exactSize = kind == ControlKind::hello;
  recv.op->expected = recv.buffer.size();
  ucp_request_param_t param = recvParams(*recv.op);
  trackLocked(*recv.op, ucp_tag_recv_nbx(worker_, recv.buffer.data(), recv.buffer.size(),
                                         layout_.control(kind), TagLayout::kExact, &param));
}

std::span<const std::byte> Core::controlPayloadLocked(int peer, ControlKind kind,
                                                      std::span<const std::byte> payload) {
  if (!options_.controlSeal) return payload;
  const auto sealed = options_.controlSeal->seal(peer, static_cast<std::uint8_t>(kind), payload);
  std::vector<std::byte> frame(kSenderBytes + sealed.size());
  putU32(frame.data(), static_cast<std::uint32_t>(rank_));
  std::memcpy(frame.data() + kSenderBytes, sealed.data(), sealed.size());
  sealedPayloads_.push_back(std::move(frame));  // UCX may read it until the send completes
  return sealedPayloads_.back();
}

std::optional<std::vector<std::byte>> Core::openControlLocked(
    ControlKind kind, std::span<const std::byte> frame) const {
  if (!options_.controlSeal) return std::vector<std::byte>(frame.begin(), frame.end());
  if (frame.size() < kSenderBytes) return std::nullopt;
  const std::uint32_t sender = getU32(frame.data());
  if (sender >= static_cast<std::uint32_t>(size_) || sender == static_cast<std::uint32_t>(rank_))
    return std::nullopt;
  return options_.controlSeal->open(static_cast<int>(sender), static_cast<std::uint8_t>(kind),
                                    frame.subspan(kSenderBytes));
}

// A control message that does not open (forged, or from another job) is dropped here:
// the job goes on as if it had never come.
void Core::handleControlLocked() {
  while (abortRecv_.op && abortRecv_.op->done) {
    AbortHeader header{};
    const auto body = openControlLocked(ControlKind::abort,
                                        std::span(abortRecv_.buffer.data(), abortRecv_.op->length));
    const std::size_t n = body ? body->size() : 0;
    if (n >= sizeof header && !abort_) {
      std::memcpy(&header, body->data(), sizeof header);
      const auto kind = static_cast<ErrorKind>(
          std::min<std::uint8_t>(header.kind, static_cast<std::uint8_t>(ErrorKind::aborted)));
      const auto* text = reinterpret_cast<const char*>(body->data() + sizeof header);
      abort_ = Failure{kind, std::string(text, n - sizeof header), true};
      events_ = true;
    }
    postControlRecvLocked(abortRecv_, ControlKind::abort);
  }
  while (goodbyeRecv_.op && goodbyeRecv_.op->done) {
    const auto body = openControlLocked(
        ControlKind::goodbye, std::span(goodbyeRecv_.buffer.data(), goodbyeRecv_.op->length));
    const std::int32_t from = body ? decodeRank(*body) : -1;
    if (from >= 0 && from < size_ && from != rank_) {
      auto& failure = peers_[static_cast<std::size_t>(from)].failure;
      if (!failure) {
        failure =
            Failure{ErrorKind::transport,
                    detail::concat("rank ", from, " has left the group (shut down)"), false, true};
      }
      events_ = true;
    }
    postControlRecvLocked(goodbyeRecv_, ControlKind::goodbye);
  }
  if (lost_) {
    lost_ = false;
    for (Peer& peer : peers_) {
      if (peer.lost != UCS_OK && !peer.failure) {
        peer.failure = Failure{ErrorKind::transport, deathOf(peer.rank, peer.lost), false, true};
        events_ = true;
      }
    }
  }
}

void Core::onEndpointError(void* arg, ucp_ep_h, ucs_status_t status) noexcept {
  auto* peer = static_cast<Peer*>(arg);
  if (peer->lost == UCS_OK) peer->lost = status;
  peer->core->lost_ = true;
  peer->core->events_ = true;
}

std::string Core::deathOf(int peer, ucs_status_t status) const {
  return detail::concat("connection to rank ", peer, " lost: rank ", peer,
                        " died (UCX: ", ucs_status_string(status), ")");
}

void Core::abort(ErrorKind kind, const std::string& reason) noexcept {
  try {
    std::unique_lock lock(mu_);
    if (abort_ || closing_) return;
    abort_ = Failure{kind, reason, true};
    abortedHere_ = true;
    abortPayload_ = encodeAbort(
        kind, rank_, reason,
        kControlBytes -
            (options_.controlSeal ? kSenderBytes + options_.controlSeal->overhead() : 0));
    std::vector<Op*> sent;
    for (int p = 0; p < size_; ++p) {
      const Peer& peer = peers_[static_cast<std::size_t>(p)];
      if (p == rank_ || peer.ep == nullptr || peer.failure) continue;
      controlSends_.push_back(postControlSendLocked(
          p, ControlKind::abort, controlPayloadLocked(p, ControlKind::abort, abortPayload_)));
      sent.push_back(controlSends_.back().get());
    }
    if (sleepers_ > 0) ucp_worker_signal(worker_);
    waitLocked(lock, Clock::now() + kAbortDelivery, [&] {
      return closing_ ||
             std::all_of(sent.begin(), sent.end(), [](Op* op) { return op->request == nullptr; });
    });
  } catch (...) {
    // Best effort: the local abort state is set; peers will time out or see us leave.
  }
}

namespace {

bool allFinished(const std::vector<void*>& requests) {
  return std::all_of(requests.begin(), requests.end(),
                     [](void* r) { return ucp_request_check_status(r) != UCS_INPROGRESS; });
}

}  // namespace

// Leaving in order: flush what this rank sent (while peers, still waiting on it, progress
// and acknowledge), say goodbye, then force-close every endpoint, which also completes
// whatever is still pending on it (UCX must not destroy an endpoint with requests
// outstanding). A goodbye sent before the flush could make a peer stop progressing and
// leave the flush waiting for its bound.
void Core::closeEndpointsLocked(std::unique_lock<std::mutex>& lock) {
  const auto bound = abort_.has_value() ? std::chrono::milliseconds(kFailedCloseTimeout)
                                        : std::chrono::milliseconds(kCloseTimeout);
  std::vector<bool> busy(static_cast<std::size_t>(size_), false);
  for (const Op* op : outstanding_) {
    if (!op->isRecv && !op->control) busy[static_cast<std::size_t>(op->peer)] = true;
  }
  std::vector<void*> flushes;
  const ucp_request_param_t flush{};
  for (const Peer& peer : peers_) {
    // A send that its peer never receives would keep the flush from finishing.
    if (peer.ep == nullptr || peer.failure || busy[static_cast<std::size_t>(peer.rank)]) continue;
    void* request = ucp_ep_flush_nbx(peer.ep, &flush);
    if (UCS_PTR_IS_PTR(request)) flushes.push_back(request);
  }
  waitLocked(lock, Clock::now() + bound, [&] { return allFinished(flushes); });

  std::vector<Op*> goodbyes;
  for (const Peer& peer : peers_) {
    if (peer.rank == rank_ || peer.ep == nullptr || peer.failure) continue;
    controlSends_.push_back(
        postControlSendLocked(peer.rank, ControlKind::goodbye,
                              controlPayloadLocked(peer.rank, ControlKind::goodbye, rankPayload_)));
    goodbyes.push_back(controlSends_.back().get());
  }
  waitLocked(lock, Clock::now() + bound, [&] {
    return std::all_of(goodbyes.begin(), goodbyes.end(),
                       [](const Op* op) { return op->request == nullptr; });
  });
  // After this rank's own abort(), keep the connections until the peers have left too
  // (their goodbye, or their loss), within the bound. A process that exits right after
  // aborting would otherwise reset connections on which its abort may still lie unread
  // (TCP resets when unread data is left behind), and a peer would report this rank's
  // death instead of the cause the abort names (integration.killed_rank_transport).
  if (abortedHere_) {
    waitLocked(lock, Clock::now() + kCloseTimeout, [&] {
      return std::all_of(peers_.begin(), peers_.end(), [&](const Peer& peer) {
        return peer.rank == rank_ || peer.ep == nullptr || peer.failure.has_value();
      });
    });
  }

  ucp_request_param_t force{};
  force.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  force.flags = UCP_EP_CLOSE_FLAG_FORCE;
  std::vector<void*> closes;
  for (Peer& peer : peers_) {
    if (peer.ep == nullptr) continue;
    void* request = ucp_ep_close_nbx(peer.ep, &force);
    peer.ep = nullptr;
    if (UCS_PTR_IS_PTR(request)) closes.push_back(request);
  }
  waitLocked(lock, Clock::now() + kCloseTimeout, [&] { return allFinished(closes); });
  for (void* request : flushes)
    ucp_request_free(request);
  for (void* request : closes)
    ucp_request_free(request);
}

void Core::cancelReceivesLocked(bool control) {
  std::vector<void*> recvs;
  for (const Op* op : outstanding_) {
    if (op->isRecv && op->control == control) recvs.push_back(op->request);
  }
  for (void* request : recvs)
    ucp_request_cancel(worker_, request);
}

void Core::close() noexcept {
  std::unique_lock lock(mu_);
  if (closing_) return;
  closing_ = true;
  if (worker_ != nullptr) {
    try {
      // Receives can be cancelled; sends finish by flushing or by the forced close. The
      // control receives stay until the end, to take in the goodbyes of peers leaving
      // at the same time (UCX warns about messages left unreceived).
      cancelReceivesLocked(false);
      closeEndpointsLocked(lock);
      controlClosed_ = true;
      cancelReceivesLocked(true);
    } catch (...) {
      // Out of memory while leaving: the worker's destruction below still releases all.
    }
    ucp_worker_signal(worker_);
    sleepersGone_.wait_for(lock, kCloseTimeout, [&] { return sleepers_ == 0; });
  }
  // Whatever UCX still holds is released with the worker.
  for (Op* op : outstanding_)
    op->request = nullptr;  // still pending: checkLocked reports the shutdown
  outstanding_.clear();
  closed_ = true;
  destroyUcx();
}

void Core::destroyUcx() noexcept {
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  worker_ = nullptr;
  efd_ = -1;
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
}

}  // namespace skyring::transport::ucx
