// Socket helpers shared by the TCP store's server and client (tcp_store_socket.h).
#include "bootstrap/tcp_store_socket.h"

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

int msUntil(Clock::time_point deadline) {
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<decltype(ms)>(ms, 0, INT_MAX));
}

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
                    " failed: ", errnoText(errno));
    }
  }
}

std::size_t recvSome(int fd, std::span<std::byte> data, Clock::time_point deadline,
                     const ErrorContext& ctx, const std::string& endpoint) {
  for (;;) {
    const ssize_t n = ::recv(fd, data.data(), data.size(), 0);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!waitFor(fd, POLLIN, deadline)) {
        SKYRING_THROW(Timeout, ctx, "no reply from the store at ", endpoint, " in time");
      }
    } else if (errno == ECONNRESET) {
      return 0;  // like an end of stream: the server dropped this connection
    } else if (errno != EINTR) {
      SKYRING_THROW(TransportError, ctx, "receiving from the store at ", endpoint,
                    " failed: ", errnoText(errno));
    }
  }
}

void recvAll(int fd, std::span<std::byte> data, Clock::time_point deadline, const ErrorContext& ctx,
             const std::string& endpoint) {
  while (!data.empty()) {
    const std::size_t n = recvSome(fd, data, deadline, ctx, endpoint);
    if (n == 0) {
      SKYRING_THROW(TransportError, ctx, "the store at ", endpoint,
                    " closed the connection (rank 0, which hosts it, has exited or failed)");
    }
    data = data.subspan(n);
  }
}

}  // namespace detail

}  // namespace skyring::bootstrap
