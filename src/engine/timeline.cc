#include "engine/timeline.h"

#include <cstdint>
#include <cstdio>

#include "skyring/error.h"

namespace skyring::engine {

namespace {

// s as the body of a JSON string.
std::string escaped(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

void Timeline::start(const std::string& path, int rank) {
  stop();
  std::lock_guard lock(mutex_);
  out_.open(path, std::ios::out | std::ios::trunc);
  if (!out_.is_open()) {
    SKYRING_THROW(InvalidArgument, (ErrorContext{rank, -1, "timeline"}), "cannot write '", path,
                  "'");
  }
  rank_ = rank;
  origin_ = Clock::now();
  lanes_.clear();
  helperLanes_.clear();
  nextLane_ = 1;
  empty_ = true;
  out_ << "[\n";
  write("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + std::to_string(rank) +
        ",\"args\":{\"name\":\"rank " + std::to_string(rank) + "\"}}");
  write("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + std::to_string(rank) +
        ",\"tid\":0,\"args\":{\"name\":\"engine\"}}");
  active_.store(true, std::memory_order_relaxed);
}

void Timeline::stop() noexcept {
  std::lock_guard lock(mutex_);
  if (!out_.is_open()) return;
  active_.store(false, std::memory_order_relaxed);
  out_ << "\n]\n";
  out_.close();
}

std::uint32_t Timeline::laneOf(std::string_view tensor) {
  if (tensor.empty()) return 0;
  auto it = lanes_.find(tensor);
  if (it != lanes_.end()) return it->second;
  const std::uint32_t lane = nextLane_++;
  lanes_.emplace(std::string(tensor), lane);
  write("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + std::to_string(rank_) +
        ",\"tid\":" + std::to_string(lane) + ",\"args\":{\"name\":\"" + escaped(tensor) + "\"}}");
  return lane;
}

std::uint32_t Timeline::helperLane(int thread) {
  if (thread <= 0) return 0;  // the engine thread's phases nest in its collective's span
  auto it = helperLanes_.find(thread);
  if (it != helperLanes_.end()) return it->second;
  const std::uint32_t lane = nextLane_++;
  helperLanes_.emplace(thread, lane);
  write("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + std::to_string(rank_) +
        ",\"tid\":" + std::to_string(lane) + ",\"args\":{\"name\":\"collective helper " +
        std::to_string(thread) + "\"}}");
  return lane;
}

void Timeline::write(const std::string& event) {
  if (!empty_) out_ << ",\n";
  empty_ = false;
  out_ << event;
  if (!out_) {
    active_.store(false, std::memory_order_relaxed);
    out_.close();
  }
}

void Timeline::span(std::string_view tensor, std::string_view name, std::string_view category,
                    Clock::time_point begin, Clock::time_point end, std::string_view args) {
  if (!active()) return;
  std::lock_guard lock(mutex_);
  if (!out_.is_open()) return;
  spanOn(laneOf(tensor), name, category, begin, end, args);
}

void Timeline::spanOn(std::uint32_t lane, std::string_view name, std::string_view category,
                      Clock::time_point begin, Clock::time_point end, std::string_view args) {
  using std::chrono::duration_cast;
  using std::chrono::microseconds;
  // Both ends rounded alike, so that a span inside another stays inside it (viewers nest
  // spans of one lane by their times).
  const auto ts = duration_cast<microseconds>(begin - origin_).count();
  const auto dur = duration_cast<microseconds>(end - origin_).count() - ts;
  std::string e = "{\"name\":\"" + escaped(name) + "\",\"cat\":\"" + escaped(category) +
                  "\",\"ph\":\"X\",\"pid\":" + std::to_string(rank_) +
                  ",\"tid\":" + std::to_string(lane) + ",\"ts\":" + std::to_string(ts) +
                  ",\"dur\":" + std::to_string(dur);
  if (!args.empty()) e += ",\"args\":{" + std::string(args) + "}";
  write(e + "}");
}

void Timeline::counter(std::string_view name, Clock::time_point at, std::string_view args) {
  if (!active()) return;
  std::lock_guard lock(mutex_);
  if (!out_.is_open()) return;
  const auto ts = std::chrono::duration_cast<std::chrono::microseconds>(at - origin_).count();
  write("{\"name\":\"" + escaped(name) + "\",\"ph\":\"C\",\"pid\":" + std::to_string(rank_) +
        ",\"ts\":" + std::to_string(ts) + ",\"args\":{" + std::string(args) + "}}");
}

void Timeline::phase(const CollectivePhase& phase) noexcept {
  if (!active()) return;
  try {
    const bool codec = phase.name == "encode" || phase.name == "decode";
    std::string args =
        "\"level\":\"" + escaped(phase.level) + "\",\"bytes\":" + std::to_string(phase.bytes);
    if (codec) {
      args += ",\"codec\":\"" + escaped(phase.codec) +
              "\",\"encoded\":" + std::to_string(phase.encoded);
    }
    std::lock_guard lock(mutex_);
    if (!out_.is_open()) return;
    spanOn(helperLane(phase.thread), phase.name, codec ? "codec" : "level", phase.begin, phase.end,
           args);
  } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory; the trace loses the event
  }
}

}  // namespace skyring::engine
