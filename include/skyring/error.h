// The skyring error taxonomy (see docs/errors.md) and the macros that raise it.
//
// Every error carries the rank that raised it, the peer involved (if any) and the
// operation, so a log line from any rank of a job says who failed talking to whom.
// Foreign error codes (UCX, NCCL, CUDA, MPI) are translated into these types at the
// boundary where they appear; no other exception type leaves a skyring call.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace skyring {

struct ErrorContext {
  int rank = -1;  // -1: not known (e.g. before init)
  int peer = -1;  // -1: no single peer involved
  std::string op;
};

enum class ErrorKind : std::uint8_t { invalidArgument, transport, timeout, aborted };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& detail, ErrorContext ctx, const char* file = nullptr,
        int line = 0);
  ErrorKind kind() const noexcept { return kind_; }
  int rank() const noexcept { return ctx_.rank; }
  int peer() const noexcept { return ctx_.peer; }
  const std::string& op() const noexcept { return ctx_.op; }
  // The message without the "[rank, peer, op]" prefix and source location.
  const std::string& detail() const noexcept { return detail_; }

 private:
  ErrorKind kind_;
  ErrorContext ctx_;
  std::string detail_;
};

// A caller passed something that can never work (bad dtype, count, root, config value).
class InvalidArgument : public Error {
 public:
  InvalidArgument(const std::string& d, ErrorContext c = {}, const char* f = nullptr, int l = 0)
      : Error(ErrorKind::invalidArgument, d, std::move(c), f, l) {}
};
// A peer failed, a connection broke, or peers disagreed about a call (size mismatch).
class TransportError : public Error {
 public:
  TransportError(const std::string& d, ErrorContext c = {}, const char* f = nullptr, int l = 0)
      : Error(ErrorKind::transport, d, std::move(c), f, l) {}
};
// No progress within the configured timeout; the message names the rank(s) at fault.
class Timeout : public Error {
 public:
  Timeout(const std::string& d, ErrorContext c = {}, const char* f = nullptr, int l = 0)
      : Error(ErrorKind::timeout, d, std::move(c), f, l) {}
};
// The operation was cancelled: shutdown, or another rank aborted the group.
class Aborted : public Error {
 public:
  Aborted(const std::string& d, ErrorContext c = {}, const char* f = nullptr, int l = 0)
      : Error(ErrorKind::aborted, d, std::move(c), f, l) {}
};

// Raises the exception type matching kind.
[[noreturn]] void throwError(ErrorKind kind, const std::string& detail, ErrorContext ctx);

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace skyring

// SKYRING_THROW(Type, ctx, parts...): throws Type with the parts streamed into one message.
#define SKYRING_THROW(Type, ctx, ...)                                                        \
  throw Type(::skyring::detail::concat(__VA_ARGS__), ::skyring::ErrorContext(ctx), __FILE__, \
             __LINE__)

// SKYRING_CHECK(cond, Type, ctx, parts...): throws Type unless cond holds.
#define SKYRING_CHECK(cond, Type, ctx, ...)                                \
  do {                                                                     \
    if (!(cond)) [[unlikely]] {                                            \
      SKYRING_THROW(Type, ctx, "check `" #cond "` failed: ", __VA_ARGS__); \
    }                                                                      \
  } while (0)

#define SKYRING_CHECK_ARG(cond, ctx, ...) \
  SKYRING_CHECK(cond, ::skyring::InvalidArgument, ctx, __VA_ARGS__)
