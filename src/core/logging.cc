#include "skyring/logging.h"

#include <cstdio>
#include <string>

#include "skyring/error.h"

namespace skyring {

std::string_view logLevelName(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::error:
      return "error";
    case LogLevel::warn:
      return "warn";
    case LogLevel::info:
      return "info";
    case LogLevel::debug:
      return "debug";
    case LogLevel::trace:
      return "trace";
  }
  return "?";
}

LogLevel parseLogLevel(std::string_view name) {
  for (LogLevel l :
       {LogLevel::error, LogLevel::warn, LogLevel::info, LogLevel::debug, LogLevel::trace}) {
    if (logLevelName(l) == name) return l;
  }
  SKYRING_THROW(InvalidArgument, {}, "unknown log level '", name,
                "' (expected error, warn, info, debug or trace)");
}

void Logger::log(LogLevel level, std::string_view message) const {
  std::string line = "[skyring";
  if (rank_ >= 0) line += " r" + std::to_string(rank_);
  line += " ";
  line += logLevelName(level);
  line += "] ";
  line += message;
  line += '\n';
  // One fwrite per line: stdio locks the stream, so lines from threads do not interleave.
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace skyring
