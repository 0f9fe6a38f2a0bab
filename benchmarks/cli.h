// Command lines of the programs in examples/ and benchmarks/: strict parsing of numbers,
// byte sizes, GxC shapes and lists, each checked against a feasible range that the error
// names, and one way for a program to end on bad input or a failure.
//
//   int main(int argc, char** argv) {
//     return skyring::cli::run("wan_bench", kUsage, [&] { ...parse, run...; return 0; });
//   }
//
// run() calls the body and catches what it throws: Help prints the usage to stdout and
// returns 0; UsageError (a bad argument or SKYRING_* setting) prints
// "<program>: error: <message>" and "usage: ..." to stderr and returns 2; any other
// exception (skyring::Error, std::bad_alloc, ...) prints "<program>: error: <message>"
// to stderr and returns 1. Nothing escapes main, so no program dies in std::terminate.
//
// Header-only and stateless: the parsers may run on any thread; run() belongs to main.
#pragma once

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "skyring/config.h"
#include "skyring/error.h"

namespace skyring::cli {

// A bad argument: the program prints it with its usage and exits 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// -h or --help: the program prints its usage to stdout and exits 0.
struct Help {};

template <typename... Args>
[[noreturn]] void fail(const Args&... parts) {
  throw UsageError(skyring::detail::concat(parts...));
}

// 1073741824 -> "1 GiB"; sizes that are not whole KiB, MiB or GiB stay in bytes.
inline std::string formatBytes(std::size_t n) {
  for (auto [unit, name] :
       {std::pair{std::size_t{1} << 30, "GiB"}, std::pair{std::size_t{1} << 20, "MiB"},
        std::pair{std::size_t{1} << 10, "KiB"}}) {
    if (n >= unit && n % unit == 0) return std::to_string(n / unit) + " " + name;
  }
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

// The whole of `text` as an integer in [min, max], else UsageError naming `what`.
inline long long integer(std::string_view what, std::string_view text, long long min,
                         long long max) {
  long long v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < min || v > max) {
    fail(what, ": '", text, "' is not an integer in [", min, ", ", max, "]");
  }
  return v;
}

// The whole of `text` as a finite number in [min, max] (min itself excluded when
// minExclusive), else UsageError.
inline double number(std::string_view what, std::string_view text, double min, double max,
                     bool minExclusive = false) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  const bool aboveMin = minExclusive ? v > min : v >= min;
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v) ||
      !aboveMin || v > max) {
    fail(what, ": '", text, "' is not a number in ", minExclusive ? "(" : "[", min, ", ", max, "]");
  }
  return v;
}

// Bytes: digits with an optional K, M or G suffix (binary: 1K = 1024), in [min, max].
inline std::size_t bytes(std::string_view what, std::string_view text, std::size_t min,
                         std::size_t max) {
  std::size_t unit = 1;
  std::string_view digits = text;
  if (!text.empty()) {
    switch (text.back()) {
      case 'K':
      case 'k':
        unit = std::size_t{1} << 10;
        break;
      case 'M':
      case 'm':
        unit = std::size_t{1} << 20;
        break;
      case 'G':
      case 'g':
        unit = std::size_t{1} << 30;
        break;
      default:
        break;
    }
    if (unit != 1) digits.remove_suffix(1);
  }
  std::size_t v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
      v > max / unit || v * unit < min) {
    fail(what, ": '", text, "' is not a size in [", formatBytes(min), ", ", formatBytes(max),
         "] (digits with an optional K, M or G suffix)");
  }
  return v * unit;
}

// "GxC": two integers, G in [1, maxFirst], C in [1, maxSecond], G * C at most maxProduct.
inline std::pair<int, int> shape(std::string_view what, std::string_view text, int maxFirst,
                                 int maxSecond, int maxProduct) {
  const std::size_t x = text.find('x');
  int g = 0;
  int c = 0;
  const auto whole = [](std::string_view t, int& v) {
    const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    return !t.empty() && ec == std::errc() && end == t.data() + t.size();
  };
  if (x == std::string_view::npos || !whole(text.substr(0, x), g) ||
      !whole(text.substr(x + 1), c) || g < 1 || g > maxFirst || c < 1 || c > maxSecond) {
    fail(what, ": '", text, "' is not GxC with G in [1, ", maxFirst, "] and C in [1, ", maxSecond,
         "], e.g. 2x4");
  }
  if (static_cast<long long>(g) * c > maxProduct) {
    fail(what, ": ", g, "x", c, " is ", static_cast<long long>(g) * c, " ranks, more than ",
         maxProduct);
  }
  return {g, c};
}

// A comma-separated list of non-empty items (at least one).
inline std::vector<std::string> list(std::string_view what, std::string_view text) {
  std::vector<std::string> items;
  std::size_t begin = 0;
  while (true) {
    const std::size_t end = std::min(text.find(',', begin), text.size());
    if (end == begin) fail(what, ": '", text, "' has an empty item");
    items.emplace_back(text.substr(begin, end - begin));
    if (end == text.size()) return items;
    begin = end + 1;
  }
}

// This machine's physical memory in bytes (0 where unknown).
inline std::size_t physicalMemory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page)
                               : 0;
}

// UsageError unless `needed` bytes (what `what` would allocate, computed in long double so
// that no product overflows) fit in half of this machine's memory: a run that asks for
// more would swap or be killed rather than measure anything.
inline void checkFits(std::string_view what, long double needed) {
  const std::size_t memory = physicalMemory();
  if (memory > 0 && needed > static_cast<long double>(memory) / 2) {
    const auto gib = [](long double b) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.1Lf GiB", b / (1ull << 30));
      return std::string(text);
    };
    fail(what, " need ", gib(needed), ", more than half of this machine's ",
         gib(static_cast<long double>(memory)), " of memory");
  }
}

// Reads the SKYRING_* settings once, so that a bad one is a usage error (exit 2) rather
// than a failure half-way through start-up.
inline Config environment() {
  try {
    return Config::fromEnvironment();
  } catch (const InvalidArgument& e) {
    throw UsageError(e.detail());
  }
}

// True for -h and --help.
inline bool isHelp(std::string_view arg) {
  return arg == "-h" || arg == "--help";
}

template <typename Body>
int run(const char* program, const char* usage, Body&& body) noexcept {
  try {
    try {
      return body();
    } catch (const Help&) {
      std::printf("usage: %s\n", usage);
      return 0;
    } catch (const UsageError& e) {
      std::fprintf(stderr, "%s: error: %s\nusage: %s\n", program, e.what(), usage);
      return 2;
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "%s: error: out of memory\n", program);
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: error: %s\n", program, e.what());
      return 1;
    }
  } catch (...) {
    std::fprintf(stderr, "%s: error: unknown failure\n", program);
    return 1;
  }
}

}  // namespace skyring::cli
