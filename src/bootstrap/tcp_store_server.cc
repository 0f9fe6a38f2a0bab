// The TCP store's server: one thread, one poll() over a wake-up pipe, the listening
// socket and every connection.
//
// Each connection has an input buffer (bytes read but not yet a whole request), an
// output buffer (responses not yet written) and at most one parked get. Requests are
// handled one at a time per connection; while its get is parked, a connection's
// further input is only buffered (a well-behaved client sends nothing then). Parked
// gets are listed in waiters_ by key and answered when the key is set or added, or when
// their deadline passes; poll()'s timeout is the nearest deadline, so nothing spins.
// All sockets are non-blocking: a slow reader only holds up its own connection.
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <map>
#include <unordered_map>

#include "bootstrap/tcp_store.h"
#include "bootstrap/tcp_store_socket.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

using Clock = std::chrono::steady_clock;
using detail::UniqueFd;
using store_wire::Op;
using store_wire::Status;

constexpr std::size_t kReadChunk = 64 * 1024;
// A connection is not served further while this much of its responses is unsent.
constexpr std::size_t kOutputHighWater = std::size_t{1} << 20;
// More buffered input than one largest request plus a read: the client is not waiting
// for answers (or is hostile), so it is dropped.
constexpr std::size_t kMaxBufferedInput = store_wire::kRequestHeaderBytes +
                                          store_wire::kMaxKeyBytes + 4 +
                                          store_wire::kMaxValueBytes + kReadChunk;
// Out of file descriptors: stop accepting for a while instead of spinning on poll().
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
// Parked waits longer than this are cut to it (keeps deadline arithmetic finite).
constexpr std::uint64_t kMaxWaitMs = std::uint64_t{7} * 24 * 3600 * 1000;

struct Connection {
  UniqueFd fd;
  std::vector<std::byte> in;
  std::vector<std::byte> out;
  std::size_t outSent = 0;
  bool dead = false;
  bool parked = false;
  std::string parkedKey;
  Clock::time_point parkedDeadline;

  std::size_t outPending() const { return out.size() - outSent; }
};

}  // namespace

class TcpStoreServer::Loop {
 public:
  Loop(UniqueFd listenFd, UniqueFd wakeRead, UniqueFd wakeWrite)
      : listen_(std::move(listenFd)),
        wakeRead_(std::move(wakeRead)),
        wakeWrite_(std::move(wakeWrite)) {}

  // Serves until stop(); never throws. On an internal failure it closes everything.
  void run() noexcept {
    try {
      while (pollOnce()) {
      }
    } catch (...) {  // NOLINT(bugprone-empty-catch): no exception may leave the thread
    }
    conns_.clear();
    waiters_.clear();
    listen_.reset();
  }

  // Asks run() to return; callable from any thread, once.
  void stop() noexcept {
    const char byte = 1;
    while (::write(wakeWrite_.get(), &byte, 1) < 0 && errno == EINTR) {
    }
  }

 private:
  bool pollOnce();
  void acceptAll(Clock::time_point now);
  void readFrom(Connection& c);
  void flush(Connection& c);
  void processInput(std::uint64_t id, Connection& c);
  void handle(std::uint64_t id, Connection& c, Op op, std::string key,
              std::span<const std::byte> value);
  void reply(Connection& c, Status status, std::span<const std::byte> value);
  void wake(const std::string& key);
  void unpark(std::uint64_t id, Connection& c);

  UniqueFd listen_;
  UniqueFd wakeRead_;
  UniqueFd wakeWrite_;
  std::uint64_t nextId_ = 0;
  std::map<std::uint64_t, Connection> conns_;
  std::unordered_map<std::string, std::vector<std::byte>> data_;
  std::unordered_map<std::string, std::vector<std::uint64_t>> waiters_;
  Clock::time_point acceptPausedUntil_{};
  bool woke_ = false;  // a parked connection was answered and may have buffered input
};

bool TcpStoreServer::Loop::pollOnce() {
  std::vector<pollfd> fds;
  std::vector<std::uint64_t> ids;
  fds.reserve(conns_.size() + 2);
  ids.reserve(conns_.size());
  auto now = Clock::now();
  fds.push_back({wakeRead_.get(), POLLIN, 0});
  const bool accepting = now >= acceptPausedUntil_;
  fds.push_back({accepting ? listen_.get() : -1, POLLIN, 0});  // poll ignores fd -1
  auto next = accepting ? Clock::time_point::max() : acceptPausedUntil_;
  for (auto& [id, c] : conns_) {
    short events = POLLIN;
    if (c.outPending() > 0) events |= POLLOUT;
    fds.push_back({c.fd.get(), events, 0});
    ids.push_back(id);
    if (c.parked) next = std::min(next, c.parkedDeadline);
  }
  int timeoutMs = -1;
  if (next != Clock::time_point::max()) {
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
    timeoutMs = static_cast<int>(std::clamp<decltype(ms)>(ms, 0, INT_MAX));
  }
  if (::poll(fds.data(), fds.size(), timeoutMs) < 0) {
    if (errno == EINTR || errno == EAGAIN) return true;
    return false;  // cannot wait any more: close everything so clients fail, not hang
  }
  if (fds[0].revents != 0) return false;  // stop()

  now = Clock::now();
  if (accepting && fds[1].revents != 0) acceptAll(now);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const short revents = fds[i + 2].revents;
    if (revents == 0) continue;
    Connection& c = conns_.at(ids[i]);
    if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0) readFrom(c);
    if (!c.dead && (revents & POLLOUT) != 0) flush(c);
  }

  // Expired waits are answered "timeout"; the client raises Timeout naming the key.
  for (auto& [id, c] : conns_) {
    if (c.parked && !c.dead && c.parkedDeadline <= now) {
      unpark(id, c);
      reply(c, Status::timeout, {});
    }
  }

  do {
    woke_ = false;
    for (auto& [id, c] : conns_)
      processInput(id, c);
  } while (woke_);

  for (auto it = conns_.begin(); it != conns_.end();) {
    if (it->second.dead) {
      if (it->second.parked) unpark(it->first, it->second);
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
  return true;
}

void TcpStoreServer::Loop::acceptAll(Clock::time_point now) {
  for (;;) {
    int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        acceptPausedUntil_ = now + kAcceptPause;
      return;  // EAGAIN: accepted all pending; anything else: try again next round
    }
    detail::setNoDelay(fd);
    conns_[nextId_++].fd.reset(fd);
  }
}

void TcpStoreServer::Loop::readFrom(Connection& c) {
  for (;;) {
    if (c.in.size() > kMaxBufferedInput) {
      c.dead = true;
      return;
    }
    const std::size_t old = c.in.size();
    c.in.resize(old + kReadChunk);
    const ssize_t n = ::recv(c.fd.get(), c.in.data() + old, kReadChunk, 0);
    c.in.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c.dead = true;  // end of stream or a reset: the client is gone
    return;
  }
}

void TcpStoreServer::Loop::flush(Connection& c) {
  const bool wasHeldBack = c.outPending() >= kOutputHighWater;
  while (c.outPending() > 0) {
    const ssize_t n =
        ::send(c.fd.get(), c.out.data() + c.outSent, c.outPending(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      c.outSent += static_cast<std::size_t>(n);
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return;
    } else {
      c.dead = true;
      return;
    }
  }
  c.out.clear();
  c.outSent = 0;
  if (wasHeldBack) woke_ = true;  // its buffered input may be served now
}

// Parses and handles whole requests until the connection waits (parked, backpressure,
// incomplete request). Anything malformed drops the connection.
void TcpStoreServer::Loop::processInput(std::uint64_t id, Connection& c) {
  namespace w = store_wire;
  std::size_t pos = 0;
  while (!c.dead && !c.parked && c.outPending() < kOutputHighWater) {
    const std::size_t avail = c.in.size() - pos;
    const std::byte* p = c.in.data() + pos;
    if (avail < w::kRequestHeaderBytes) break;
    const auto op = static_cast<Op>(p[0]);
    if (op != Op::set && op != Op::get && op != Op::add) {
      c.dead = true;
      break;
    }
    const std::size_t keyLen = detail::getU32(p + 1);
    if (keyLen > w::kMaxKeyBytes) {
      c.dead = true;
      break;
    }
    if (avail < w::kRequestHeaderBytes + keyLen + 4) break;
    const std::size_t valueLen = detail::getU32(p + w::kRequestHeaderBytes + keyLen);
    if (valueLen > w::kMaxValueBytes || (op != Op::set && valueLen != 8)) {
      c.dead = true;
      break;
    }
    const std::size_t total = w::kRequestHeaderBytes + keyLen + 4 + valueLen;
    if (avail < total) break;
    const auto* keyBytes = reinterpret_cast<const char*>(p + w::kRequestHeaderBytes);
    handle(id, c, op, std::string(keyBytes, keyLen),
           std::span(p + w::kRequestHeaderBytes + keyLen + 4, valueLen));
    pos += total;
  }
  if (!c.dead) c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(pos));
}

void TcpStoreServer::Loop::handle(std::uint64_t id, Connection& c, Op op, std::string key,
                                  std::span<const std::byte> value) {
  switch (op) {
    case Op::set:
      data_[key].assign(value.begin(), value.end());
      reply(c, Status::ok, {});
      wake(key);
      return;
    case Op::get: {
      if (auto it = data_.find(key); it != data_.end()) {
        reply(c, Status::ok, it->second);
        return;
      }
      const auto waitMs = std::min(detail::getU64(value.data()), kMaxWaitMs);
      c.parked = true;
      c.parkedDeadline = Clock::now() + std::chrono::milliseconds(waitMs);
      waiters_[key].push_back(id);
      c.parkedKey = std::move(key);
      return;
    }
    case Op::add: {
      const auto delta = static_cast<std::int64_t>(detail::getU64(value.data()));
      std::int64_t counter = 0;
      auto it = data_.find(key);
      if (it != data_.end()) {
        if (it->second.size() != 8) {
          const std::string msg = ::skyring::detail::concat(
              "key '", key, "' holds ", it->second.size(), " bytes, not an 8-byte counter");
          reply(c, Status::error, std::as_bytes(std::span(msg)));
          return;
        }
        counter = static_cast<std::int64_t>(detail::getU64(it->second.data()));
      }
      std::int64_t sum = 0;
      if (__builtin_add_overflow(counter, delta, &sum)) {
        const std::string msg = ::skyring::detail::concat("counter '", key, "' = ", counter,
                                                          " overflows when ", delta, " is added");
        reply(c, Status::error, std::as_bytes(std::span(msg)));
        return;
      }
      std::byte encoded[8];
      detail::putU64(encoded, static_cast<std::uint64_t>(sum));
      data_[key].assign(std::begin(encoded), std::end(encoded));
      reply(c, Status::ok, encoded);
      wake(key);
      return;
    }
  }
}

void TcpStoreServer::Loop::reply(Connection& c, Status status, std::span<const std::byte> value) {
  std::byte header[store_wire::kResponseHeaderBytes];
  header[0] = static_cast<std::byte>(status);
  detail::putU32(header + 1, static_cast<std::uint32_t>(value.size()));
  c.out.insert(c.out.end(), std::begin(header), std::end(header));
  c.out.insert(c.out.end(), value.begin(), value.end());
  flush(c);
}

void TcpStoreServer::Loop::wake(const std::string& key) {
  auto it = waiters_.find(key);
  if (it == waiters_.end()) return;
  const std::vector<std::uint64_t> ids = std::move(it->second);
  waiters_.erase(it);
  const std::vector<std::byte>& value = data_.at(key);
  for (std::uint64_t id : ids) {
    auto conn = conns_.find(id);
    if (conn == conns_.end() || conn->second.dead) continue;
    conn->second.parked = false;
    conn->second.parkedKey.clear();
    reply(conn->second, Status::ok, value);
    woke_ = true;
  }
}

void TcpStoreServer::Loop::unpark(std::uint64_t id, Connection& c) {
  c.parked = false;
  auto it = waiters_.find(c.parkedKey);
  if (it != waiters_.end()) {
    std::erase(it->second, id);
    if (it->second.empty()) waiters_.erase(it);
  }
  c.parkedKey.clear();
  woke_ = true;
}

TcpStoreServer::TcpStoreServer(const std::string& bindAddr, int port) {
  const ErrorContext ctx{-1, -1, "tcp store listen"};
  SKYRING_CHECK_ARG(port >= 0 && port <= 65535, ctx, "store port ", port, " is outside [0, 65535]");
  std::string error;
  detail::AddrInfoList addrs = detail::resolveTcp(bindAddr, port, /*passive=*/true, error);
  if (!addrs) {
    SKYRING_THROW(TransportError, ctx, "cannot resolve the store address '", bindAddr,
                  "': ", error);
  }
  UniqueFd listenFd;
  for (const addrinfo* a = addrs.get(); a != nullptr && listenFd.get() < 0; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    const int one = 1;
    if (fd.get() < 0) {
      error = "socket: " + detail::errnoText(errno);
    } else if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
      error = "SO_REUSEADDR: " + detail::errnoText(errno);
    } else if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) < 0) {
      error = "bind: " + detail::errnoText(errno);
    } else if (::listen(fd.get(), SOMAXCONN) < 0) {
      error = "listen: " + detail::errnoText(errno);
    } else if (!detail::setNonBlocking(fd.get())) {
      error = "fcntl: " + detail::errnoText(errno);
    } else {
      listenFd = std::move(fd);
    }
  }
  if (listenFd.get() < 0) {
    SKYRING_THROW(TransportError, ctx, "cannot listen on ", bindAddr, ":", port, ": ", error);
  }

  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (::getsockname(listenFd.get(), reinterpret_cast<sockaddr*>(&bound), &len) < 0) {
    SKYRING_THROW(TransportError, ctx, "getsockname: ", detail::errnoText(errno));
  }
  if (bound.ss_family == AF_INET6) {
    port_ = ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
  } else {
    port_ = ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
  }

  int pipeFds[2];
  if (::pipe(pipeFds) < 0) SKYRING_THROW(TransportError, ctx, "pipe: ", detail::errnoText(errno));
  UniqueFd wakeRead(pipeFds[0]);
  UniqueFd wakeWrite(pipeFds[1]);
  if (!detail::setNonBlocking(wakeRead.get()) || !detail::setNonBlocking(wakeWrite.get())) {
    SKYRING_THROW(TransportError, ctx, "fcntl: ", detail::errnoText(errno));
  }
  loop_ = std::make_unique<Loop>(std::move(listenFd), std::move(wakeRead), std::move(wakeWrite));
  thread_ = std::thread([loop = loop_.get()] { loop->run(); });
}

TcpStoreServer::~TcpStoreServer() {
  if (!thread_.joinable()) return;
  loop_->stop();
  try {
    thread_.join();
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

}  // namespace skyring::bootstrap
