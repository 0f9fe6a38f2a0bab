// Socket and byte-order helpers shared by the TCP store's server and client (internal).
#pragma once

#include <netdb.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace skyring {
struct ErrorContext;
}

namespace skyring::bootstrap::detail {

using Clock = std::chrono::steady_clock;

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const noexcept { freeaddrinfo(ai); }
};
using AddrInfoList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// getaddrinfo for a TCP socket. Returns null and sets error on failure. passive: for
// bind (an empty host means every interface).
AddrInfoList resolveTcp(const std::string& host, int port, bool passive, std::string& error);

// "strerror(err) (errno err)", thread-safe.
std::string errnoText(int err);

// Marks fd non-blocking and close-on-exec. Returns false with errno set on failure.
bool setNonBlocking(int fd) noexcept;
// Disables Nagle's algorithm (requests are small and latency-bound); best effort.
void setNoDelay(int fd) noexcept;

// Milliseconds left until deadline, for poll(), clamped to [0, INT_MAX].
int msUntil(Clock::time_point deadline);
// Waits for events on fd until deadline. Returns false when the deadline passed first.
bool waitFor(int fd, short events, Clock::time_point deadline);
// Blocking-style I/O on a non-blocking socket, bounded by deadline: Timeout when it
// passes, TransportError on a socket error, both naming the store's endpoint.
void sendAll(int fd, std::span<const std::byte> data, Clock::time_point deadline,
             const ErrorContext& ctx, const std::string& endpoint);
// Reads what is there (at least one byte); 0 when the peer closed or reset the stream.
std::size_t recvSome(int fd, std::span<std::byte> data, Clock::time_point deadline,
                     const ErrorContext& ctx, const std::string& endpoint);
// Reads exactly data.size() bytes; an end of stream is a TransportError.
void recvAll(int fd, std::span<std::byte> data, Clock::time_point deadline, const ErrorContext& ctx,
             const std::string& endpoint);

inline void putU32(std::byte* p, std::uint32_t v) noexcept {
  for (int i = 3; i >= 0; --i, v >>= 8)
    p[i] = static_cast<std::byte>(v & 0xffU);
}
inline void putU64(std::byte* p, std::uint64_t v) noexcept {
  for (int i = 7; i >= 0; --i, v >>= 8)
    p[i] = static_cast<std::byte>(v & 0xffU);
}
inline std::uint32_t getU32(const std::byte* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}
inline std::uint64_t getU64(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

}  // namespace skyring::bootstrap::detail
