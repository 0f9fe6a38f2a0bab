#include "engine/engine_metrics.h"

namespace skyring::engine {

EngineMetrics::EngineMetrics(std::shared_ptr<metrics::Registry> registry,
                             std::size_t fusionThreshold)
    : registry_(std::move(registry)), threshold_(static_cast<double>(fusionThreshold)) {
  if (!registry_) return;
  metrics::Registry& r = *registry_;
  queue_ = &r.gauge("skyring_engine_queue_depth",
                    "Tensors submitted to the engine on this rank and not yet completed.")
                .with({});
  stalls_ = &r.counter("skyring_engine_stalls_total",
                       "Names the stall inspector found submitted on some ranks only, counted "
                       "at each warning (SKYRING_STALL_WARNING_S).")
                 .with({});
  failedHandles_ = &r.counter("skyring_engine_failed_handles_total",
                              "Engine handles completed with an error on this rank.")
                        .with({});
  failures_ = &r.counter("skyring_engine_failures_total",
                         "Times the engine stopped on an error (a failed collective, a stall "
                         "past SKYRING_STALL_SHUTDOWN_S).")
                   .with({});
  fill_ = &r.histogram("skyring_fusion_fill_ratio",
                       "Bytes of each batch the engine ran (fused or alone) over "
                       "SKYRING_FUSION_THRESHOLD.",
                       {}, {0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1})
               .with({});
  collectives_ = &r.histogram("skyring_collective_seconds",
                              "Latency of the engine's collectives, by operation and by the "
                              "allreduce algorithm that ran.",
                              {"op", "algorithm"}, metrics::latencyBuckets());
  phases_ = &r.histogram("skyring_phase_seconds",
                         "Latency of each phase of the engine's allreduces, by level (node, "
                         "cloud, cross-cloud, world) and phase (a level's step, encode, decode).",
                         {"level", "phase"}, metrics::latencyBuckets());
  codecIn_ = &r.counter("skyring_codec_input_bytes_total",
                        "Bytes (full precision) the codec encoded, by codec spec.", {"codec"});
  codecOut_ = &r.counter("skyring_codec_encoded_bytes_total",
                         "Bytes the codec's encodings took, by codec spec.", {"codec"});
  r.gauge("skyring_fusion_threshold_bytes", "SKYRING_FUSION_THRESHOLD of the engine.")
      .with({})
      .set(threshold_);
}

void EngineMetrics::queueDepth(std::size_t pending) noexcept {
  if (queue_ != nullptr) queue_->set(static_cast<double>(pending));
}

void EngineMetrics::stalls(std::size_t names) noexcept {
  if (stalls_ != nullptr) stalls_->add(static_cast<double>(names));
}

void EngineMetrics::failedHandle() noexcept {
  if (failedHandles_ != nullptr) failedHandles_->add();
}

void EngineMetrics::engineFailed() noexcept {
  if (failures_ != nullptr) failures_->add();
}

void EngineMetrics::batch(std::size_t bytes) noexcept {
  if (fill_ != nullptr && threshold_ > 0) fill_->observe(static_cast<double>(bytes) / threshold_);
}

namespace {

// The series of key in cache, looked up in family once. With the caller's mutex held.
template <typename Map, typename Make>
auto& cached(Map& cache, const std::string& key, Make make) {
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make()).first;
  return it->second;
}

}  // namespace

void EngineMetrics::collective(std::string_view op, std::string_view algorithm,
                               double seconds) noexcept {
  if (collectives_ == nullptr) return;
  try {
    std::string key(op);
    key += '\0';
    key += algorithm;
    metrics::Histogram* h = nullptr;
    {
      std::lock_guard lock(mutex_);
      h = cached(collectiveSeries_, key, [&] {
        return &collectives_->with({std::string(op), std::string(algorithm)});
      });
    }
    h->observe(seconds);
  } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory; a metric is not worth a failure
  }
}

void EngineMetrics::phase(const CollectivePhase& p) noexcept {
  if (phases_ == nullptr) return;
  try {
    const double seconds = std::chrono::duration<double>(p.end - p.begin).count();
    std::string key(p.level);
    key += '\0';
    key += p.name;
    metrics::Histogram* h = nullptr;
    std::pair<metrics::Counter*, metrics::Counter*> codec{nullptr, nullptr};
    {
      std::lock_guard lock(mutex_);
      h = cached(phaseSeries_, key, [&] {
        return &phases_->with({std::string(p.level), std::string(p.name)});
      });
      if (p.name == "encode" && !p.codec.empty()) {
        codec = cached(codecSeries_, std::string(p.codec), [&] {
          const std::vector<std::string> labels{std::string(p.codec)};
          return std::pair{&codecIn_->with(labels), &codecOut_->with(labels)};
        });
      }
    }
    h->observe(seconds);
    if (codec.first != nullptr) {
      codec.first->add(static_cast<double>(p.bytes));
      codec.second->add(static_cast<double>(p.encoded));
    }
  } catch (...) {  // NOLINT(bugprone-empty-catch): as above
  }
}

void CallMeter::phase(const CollectivePhase& p) noexcept {
  unsigned bit = p.level == "world"           ? kWorld
                 : p.level != "node"          ? kNetwork
                 : p.name == "node allreduce" ? kNodeAllreduce
                                              : kNodeLevel;
  seen_.fetch_or(bit, std::memory_order_relaxed);
  metrics_.phase(p);
  if (next_ != nullptr) next_->phase(p);
}

std::string_view CallMeter::algorithm() const noexcept {
  const unsigned seen = seen_.load(std::memory_order_relaxed);
  if ((seen & kWorld) != 0) return "powersgd";
  if ((seen & kNodeLevel) != 0) return "node_level";
  if ((seen & kNetwork) != 0) return "hierarchical";
  if ((seen & kNodeAllreduce) != 0) return "shared_memory";
  return "ring";
}

void CallMeter::done(std::string_view op) noexcept {
  if (!metrics_.enabled()) return;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin_).count();
  metrics_.collective(op, op == "allreduce" ? algorithm() : "default", seconds);
}

}  // namespace skyring::engine
