// Helpers for the TCP store's tests: a raw socket that speaks the protocol (or garbage)
// by hand, a free port, the file-descriptor limit, and this process's resident memory.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bootstrap/store_handshake.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/tcp_store_socket.h"

namespace skyring::bootstrap::testing {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
namespace hs = handshake;

inline const std::string kHost = "127.0.0.1";

inline std::span<const std::byte> bytesOf(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

inline std::string stringOf(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

inline milliseconds since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

inline StoreIdentity job(int worldSize, std::string jobId = "test-job", std::string token = {}) {
  return StoreIdentity{std::move(jobId), worldSize, std::move(token)};
}

// A raw TCP connection to 127.0.0.1:port, for speaking (bad) protocol by hand. Every
// receive gives up after 5 s, so a test that would hang fails instead.
class RawSocket {
 public:
  explicit RawSocket(int port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool ok() const { return ok_; }
  int fd() const { return fd_; }
  bool send(std::span<const std::byte> bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  bool send(const std::vector<std::uint8_t>& bytes) {
    return send(std::as_bytes(std::span(bytes)));
  }
  // Reads exactly n bytes (empty on end of stream, error or the 5 s limit).
  std::vector<std::byte> recvExactly(std::size_t n) {
    std::vector<std::byte> out(n);
    std::size_t got = 0;
    while (got < n) {
      const ssize_t r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0) return {};
      got += static_cast<std::size_t>(r);
    }
    return out;
  }
  // True when the server closed the connection (end of stream or a reset) within 5 s;
  // whatever it sent first (its challenge, a refusal) is read and ignored.
  bool closedByServer() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) continue;
      return n == 0 || (n < 0 && errno == ECONNRESET);
    }
  }
  // Joins as `rank` of `identity` by hand. Returns the server's welcome (verdict ok on
  // success); a welcome with verdict joinFailed and message "no answer" if none came.
  hs::Welcome join(const StoreIdentity& identity, int rank) {
    hs::Welcome welcome;
    welcome.verdict = hs::Verdict::joinFailed;
    welcome.message = "no answer";
    const std::vector<std::byte> challenge = recvExactly(hs::kChallengeBytes);
    std::uint32_t version = 0;
    hs::Nonce serverNonce{};
    if (challenge.empty() ||
        hs::parseChallenge(challenge, version, serverNonce) != hs::Parse::complete) {
      return welcome;
    }
    hs::Hello hello;
    hello.jobId = identity.jobId;
    hello.worldSize = static_cast<std::uint32_t>(identity.worldSize);
    hello.rank = static_cast<std::uint32_t>(rank);
    hello.clientNonce = hs::randomNonce();
    hello.proof = hs::clientProof(hs::deriveKey(identity), serverNonce, hello);
    if (!send(hs::encodeHello(hello))) return welcome;
    std::vector<std::byte> buf;
    std::size_t used = 0;
    for (;;) {
      const hs::Parse parsed = hs::parseWelcome(buf, welcome, used);
      if (parsed == hs::Parse::complete) return welcome;
      if (parsed == hs::Parse::malformed) break;
      std::byte b[256];
      const ssize_t n = ::recv(fd_, b, sizeof b, 0);
      if (n <= 0) break;
      buf.insert(buf.end(), b, b + n);
    }
    welcome.verdict = hs::Verdict::joinFailed;
    welcome.message = "no answer";
    return welcome;
  }
  // A request frame's bytes (tcp_store.h).
  static std::vector<std::byte> request(store_wire::Op op, const std::string& key,
                                        std::span<const std::byte> value) {
    std::vector<std::byte> frame(1 + 4 + key.size() + 4 + value.size());
    frame[0] = static_cast<std::byte>(op);
    detail::putU32(frame.data() + 1, static_cast<std::uint32_t>(key.size()));
    std::memcpy(frame.data() + 5, key.data(), key.size());
    detail::putU32(frame.data() + 5 + key.size(), static_cast<std::uint32_t>(value.size()));
    if (!value.empty()) std::memcpy(frame.data() + 9 + key.size(), value.data(), value.size());
    return frame;
  }
  // Sends a set and reads its response status (-1: none came).
  int set(const std::string& key, std::span<const std::byte> value) {
    if (!send(request(store_wire::Op::set, key, value))) return -1;
    const std::vector<std::byte> header = recvExactly(store_wire::kResponseHeaderBytes);
    if (header.empty()) return -1;
    const std::size_t length = detail::getU32(header.data() + 5);
    if (length > 0 && recvExactly(length).empty()) return -1;
    return std::to_integer<int>(header[0]);
  }

 private:
  int fd_;
  bool ok_ = false;
};

// A port that nothing listens on right now: bound to port 0, read, and released.
inline int unusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Raises this process's soft limit on open files to at least n (up to the hard limit).
// Returns false when the hard limit is lower.
inline bool raiseFileLimit(rlim_t n) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return false;
  if (lim.rlim_cur >= n) return true;
  if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < n) return false;
  lim.rlim_cur = n;
  return ::setrlimit(RLIMIT_NOFILE, &lim) == 0;
}

// This process's resident set (VmRSS), in KiB; -1 if unknown.
inline long residentKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

}  // namespace skyring::bootstrap::testing
