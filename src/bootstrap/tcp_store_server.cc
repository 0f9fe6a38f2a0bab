// The TCP store's server: one thread, one poll() loop over the listening socket and every
// connection (the protocol and its limits are described in tcp_store.h).
//
// Each connection has an input buffer (bytes read but not yet a whole message), an
// output buffer (responses not yet written) and at most one parked get. A connection
// starts in the join: the server sends its challenge and waits for the hello; until the
// hello proves the key and claims a free rank, the connection may buffer no more than a
// hello, counts against maxPendingConnections and is dropped at its handshake deadline.
// Joined connections (at most one per rank) are never dropped for room. Requests are
// handled one at a time per connection; while its get is parked, a connection's further
// input is only buffered. Parked gets are listed in waiters_ by key and answered when the
// key is set or added, when their deadline passes, or when the job fails (a duplicate
// claim, a rank gone). poll()'s timeout is the nearest deadline, so nothing spins. All
// sockets are non-blocking: a slow reader only holds up its own connection.
#include "bootstrap/tcp_store_server_loop.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstdint>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <new>

#include "skyring/error.h"

namespace skyring::bootstrap {

using detail::UniqueFd;
using store_wire::Op;
using store_wire::Status;
namespace hs = handshake;

namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
// Out of file descriptors with nobody to drop: stop accepting for a while instead of
// spinning on poll().
constexpr auto kAcceptPause = std::chrono::milliseconds(100);

}  // namespace

TcpStoreServer::Loop::Loop(UniqueFd listenFd, UniqueFd wakeRead, UniqueFd wakeWrite,
                           const StoreIdentity& identity, const StoreServerOptions& options)
    : listen_(std::move(listenFd)),
      wakeRead_(std::move(wakeRead)),
      wakeWrite_(std::move(wakeWrite)),
      jobId_(identity.jobId),
      worldSize_(identity.worldSize),
      key_(hs::deriveKey(identity)),
      options_(options) {}

void TcpStoreServer::Loop::run() noexcept {
  for (;;) {
    try {
      if (!pollOnce()) break;
    } catch (const std::bad_alloc&) {
      shed();  // memory is short: the connections that have not joined go first
    } catch (...) {
      break;
    }
  }
  conns_.clear();
  joinedOpen_.store(0, std::memory_order_release);
  waiters_.clear();
  listen_.reset();
}

void TcpStoreServer::Loop::stop() noexcept {
  const char byte = 1;
  while (::write(wakeWrite_.get(), &byte, 1) < 0 && errno == EINTR) {
  }
}

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
    next = std::min(next, deadlineOf(c));
  }
  int timeoutMs = -1;
  if (next != Clock::time_point::max()) timeoutMs = detail::msUntil(next);
  if (::poll(fds.data(), fds.size(), timeoutMs) < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == ENOMEM) return true;
    return false;  // cannot wait any more: close everything so clients fail, not hang
  }
  if (fds[0].revents != 0) return false;  // stop()

  now = Clock::now();
  if (accepting && fds[1].revents != 0) acceptAll(now);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const short revents = fds[i + 2].revents;
    if (revents == 0) continue;
    auto it = conns_.find(ids[i]);
    if (it == conns_.end() || it->second.dead) continue;  // dropped while accepting
    Connection& c = it->second;
    if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0) readFrom(c);
    if (!c.dead && (revents & POLLOUT) != 0) flush(c);
  }

  for (auto& [id, c] : conns_) {
    if (c.dead) continue;
    if (!c.joined && c.acceptedAt + options_.handshakeTimeout <= now) {
      drop(id, c);  // did not join in time (or did not read its refusal)
    } else if (c.partialSince != Clock::time_point::max() &&
               c.partialSince + options_.requestTimeout <= now) {
      drop(id, c);  // a request begun and never finished: a slow or stuck client
    } else if (c.parked && c.parkedDeadline <= now) {
      // Expired waits are answered "timeout"; the client raises Timeout naming the key.
      unpark(id, c);
      reply(c, Status::timeout, -1, {});
    }
  }

  do {
    woke_ = false;
    for (auto& [id, c] : conns_)
      processInput(id, c, now);
  } while (woke_);

  for (auto it = conns_.begin(); it != conns_.end();) {
    Connection& c = it->second;
    if (!c.dead) {
      ++it;
      continue;
    }
    if (c.parked) unpark(it->first, c);
    pending_.erase(it->first);
    const int rank = c.joined && !c.left ? c.rank : -1;
    if (c.joined) joinedOpen_.fetch_sub(1, std::memory_order_release);
    it = conns_.erase(it);
    if (rank >= 0) {
      rankGone(rank, ::skyring::detail::concat("rank ", rank,
                                               "'s connection to the store closed before the job "
                                               "was done (its process exited or failed)"));
    }
  }
  return true;
}

TcpStoreServer::Loop::Clock::time_point TcpStoreServer::Loop::deadlineOf(
    const Connection& c) const {
  auto t = c.partialSince == Clock::time_point::max() ? c.partialSince
                                                      : c.partialSince + options_.requestTimeout;
  if (!c.joined) t = std::min(t, c.acceptedAt + options_.handshakeTimeout);
  if (c.parked) t = std::min(t, c.parkedDeadline);
  return t;
}

void TcpStoreServer::Loop::acceptAll(Clock::time_point now) {
  for (;;) {
    const int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: one that has not joined makes room, else wait a while.
        if (!pending_.empty()) {
          const std::uint64_t oldest = *pending_.begin();
          drop(oldest, conns_.at(oldest));
          continue;
        }
        acceptPausedUntil_ = now + kAcceptPause;
      }
      return;  // EAGAIN: accepted all pending; anything else: try again next round
    }
    UniqueFd owned(fd);
    detail::setNoDelay(fd);
    try {
      const hs::Nonce nonce = hs::randomNonce();
      const std::uint64_t id = nextId_++;
      Connection& c = conns_[id];
      c.fd = std::move(owned);
      c.acceptedAt = now;
      c.serverNonce = nonce;
      pending_.insert(id);
      const std::vector<std::byte> challenge = hs::encodeChallenge(c.serverNonce);
      c.out.assign(challenge.begin(), challenge.end());
      flush(c);
      // At the cap, the oldest connection that has not joined makes room: an idle crowd
      // cannot keep the job's ranks out, as each newcomer joins within one round trip.
      while (pending_.size() > options_.maxPendingConnections) {
        const std::uint64_t oldest = *pending_.begin();
        drop(oldest, conns_.at(oldest));
      }
    } catch (const std::bad_alloc&) {
      shed();
    } catch (const Error&) {  // NOLINT(bugprone-empty-catch): no randomness: refuse this one
    }
  }
}

void TcpStoreServer::Loop::readFrom(Connection& c) {
  // Until it has joined a connection may hold one hello; a refused one, nothing.
  const std::size_t limit = c.closing ? 0 : c.joined ? maxBufferedInput() : hs::kMaxHelloBytes + 1;
  for (;;) {
    if (c.in.size() > limit) {
      c.dead = true;
      return;
    }
    const std::size_t room = std::min(kReadChunk, limit + 1 - c.in.size());
    const std::size_t old = c.in.size();
    try {
      c.in.resize(old + room);
    } catch (const std::bad_alloc&) {
      c.dead = true;
      return;
    }
    const ssize_t n = ::recv(c.fd.get(), c.in.data() + old, room, 0);
    c.in.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
    if (c.closing) c.in.clear();
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
  if (c.closing) c.dead = true;   // a refusal, delivered
  if (wasHeldBack) woke_ = true;  // its buffered input may be served now
}

void TcpStoreServer::Loop::drop(std::uint64_t id, Connection& c) noexcept {
  c.fd.reset();  // the descriptor is free at once; the entry goes at the end of the round
  c.dead = true;
  pending_.erase(id);
}

void TcpStoreServer::Loop::shed() noexcept {
  for (std::uint64_t id : pending_) {
    auto it = conns_.find(id);
    if (it != conns_.end()) {
      it->second.fd.reset();
      it->second.dead = true;
    }
  }
  pending_.clear();
}

// Parses and handles whole messages until the connection waits (parked, backpressure,
// incomplete message). Anything malformed drops the connection.
void TcpStoreServer::Loop::processInput(std::uint64_t id, Connection& c, Clock::time_point now) {
  namespace w = store_wire;
  if (c.dead || c.closing) return;
  if (!c.joined) {
    hs::Hello hello;
    std::size_t used = 0;
    const hs::Parse parsed = hs::parseHello(c.in, hello, used);
    if (parsed == hs::Parse::malformed) c.dead = true;
    if (parsed != hs::Parse::complete) return;
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(used));
    admit(id, c, hello);
    if (!c.joined) return;
  }
  std::size_t pos = 0;
  bool incomplete = false;
  try {
    while (!c.dead && !c.parked && c.outPending() < kOutputHighWater) {
      const std::size_t avail = c.in.size() - pos;
      const std::byte* p = c.in.data() + pos;
      incomplete = true;
      if (avail < w::kRequestHeaderBytes) break;
      const auto op = static_cast<Op>(p[0]);
      if (op != Op::set && op != Op::get && op != Op::add && op != Op::leave) {
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
      const bool badLength = op == Op::get || op == Op::add ? valueLen != 8
                                                            : valueLen > w::kMaxValueBytes ||
                                                                  (op == Op::leave && valueLen < 4);
      if (badLength) {
        c.dead = true;
        break;
      }
      const std::size_t total = w::kRequestHeaderBytes + keyLen + 4 + valueLen;
      if (avail < total) break;
      incomplete = false;
      const auto* keyBytes = reinterpret_cast<const char*>(p + w::kRequestHeaderBytes);
      handle(id, c, op, std::string(keyBytes, keyLen),
             std::span(p + w::kRequestHeaderBytes + keyLen + 4, valueLen));
      pos += total;
    }
  } catch (const std::bad_alloc&) {
    c.dead = true;  // this request could not be served: its rank fails, the store lives
  }
  if (c.dead) return;
  c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(pos));
  // The clock of a slow request starts with its first byte.
  if (!incomplete || c.in.empty()) {
    c.partialSince = Clock::time_point::max();
  } else if (pos > 0 || c.partialSince == Clock::time_point::max()) {
    c.partialSince = now;
  }
}

void TcpStoreServer::Loop::reply(Connection& c, Status status, int rank,
                                 std::span<const std::byte> value) {
  std::byte header[store_wire::kResponseHeaderBytes];
  header[0] = static_cast<std::byte>(status);
  detail::putU32(header + 1, static_cast<std::uint32_t>(rank));
  detail::putU32(header + 5, static_cast<std::uint32_t>(value.size()));
  c.out.insert(c.out.end(), std::begin(header), std::end(header));
  c.out.insert(c.out.end(), value.begin(), value.end());
  flush(c);
}

void TcpStoreServer::Loop::replyText(Connection& c, Status status, int rank,
                                     const std::string& text) {
  reply(c, status, rank, std::as_bytes(std::span(text.data(), text.size())));
}

void TcpStoreServer::Loop::wake(const std::string& key) {
  auto it = waiters_.find(key);
  if (it == waiters_.end()) return;
  const std::vector<std::uint64_t> ids = std::move(it->second);
  waiters_.erase(it);
  const Entry& entry = data_.at(key);
  for (std::uint64_t id : ids) {
    auto conn = conns_.find(id);
    if (conn == conns_.end() || conn->second.dead) continue;
    conn->second.parked = false;
    conn->second.parkedKey.clear();
    reply(conn->second, Status::ok, entry.owner, entry.value);
    woke_ = true;
  }
}

void TcpStoreServer::Loop::failParked(int culprit, const std::string& reason) {
  const auto waiters = std::move(waiters_);
  waiters_.clear();
  for (const auto& [key, ids] : waiters) {
    for (std::uint64_t id : ids) {
      auto conn = conns_.find(id);
      if (conn == conns_.end() || conn->second.dead) continue;
      conn->second.parked = false;
      conn->second.parkedKey.clear();
      replyText(conn->second, Status::failed, culprit, reason);
      woke_ = true;
    }
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

namespace {

// Binds and listens on the first of addrs that works. Returns an invalid fd with error set
// when none does; notLocal tells whether every failure was "not an address of this host".
UniqueFd listenOn(const addrinfo* addrs, std::string& error, bool& notLocal) {
  notLocal = addrs != nullptr;
  for (const addrinfo* a = addrs; a != nullptr; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    const int one = 1;
    int err = 0;
    if (fd.get() < 0) {
      err = errno;
      error = "socket: " + detail::errnoText(err);
    } else if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
      err = errno;
      error = "SO_REUSEADDR: " + detail::errnoText(err);
    } else if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) < 0) {
      err = errno;
      error = "bind: " + detail::errnoText(err);
    } else if (::listen(fd.get(), SOMAXCONN) < 0) {
      err = errno;
      error = "listen: " + detail::errnoText(err);
    } else if (!detail::setNonBlocking(fd.get())) {
      err = errno;
      error = "fcntl: " + detail::errnoText(err);
    } else {
      return fd;
    }
    notLocal = notLocal && err == EADDRNOTAVAIL;
  }
  return UniqueFd();
}

std::string numericAddresses(const addrinfo* addrs) {
  std::string out;
  for (const addrinfo* a = addrs; a != nullptr; a = a->ai_next) {
    char host[NI_MAXHOST] = {};
    if (::getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST) ==
        0) {
      out += (out.empty() ? "" : ", ") + std::string(host);
    }
  }
  return out;
}

}  // namespace

TcpStoreServer::TcpStoreServer(const std::string& bindAddr, int port, const StoreIdentity& identity,
                               const StoreServerOptions& options) {
  const ErrorContext ctx{0, -1, "tcp store listen"};
  SKYRING_CHECK_ARG(port >= 0 && port <= 65535, ctx, "store port ", port, " is outside [0, 65535]");
  SKYRING_CHECK_ARG(identity.worldSize >= 1, ctx, "a store for a world of ", identity.worldSize,
                    " ranks");
  SKYRING_CHECK_ARG(identity.jobId.size() <= store_wire::kMaxJobIdBytes, ctx, "a job id of ",
                    identity.jobId.size(), " bytes is longer than store_wire::kMaxJobIdBytes = ",
                    store_wire::kMaxJobIdBytes);
  std::string error;
  detail::AddrInfoList addrs = detail::resolveTcp(bindAddr, port, /*passive=*/true, error);
  if (!addrs) {
    SKYRING_THROW(TransportError, ctx, "cannot resolve the store address '", bindAddr,
                  "': ", error);
  }
  bool notLocal = false;
  UniqueFd listenFd = listenOn(addrs.get(), error, notLocal);
  if (listenFd.get() < 0 && notLocal) {
    SKYRING_THROW(InvalidArgument, ctx, "'", bindAddr, "' (", numericAddresses(addrs.get()),
                  ") is not an address of this host, so the store cannot listen there");
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
  loop_ = std::make_unique<Loop>(std::move(listenFd), std::move(wakeRead), std::move(wakeWrite),
                                 identity, options);
  thread_ = std::thread([loop = loop_.get()] { loop->run(); });
}

bool TcpStoreServer::lingerUntilAlone(std::chrono::milliseconds bound) const noexcept {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (loop_->joinedOpen() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
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
