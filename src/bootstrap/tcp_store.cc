// The TCP store's client, the collective helpers built on it, and the socket helpers the
// server shares. The protocol is described in tcp_store.h.
#include "bootstrap/tcp_store.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "bootstrap/tcp_store_socket.h"
#include "skyring/error.h"

namespace skyring::bootstrap {

namespace detail {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);  // never retried on EINTR: Linux has released fd_ already
  fd_ = fd;
}

AddrInfoList resolveTcp(const std::string& host, int port, bool passive, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  const int rc =
      ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &list);
  if (rc != 0) {
    error = rc == EAI_SYSTEM ? errnoText(errno) : std::string(::gai_strerror(rc));
    return nullptr;
  }
  return AddrInfoList(list);
}

std::string errnoText(int err) {
  char buf[256] = {};
  // The GNU strerror_r may return a static string instead of filling buf.
  const char* text = ::strerror_r(err, buf, sizeof buf);
  return ::skyring::detail::concat(text, " (errno ", err, ")");
}

bool setNonBlocking(int fd) noexcept {
  const int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) >= 0 &&
         ::fcntl(fd, F_SETFD, FD_CLOEXEC) >= 0;
}

void setNoDelay(int fd) noexcept {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;
using detail::UniqueFd;
using store_wire::Op;
using store_wire::Status;

// How long after its own wait the client gives the server to report a get's timeout.
constexpr auto kReplyGrace = std::chrono::milliseconds(250);
constexpr auto kFirstRetryDelay = std::chrono::milliseconds(10);
constexpr auto kMaxRetryDelay = std::chrono::milliseconds(250);

int msUntil(Clock::time_point deadline) {
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<decltype(ms)>(ms, 0, INT_MAX));
}

// Waits for events on fd until deadline. Returns false when the deadline passed first.
bool waitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, msUntil(deadline));
    if (n > 0) return true;
    if (n == 0) {
      if (Clock::now() >= deadline) return false;
    } else if (errno != EINTR) {
      return true;  // let the following send/recv report the error
    }
  }
}

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
      if (!waitFor(fd.get(), POLLOUT, deadline)) {
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

void sendAll(int fd, std::span<const std::byte> data, Clock::time_point deadline,
             const ErrorContext& ctx, const std::string& endpoint) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data = data.subspan(static_cast<std::size_t>(n));
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!waitFor(fd, POLLOUT, deadline)) {
        SKYRING_THROW(Timeout, ctx, "the store at ", endpoint, " accepted no data in time");
      }
    } else if (errno != EINTR) {
      SKYRING_THROW(TransportError, ctx, "sending to the store at ", endpoint,
                    " failed: ", detail::errnoText(errno));
    }
  }
}

void recvAll(int fd, std::span<std::byte> data, Clock::time_point deadline, const ErrorContext& ctx,
             const std::string& endpoint) {
  while (!data.empty()) {
    const ssize_t n = ::recv(fd, data.data(), data.size(), 0);
    if (n > 0) {
      data = data.subspan(static_cast<std::size_t>(n));
    } else if (n == 0) {
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint,
                    " closed the connection (server gone?)");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!waitFor(fd, POLLIN, deadline)) {
        SKYRING_THROW(Timeout, ctx, "no reply from the store at ", endpoint, " in time");
      }
    } else if (errno != EINTR) {
      SKYRING_THROW(TransportError, ctx, "receiving from the store at ", endpoint,
                    " failed: ", detail::errnoText(errno));
    }
  }
}

ErrorContext opContext(const char* op) {
  return ErrorContext{-1, -1, std::string(op)};
}

void checkKey(const std::string& key, const ErrorContext& ctx) {
  SKYRING_CHECK_ARG(key.size() <= store_wire::kMaxKeyBytes, ctx, "store key of ", key.size(),
                    " bytes is longer than ", store_wire::kMaxKeyBytes);
}

}  // namespace

struct TcpStoreClient::Response {
  Status status;
  std::vector<std::byte> value;
};

TcpStoreClient::TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout)
    : endpoint_(host.find(':') == std::string::npos ? host + ":" + std::to_string(port)
                                                    : "[" + host + "]:" + std::to_string(port)),
      timeout_(timeout) {
  const ErrorContext ctx = opContext("tcp store connect");
  SKYRING_CHECK_ARG(port >= 1 && port <= 65535, ctx, "store port ", port, " is outside [1, 65535]");
  SKYRING_CHECK_ARG(timeout.count() > 0, ctx, "store timeout must be positive, got ",
                    timeout.count(), " ms");
  const auto deadline = Clock::now() + timeout;
  auto delay = std::chrono::milliseconds(kFirstRetryDelay);
  std::string error;
  for (;;) {
    UniqueFd fd = tryConnect(host, port, deadline, error);
    if (fd.get() >= 0) {
      fd_ = fd.release();
      return;
    }
    const auto now = Clock::now();
    if (now >= deadline) break;
    // Not there yet (refused, or the name not yet resolvable): the server may start late.
    std::this_thread::sleep_for(std::min<Clock::duration>(delay, deadline - now));
    delay = std::min(delay * 2, std::chrono::milliseconds(kMaxRetryDelay));
  }
  SKYRING_THROW(Timeout, ctx, "could not connect to the store at ", endpoint_, " within ",
                timeout.count(), " ms; last error: ", error);
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
  const ErrorContext ctx = opContext(opName);
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
    detail::putU64(waitMs, static_cast<std::uint64_t>(msUntil(deadline)));
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

  try {
    sendAll(fd_, frame, replyDeadline, ctx, endpoint_);
    std::byte header[store_wire::kResponseHeaderBytes];
    recvAll(fd_, header, replyDeadline, ctx, endpoint_);
    const auto status = static_cast<Status>(header[0]);
    const std::size_t length = detail::getU32(header + 1);
    if (status != Status::ok && status != Status::timeout && status != Status::error) {
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " sent unknown status ",
                    std::to_integer<int>(header[0]));
    }
    SKYRING_CHECK(length <= store_wire::kMaxValueBytes, TransportError, ctx, "the store at ",
                  endpoint_, " announced a ", length, "-byte reply");
    Response response{status, std::vector<std::byte>(length)};
    recvAll(fd_, response.value, replyDeadline, ctx, endpoint_);
    return response;
  } catch (const Error& e) {
    // Part of a request or reply may be in flight: the stream cannot be trusted again.
    failure_ = e.detail();
    closeConnection();
    throw;
  }
}

void TcpStoreClient::set(const std::string& key, std::span<const std::byte> value) {
  const ErrorContext ctx = opContext("tcp store set");
  checkKey(key, ctx);
  SKYRING_CHECK_ARG(value.size() <= store_wire::kMaxValueBytes, ctx, "store value of ",
                    value.size(), " bytes for key '", key, "' is longer than ",
                    store_wire::kMaxValueBytes);
  const Response r = request(Op::set, key, value, Clock::now() + timeout_, "tcp store set");
  if (r.status != Status::ok) {
    SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " refused to set '", key, "': ",
                  std::string(reinterpret_cast<const char*>(r.value.data()), r.value.size()));
  }
}

std::vector<std::byte> TcpStoreClient::get(const std::string& key) {
  const ErrorContext ctx = opContext("tcp store get");
  checkKey(key, ctx);
  Response r = request(Op::get, key, {}, Clock::now() + timeout_, "tcp store get");
  if (r.status == Status::timeout) {
    SKYRING_THROW(Timeout, ctx, "key '", key, "' was not set in the store at ", endpoint_,
                  " within ", timeout_.count(), " ms");
  }
  if (r.status != Status::ok) {
    SKYRING_THROW(TransportError, ctx, "the store at ", endpoint_, " refused to get '", key, "': ",
                  std::string(reinterpret_cast<const char*>(r.value.data()), r.value.size()));
  }
  return std::move(r.value);
}

std::int64_t TcpStoreClient::add(const std::string& key, std::int64_t delta) {
  const ErrorContext ctx = opContext("tcp store add");
  checkKey(key, ctx);
  std::byte encoded[8];
  detail::putU64(encoded, static_cast<std::uint64_t>(delta));
  const Response r = request(Op::add, key, encoded, Clock::now() + timeout_, "tcp store add");
  if (r.status == Status::error) {
    SKYRING_THROW(InvalidArgument, ctx,
                  std::string(reinterpret_cast<const char*>(r.value.data()), r.value.size()));
  }
  SKYRING_CHECK(r.status == Status::ok && r.value.size() == 8, TransportError, ctx,
                "malformed reply to add '", key, "' from the store at ", endpoint_);
  return static_cast<std::int64_t>(detail::getU64(r.value.data()));
}

// allgather: every rank stores its bytes under prefix + rank, then reads everyone's. The
// server parks each get until the key appears, so a late rank costs no polling.
std::vector<std::vector<std::byte>> allgather(TcpStoreClient& client, const std::string& prefix,
                                              int rank, int size, std::span<const std::byte> mine) {
  ErrorContext ctx{rank, -1, "store allgather '" + prefix + "'"};
  SKYRING_CHECK_ARG(size > 0 && rank >= 0 && rank < size, ctx, "rank ", rank,
                    " is outside a world of ", size);
  client.set(prefix + std::to_string(rank), mine);
  std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    if (r == rank) {
      all[static_cast<std::size_t>(r)].assign(mine.begin(), mine.end());
      continue;
    }
    try {
      all[static_cast<std::size_t>(r)] = client.get(prefix + std::to_string(r));
    } catch (const Timeout& e) {
      ctx.peer = r;
      SKYRING_THROW(Timeout, ctx, "rank ", r, " did not contribute: ", e.detail());
    }
  }
  return all;
}

// barrier: an arrival counter; the rank that brings it to size sets the release key that
// every rank waits for.
void barrier(TcpStoreClient& client, const std::string& prefix, int rank, int size) {
  const ErrorContext ctx{rank, -1, "store barrier '" + prefix + "'"};
  SKYRING_CHECK_ARG(size > 0 && rank >= 0 && rank < size, ctx, "rank ", rank,
                    " is outside a world of ", size);
  const std::string arrivedKey = prefix + "arrived";
  const std::int64_t arrived = client.add(arrivedKey, 1);
  SKYRING_CHECK(arrived <= size, TransportError, ctx, arrived, " ranks arrived at a barrier of ",
                size, " (prefix reused?)");
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
