// The engine's timeline: a Chrome trace (JSON array of trace events) that chrome://tracing
// and Perfetto load. One lane (thread id) per tensor name, holding its negotiation (from
// submission until every rank had it ready) and its collective; lane 0 holds the engine's
// own work per fused batch (copy in, the collective, copy out), and inside the collective
// its phases (CollectiveObserver: each level, each encode and decode), nested under it.
// Phases on a pipelined call's helper threads get a lane per helper ("collective helper
// k"), where they overlap the engine thread's.
//
// Threads: every call may come from any thread (start and stop from the user's, events
// from the engine thread, phases also from a collective's helper threads); one mutex
// serialises them. Events while stopped cost one relaxed atomic load. Failure: start
// throws InvalidArgument naming a path it cannot open; a write that fails later stops the
// timeline silently (the trace is a diagnostic and never fails training).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "skyring/collective_observer.h"

namespace skyring::engine {

class Timeline final : public CollectiveObserver {
 public:
  using Clock = std::chrono::steady_clock;

  ~Timeline() override { stop(); }

  // Starts writing to path (replaced), stopping a trace already running. rank is the
  // trace's process id.
  void start(const std::string& path, int rank);
  // Ends the JSON array and closes the file. Idempotent.
  void stop() noexcept;
  bool active() const noexcept { return active_.load(std::memory_order_relaxed); }

  // A complete event on the lane of tensor (empty: the engine's lane 0); args is a JSON
  // object body ("\"bytes\":4096") or empty.
  void span(std::string_view tensor, std::string_view name, std::string_view category,
            Clock::time_point begin, Clock::time_point end, std::string_view args = {});
  // A counter event (a track per name in Perfetto): args is a JSON object body of numbers
  // ("\"cross_cloud\":4096").
  void counter(std::string_view name, Clock::time_point at, std::string_view args);
  // A phase of a collective (pass this as CollectiveOptions::observer while active()):
  // a span named after it, of category "level" or "codec", with its level, bytes and, for
  // the codec's, the codec and encoded bytes as args.
  void phase(const CollectivePhase& phase) noexcept override;

 private:
  std::uint32_t laneOf(std::string_view tensor);  // with mutex_ held
  std::uint32_t helperLane(int thread);           // with mutex_ held
  void write(const std::string& event);           // with mutex_ held
  // A complete event on lane, with mutex_ held.
  void spanOn(std::uint32_t lane, std::string_view name, std::string_view category,
              Clock::time_point begin, Clock::time_point end, std::string_view args);

  std::atomic<bool> active_{false};
  std::mutex mutex_;
  std::ofstream out_;  // guarded by mutex_
  bool empty_ = true;  // no event written yet; guarded by mutex_
  int rank_ = 0;
  Clock::time_point origin_;
  std::map<std::string, std::uint32_t, std::less<>> lanes_;  // by tensor
  std::map<int, std::uint32_t> helperLanes_;                 // by CollectivePhase::thread
  std::uint32_t nextLane_ = 1;
};

}  // namespace skyring::engine
