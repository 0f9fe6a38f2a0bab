// Rank-prefixed logging. A Logger is a small value owned by whoever owns the rank's
// state (the Communicator, later the Runtime); there is no global logger.
//
// Thread-safety: log() may be called from any thread; each line is written whole.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

namespace skyring {

enum class LogLevel : std::uint8_t { error, warn, info, debug, trace };

std::string_view logLevelName(LogLevel level) noexcept;
// Parses "error", "warn", "info", "debug", "trace"; throws InvalidArgument otherwise.
LogLevel parseLogLevel(std::string_view name);

class Logger {
 public:
  explicit Logger(LogLevel level = LogLevel::warn, int rank = -1) : level_(level), rank_(rank) {}
  bool enabled(LogLevel level) const noexcept { return level <= level_; }
  LogLevel level() const noexcept { return level_; }
  int rank() const noexcept { return rank_; }
  Logger withRank(int rank) const noexcept { return Logger(level_, rank); }
  // Writes "[skyring r<rank> <LEVEL>] message" to stderr.
  void log(LogLevel level, std::string_view message) const;

 private:
  LogLevel level_;
  int rank_;
};

}  // namespace skyring

// SKYRING_LOG(logger, level, parts...): formats only when the level is enabled.
#define SKYRING_LOG(logger, lvl, ...)                                                 \
  do {                                                                                \
    if ((logger).enabled(::skyring::LogLevel::lvl)) {                                 \
      (logger).log(::skyring::LogLevel::lvl, ::skyring::detail::concat(__VA_ARGS__)); \
    }                                                                                 \
  } while (0)
