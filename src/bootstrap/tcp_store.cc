// The TCP store's client and the collective helpers built on it. The protocol is
// described in tcp_store.h; the join's messages and proofs are in store_handshake.cc.
#include "bootstrap/tcp_store.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstdint>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "bootstrap/store_handshake.h"
#include "bootstrap/tcp_store_socket.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

using Clock = std::chrono::steady_clock;
using detail::UniqueFd;
using store_wire::Op;
using store_wire::Status;
namespace hs = handshake;

// How long after its own wait the client gives the server to report a get's timeout.
constexpr auto kReplyGrace = std::chrono::milliseconds(250);
constexpr auto kFirstRetryDelay = std::chrono::milliseconds(10);
constexpr auto kMaxRetryDelay = std::chrono::milliseconds(250);
// A rank that gives up tells the store so, but does not wait long for it.
constexpr auto kLeaveWait = std::chrono::seconds(1);

// Linux connects a socket to itself when the port it picks to connect from is the
// (listener-less, ephemeral) port it connects to. Such a socket would answer its own
// requests and keep the server from binding that port, so it counts as refused.
bool connectedToItself(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t localLen = sizeof local, peerLen = sizeof peer;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &localLen) < 0 ||
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peerLen) < 0) {
    return false;
  }
  return localLen == peerLen && std::memcmp(&local, &peer, localLen) == 0;
}

// One attempt at each address of host:port. Returns -1 with error set on failure.
UniqueFd tryConnect(const std::string& host, int port, Clock::time_point deadline,
                    std::string& error) {
  detail::AddrInfoList addrs = detail::resolveTcp(host, port, /*passive=*/false, error);
  if (!addrs) return UniqueFd();
  for (const addrinfo* a = addrs.get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (fd.get() < 0 || !detail::setNonBlocking(fd.get())) {
      error = "socket: " + detail::errnoText(errno);
      continue;
    }
    int rc = ::connect(fd.get(), a->ai_addr, a->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS || err == EINTR) {
      if (!detail::waitFor(fd.get(), POLLOUT, deadline)) {
        error = "connect: timed out";
        continue;
      }
      socklen_t len = sizeof err;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    }
    if (err != 0) {
      error = "connect: " + detail::errnoText(err);
      continue;
    }
    if (connectedToItself(fd.get())) {
      error = "connect: " + detail::errnoText(ECONNREFUSED);
      continue;
    }
    detail::setNoDelay(fd.get());
    return fd;
  }
  return UniqueFd();
}

ErrorContext opContext(int rank, const char* op) {
  return ErrorContext{rank, -1, std::string(op)};
}

void checkKey(const std::string& key, const ErrorContext& ctx) {
  if (key.size() > store_wire::kMaxKeyBytes) {
    SKYRING_THROW(InvalidArgument, ctx, "store key of ", key.size(),
                  " bytes is longer than store_wire::kMaxKeyBytes = ", store_wire::kMaxKeyBytes);
  }
}

// "job 'id'", or what a job without an id is called.
std::string jobLabel(const std::string& id) {
  return id.empty() ? std::string("a job without a job id") : "job '" + id + "'";
}

std::string textOf(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Reads from fd into buf until parse() says complete or malformed. Returns false when the
// server closed the connection first.
template <typename ParseFn>
bool readMessage(int fd, std::vector<std::byte>& buf, std::size_t limit, Clock::time_point deadline,
                 const ErrorContext& ctx, const std::string& endpoint, ParseFn parse,
                 hs::Parse& result) {
  std::byte chunk[512];
  for (;;) {
    result = parse(std::span<const std::byte>(buf));
    if (result != hs::Parse::incomplete) return true;
    if (buf.size() >= limit) {
      result = hs::Parse::malformed;
      return true;
    }
    const std::size_t want = std::min(sizeof chunk, limit - buf.size());
    const std::size_t n = detail::recvSome(fd, std::span(chunk, want), deadline, ctx, endpoint);
    if (n == 0) return false;
    buf.insert(buf.end(), chunk, chunk + n);
  }
}

}  // namespace

struct TcpStoreClient::Response {
  Status status;
  int rank;
  std::vector<std::byte> value;
};

TcpStoreClient::TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout,
                               const StoreIdentity& identity, int rank)
    : endpoint_(host.find(':') == std::string::npos ? host + ":" + std::to_string(port)
                                                    : "[" + host + "]:" + std::to_string(port)),
      timeout_(timeout),
      rank_(rank),
      worldSize_(identity.worldSize) {
  const ErrorContext ctx = opContext(rank, "tcp store connect");
  SKYRING_CHECK_ARG(port >= 1 && port <= 65535, ctx, "store port ", port, " is outside [1, 65535]");
  SKYRING_CHECK_ARG(timeout.count() > 0, ctx, "store timeout must be positive, got ",
                    timeout.count(), " ms");
  SKYRING_CHECK_ARG(identity.worldSize >= 1 && rank >= 0 && rank < identity.worldSize, ctx, "rank ",
                    rank, " is outside a world of ", identity.worldSize);
  SKYRING_CHECK_ARG(identity.jobId.size() <= store_wire::kMaxJobIdBytes, ctx, "a job id of ",
                    identity.jobId.size(), " bytes is longer than store_wire::kMaxJobIdBytes = ",
                    store_wire::kMaxJobIdBytes);
  const auto deadline = Clock::now() + timeout;
  auto delay = std::chrono::milliseconds(kFirstRetryDelay);
  std::string error;
  for (;;) {
    UniqueFd fd = tryConnect(host, port, deadline, error);
    if (fd.get() >= 0) {
      fd_ = fd.release();
      try {
        if (join(identity, deadline, error)) return;
      } catch (...) {
        closeConnection();
        throw;
      }
      closeConnection();
    }
    const auto now = Clock::now();
    if (now >= deadline) break;
    // Not there yet (refused, the name not yet resolvable, or dropped before the join
    // was answered, e.g. while the server was full): the server may start late.
    std::this_thread::sleep_for(std::min<Clock::duration>(delay, deadline - now));
    delay = std::min(delay * 2, std::chrono::milliseconds(kMaxRetryDelay));
  }
  // Rank 0 hosts the store (tcp_store.h): a store that never answers is rank 0 missing.
  ErrorContext missing = ctx;
  missing.peer = 0;
  SKYRING_THROW(Timeout, missing, "could not join the store at ", endpoint_,
                ", which rank 0 hosts, within ", timeout.count(),
                " ms (SKYRING_INIT_TIMEOUT_MS): rank 0 has not started, is stopped or has died; "
                "last error: ",
                error);
}

bool TcpStoreClient::join(const StoreIdentity& identity, Clock::time_point deadline,
                          std::string& error) {
  const ErrorContext ctx = opContext(rank_, "tcp store join");
  std::vector<std::byte> buf;
  hs::Parse parsed{};
  std::uint32_t version = 0;
  hs::Nonce serverNonce{};
  if (!readMessage(
          fd_, buf, hs::kChallengeBytes, deadline, ctx, endpoint_,
          [&](std::span<const std::byte> in) {
            return hs::parseChallenge(in, version, serverNonce);
          },
          parsed)) {
    error = "the server closed the connection before the store's challenge";
    return false;
  }
  if (parsed == hs::Parse::malformed) {
    SKYRING_THROW(TransportError, ctx, "the server at ", endpoint_,
                  " is not a skyring store (it did not send the store's challenge): is "
                  "MASTER_ADDR:MASTER_PORT taken by another program?");
  }
  if (version != hs::kVersion) {
    SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_,
                  " speaks store protocol version ", version, ", this process version ",
                  hs::kVersion, ": every rank must run the same skyring");
  }

  const hs::Key key = hs::deriveKey(identity);
  hs::Hello hello;
  hello.jobId = identity.jobId;
  hello.worldSize = static_cast<std::uint32_t>(identity.worldSize);
  hello.rank = static_cast<std::uint32_t>(rank_);
  hello.clientNonce = hs::randomNonce();
  hello.proof = hs::clientProof(key, serverNonce, hello);
  detail::sendAll(fd_, hs::encodeHello(hello), deadline, ctx, endpoint_);

  buf.clear();
  hs::Welcome welcome;
  std::size_t used = 0;
  if (!readMessage(
          fd_, buf, hs::kMaxWelcomeBytes, deadline, ctx, endpoint_,
          [&](std::span<const std::byte> in) { return hs::parseWelcome(in, welcome, used); },
          parsed)) {
    // Dropped before the server read the hello (it was full): no claim was recorded.
    error = "the server closed the connection before answering the join";
    return false;
  }
  if (parsed == hs::Parse::malformed) {
    SKYRING_THROW(TransportError, ctx, "the server at ", endpoint_,
                  " sent a malformed answer to the join: not a skyring store of this version");
  }
  ErrorContext culpritCtx = ctx;
  culpritCtx.peer = welcome.culprit;
  const std::string theirs =
      ::skyring::detail::concat("the store at ", endpoint_, " serves ", jobLabel(welcome.jobId),
                                " of ", welcome.worldSize, " ranks");
  switch (welcome.verdict) {
    case hs::Verdict::ok:
      // The server proves it knows the key too: a fake store on MASTER_PORT cannot.
      if (!hs::sameMac(welcome.proof, hs::serverProof(key, serverNonce, hello))) {
        SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_,
                      " failed to prove that it knows this job's key: it is not rank 0 of "
                      "this job (a stale or fake store on MASTER_PORT, or a different "
                      "SKYRING_JOB_TOKEN)");
      }
      return true;
    case hs::Verdict::otherJob:
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " serves ",
                    jobLabel(welcome.jobId), ", this process belongs to ", jobLabel(identity.jobId),
                    ": two jobs on one MASTER_PORT?");
    case hs::Verdict::otherWorldSize:
      SKYRING_THROW(TransportError, ctx, theirs,
                    ", this process was started with WORLD_SIZE=", identity.worldSize,
                    ": two jobs on one MASTER_PORT, or ranks started "
                    "with different WORLD_SIZE?");
    case hs::Verdict::badProof:
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_,
                    " refused this process's proof: SKYRING_JOB_TOKEN differs from rank 0's "
                    "(or only one of them has a token)");
    case hs::Verdict::rankClaimed:
    case hs::Verdict::joinClosed:
    case hs::Verdict::joinFailed:
      SKYRING_THROW(TransportError, culpritCtx, welcome.message, " (from the store at ", endpoint_,
                    ")");
  }
  SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " sent an unknown verdict");
}

TcpStoreClient::~TcpStoreClient() {
  closeConnection();
}

void TcpStoreClient::closeConnection() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

TcpStoreClient::Response TcpStoreClient::request(Op op, const std::string& key,
                                                 std::span<const std::byte> value,
                                                 Clock::time_point deadline, const char* opName) {
  const ErrorContext ctx = opContext(rank_, opName);
  {
    std::unique_lock lock(mu_);
    if (!turnFree_.wait_until(lock, deadline, [this] { return !busy_; })) {
      SKYRING_THROW(Timeout, ctx, "another call on this client to the store at ", endpoint_,
                    " held it for the whole ", timeout_.count(), " ms timeout (key '", key, "')");
    }
    busy_ = true;
  }
  struct TurnEnd {
    TcpStoreClient& self;
    ~TurnEnd() {
      {
        std::lock_guard lock(self.mu_);
        self.busy_ = false;
      }
      self.turnFree_.notify_one();
    }
  } turnEnd{*this};
  if (fd_ < 0) {
    SKYRING_THROW(TransportError, ctx, "the connection to the store at ", endpoint_,
                  " failed earlier: ", failure_);
  }
  // A get tells the server how long to park it: the time left, measured now that it is
  // this call's turn; the client then waits a little longer for the server's verdict.
  std::byte waitMs[8];
  auto replyDeadline = deadline;
  if (op == Op::get) {
    detail::putU64(waitMs, static_cast<std::uint64_t>(detail::msUntil(deadline)));
    value = waitMs;
    replyDeadline += kReplyGrace;
  }
  std::vector<std::byte> frame(store_wire::kRequestHeaderBytes + key.size() + 4 + value.size());
  std::byte* p = frame.data();
  p[0] = static_cast<std::byte>(op);
  detail::putU32(p + 1, static_cast<std::uint32_t>(key.size()));
  std::memcpy(p + store_wire::kRequestHeaderBytes, key.data(), key.size());
  detail::putU32(p + store_wire::kRequestHeaderBytes + key.size(),
                 static_cast<std::uint32_t>(value.size()));
  if (!value.empty()) std::memcpy(p + frame.size() - value.size(), value.data(), value.size());

  Response response{};
  try {
    detail::sendAll(fd_, frame, replyDeadline, ctx, endpoint_);
    std::byte header[store_wire::kResponseHeaderBytes];
    detail::recvAll(fd_, header, replyDeadline, ctx, endpoint_);
    response.status = static_cast<Status>(header[0]);
    response.rank = static_cast<std::int32_t>(detail::getU32(header + 1));
    const std::size_t length = detail::getU32(header + 5);
    if (std::to_integer<int>(header[0]) > static_cast<int>(Status::failed)) {
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " sent unknown status ",
                    std::to_integer<int>(header[0]));
    }
    if (length > store_wire::kMaxValueBytes) {
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " announced a ", length,
                    "-byte reply, over store_wire::kMaxValueBytes");
    }
    response.value.resize(length);
    detail::recvAll(fd_, response.value, replyDeadline, ctx, endpoint_);
  } catch (const Error& e) {
    // Part of a request or reply may be in flight: the stream cannot be trusted again.
    failure_ = e.detail();
    closeConnection();
    throw;
  }
  if (response.status == Status::failed) {
    // The join failed or a rank is gone: every rank hears the same reason, naming it.
    SKYRING_THROW(TransportError, (ErrorContext{rank_, response.rank, opName}),
                  textOf(response.value), " (from the store at ", endpoint_, ")");
  }
  if (op == Op::leave) {
    failure_ = "this rank left the store";
    closeConnection();
  }
  return response;
}

void TcpStoreClient::set(const std::string& key, std::span<const std::byte> value) {
  const ErrorContext ctx = opContext(rank_, "tcp store set");
  checkKey(key, ctx);
  if (value.size() > store_wire::kMaxValueBytes) {
    SKYRING_THROW(InvalidArgument, ctx, "store value of ", value.size(), " bytes for key '", key,
                  "' is longer than store_wire::kMaxValueBytes = ", store_wire::kMaxValueBytes);
  }
  const Response r = request(Op::set, key, value, Clock::now() + timeout_, "tcp store set");
  if (r.status != Status::ok) {
    SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " refused to set '", key,
                  "': ", textOf(r.value));
  }
}

std::vector<std::byte> TcpStoreClient::get(const std::string& key) {
  return getEntry(key).value;
}

StoreEntry TcpStoreClient::getEntry(const std::string& key) {
  const ErrorContext ctx = opContext(rank_, "tcp store get");
  checkKey(key, ctx);
  Response r = request(Op::get, key, {}, Clock::now() + timeout_, "tcp store get");
  if (r.status == Status::timeout) {
    SKYRING_THROW(Timeout, ctx, "key '", key, "' was not set in the store at ", endpoint_,
                  " within ", timeout_.count(), " ms");
  }
  if (r.status != Status::ok) {
    SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " refused to get '", key,
                  "': ", textOf(r.value));
  }
  return StoreEntry{std::move(r.value), r.rank};
}

std::int64_t TcpStoreClient::add(const std::string& key, std::int64_t delta) {
  const ErrorContext ctx = opContext(rank_, "tcp store add");
  checkKey(key, ctx);
  std::byte encoded[8];
  detail::putU64(encoded, static_cast<std::uint64_t>(delta));
  const Response r = request(Op::add, key, encoded, Clock::now() + timeout_, "tcp store add");
  if (r.status == Status::error) SKYRING_THROW(InvalidArgument, ctx, textOf(r.value));
  if (r.status != Status::ok || r.value.size() != 8) {
    SKYRING_THROW(TransportError, ctx, "malformed reply to add '", key, "' from the store at ",
                  endpoint_);
  }
  return static_cast<std::int64_t>(detail::getU64(r.value.data()));
}

void TcpStoreClient::leave(int culprit, std::string_view reason) noexcept {
  try {
    const std::string_view said = reason.substr(0, hs::kMaxMessageBytes);
    std::vector<std::byte> value(4 + said.size());
    detail::putU32(value.data(), static_cast<std::uint32_t>(culprit));
    if (!said.empty()) std::memcpy(value.data() + 4, said.data(), said.size());
    request(Op::leave, "", value, Clock::now() + kLeaveWait, "tcp store leave");
  } catch (...) {  // NOLINT(bugprone-empty-catch): best effort; the close tells the store too
  }
}

bool TcpStoreClient::awaitServerClose(Clock::time_point deadline) noexcept {
  std::unique_lock lock(mu_);
  if (busy_ || fd_ < 0) return fd_ < 0;
  std::byte scratch[256];
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 100)));
    if (rc < 0 && errno != EINTR) return false;
    if (rc <= 0) continue;
    const ssize_t n = ::recv(fd_, scratch, sizeof scratch, 0);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
      closeConnection();
      return true;
    }
  }
}

// allgather: every rank stores its bytes under prefix + rank, then reads everyone's. The
// server parks each get until the key appears, so a late rank costs no polling.
std::vector<std::vector<std::byte>> allgather(TcpStoreClient& client, const std::string& prefix,
                                              std::span<const std::byte> mine) {
  const int rank = client.rank();
  const int size = client.worldSize();
  ErrorContext ctx{rank, -1, "store allgather '" + prefix + "'"};
  client.set(prefix + std::to_string(rank), mine);
  std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    if (r == rank) {
      all[static_cast<std::size_t>(r)].assign(mine.begin(), mine.end());
      continue;
    }
    ctx.peer = r;
    StoreEntry entry;
    try {
      entry = client.getEntry(prefix + std::to_string(r));
    } catch (const Timeout& e) {
      SKYRING_THROW(Timeout, ctx, "rank ", r, " did not contribute: ", e.detail());
    }
    // Only rank r's own connection may have set its record (a forged one would reach UCX).
    if (entry.writer != r) {
      SKYRING_THROW(TransportError, ctx, "the record of rank ", r, " under '", prefix, r,
                    "' was set by rank ", entry.writer, ", not by rank ", r);
    }
    all[static_cast<std::size_t>(r)] = std::move(entry.value);
  }
  return all;
}

// barrier: an arrival counter; the rank that brings it to size sets the release key that
// every rank waits for.
void barrier(TcpStoreClient& client, const std::string& prefix) {
  const int size = client.worldSize();
  const ErrorContext ctx{client.rank(), -1, "store barrier '" + prefix + "'"};
  const std::string arrivedKey = prefix + "arrived";
  const std::int64_t arrived = client.add(arrivedKey, 1);
  if (arrived > size) {
    SKYRING_THROW(TransportError, ctx, arrived, " ranks arrived at a barrier of ", size,
                  " (prefix reused?)");
  }
  if (arrived == size) client.set(prefix + "released", {});
  try {
    client.get(prefix + "released");
  } catch (const Timeout& e) {
    std::string count = "?";
    try {
      count = std::to_string(client.add(arrivedKey, 0));
    } catch (const Error&) {  // NOLINT(bugprone-empty-catch): the count is only a hint
    }
    SKYRING_THROW(Timeout, ctx, "only ", count, " of ", size, " ranks arrived: ", e.detail());
  }
}

}  // namespace skyring::bootstrap
