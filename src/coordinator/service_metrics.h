// The coordinator service's Prometheus series (internal; docs/coordinator.md lists them):
// a registry the service records into from its loop's thread and that the /metrics
// server (src/runtime/metrics_server.h) renders from its own. Recording is relaxed atomics
// (metrics.h), so the two threads share nothing else.
#pragma once

#include <memory>

#include "coordinator/aggregator.h"
#include "skyring/metrics.h"

namespace skyring::coordinator {

class ServiceMetrics {
 public:
  ServiceMetrics();
  std::shared_ptr<const metrics::Registry> registry() const { return registry_; }

  // Mirrors the aggregator's counts (monotonic) and the open round, after every event.
  void publish(const AggregatorStats& stats, std::uint64_t openRound) noexcept;
  void roundClosed(double seconds) noexcept { roundSeconds_.observe(seconds); }
  void bytesSent(std::size_t n) noexcept { bytesOut_.add(static_cast<double>(n)); }
  void connections(std::size_t open) noexcept { connections_.set(static_cast<double>(open)); }
  void refused() noexcept { refusals_.add(1); }

 private:
  std::shared_ptr<metrics::Registry> registry_;
  metrics::Counter &rounds_, &counted_, &carried_, &late_, &duplicate_, &aborted_;
  metrics::Counter &quorumMisses_, &bytesIn_, &bytesOut_, &refusals_;
  metrics::Gauge &openRound_, &connections_;
  metrics::Histogram& roundSeconds_;
};

}  // namespace skyring::coordinator
