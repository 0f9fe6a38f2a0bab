// The engine's live metrics (docs/observability.md): queue depth, stalls, failed handles,
// fusion fill, and each collective's latency by algorithm plus its phases' by level, and
// the codecs' bytes in and out. Recorded into the registry EngineOptions::metrics gives
// (the Runtime's, which its /metrics endpoint renders); without one every call is a no-op.
//
// Threads: queueDepth from any thread (submission and the engine thread, under the
// engine's mutex); the rest from the engine thread, except CallMeter::phase, which a
// pipelined collective also calls on its helper threads. Recording a value is a relaxed
// atomic; a phase also looks its series up under a mutex of this object (a handful of
// phases per collective, never per byte). Failure: nothing here throws after construction.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "skyring/collective_observer.h"
#include "skyring/metrics.h"

namespace skyring::engine {

class EngineMetrics {
 public:
  // registry null: records nothing. fusionThreshold: SKYRING_FUSION_THRESHOLD, the
  // denominator of the fusion fill.
  EngineMetrics(std::shared_ptr<metrics::Registry> registry, std::size_t fusionThreshold);
  bool enabled() const noexcept { return registry_ != nullptr; }

  void queueDepth(std::size_t pending) noexcept;
  void stalls(std::size_t names) noexcept;
  void failedHandle() noexcept;
  void engineFailed() noexcept;
  // One batch of the fusion plan (allreduce or broadcast): its bytes against the threshold.
  void batch(std::size_t bytes) noexcept;
  // One collective of the engine: op ("allreduce", "broadcast", ...) and the algorithm
  // that ran it, as CallMeter names it.
  void collective(std::string_view op, std::string_view algorithm, double seconds) noexcept;
  // One phase of a collective (CallMeter forwards them).
  void phase(const CollectivePhase& p) noexcept;

 private:
  std::shared_ptr<metrics::Registry> registry_;
  double threshold_;
  metrics::Gauge* queue_ = nullptr;
  metrics::Counter* stalls_ = nullptr;
  metrics::Counter* failedHandles_ = nullptr;
  metrics::Counter* failures_ = nullptr;
  metrics::Histogram* fill_ = nullptr;
  metrics::Family<metrics::Histogram>* collectives_ = nullptr;
  metrics::Family<metrics::Histogram>* phases_ = nullptr;
  metrics::Family<metrics::Counter>* codecIn_ = nullptr;
  metrics::Family<metrics::Counter>* codecOut_ = nullptr;
  std::mutex mutex_;
  // Series already looked up, by "op\0algorithm", "level\0phase" and codec.
  std::map<std::string, metrics::Histogram*, std::less<>> collectiveSeries_;
  std::map<std::string, metrics::Histogram*, std::less<>> phaseSeries_;
  std::map<std::string, std::pair<metrics::Counter*, metrics::Counter*>, std::less<>> codecSeries_;
};

// Watches one collective call: forwards each phase to the metrics and to next (the
// timeline while it runs), and names the algorithm that ran from the levels it saw.
// Pass observer() as CollectiveOptions::observer.
class CallMeter final : public CollectiveObserver {
 public:
  CallMeter(EngineMetrics& metrics, CollectiveObserver* next) noexcept
      : metrics_(metrics), next_(next), begin_(std::chrono::steady_clock::now()) {}
  CollectiveObserver* observer() noexcept { return metrics_.enabled() ? this : next_; }
  void phase(const CollectivePhase& p) noexcept override;
  // The call ended well: records its latency since construction under op.
  void done(std::string_view op) noexcept;
  // "hierarchical" (cloud or cross-cloud levels), "node_level" (node reduce-scatter and
  // allgather around them), "shared_memory" (one node allreduce), "powersgd" (a fused
  // buffer's PowerSGD), or "ring" (no phase: the flat ring).
  std::string_view algorithm() const noexcept;

 private:
  enum : unsigned { kNodeAllreduce = 1, kNodeLevel = 2, kNetwork = 4, kWorld = 8 };
  EngineMetrics& metrics_;
  CollectiveObserver* next_;
  std::chrono::steady_clock::time_point begin_;
  std::atomic<unsigned> seen_{0};
};

}  // namespace skyring::engine
