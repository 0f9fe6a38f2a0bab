// Live metrics: counters, gauges and histograms that the engine, the collectives' observer
// and the runtime record into, rendered in Prometheus' text exposition format (0.0.4) for
// the /metrics endpoint (SKYRING_METRICS_PORT; docs/observability.md lists every series).
//
//   auto& sent = registry.counter("skyring_widgets_total", "Widgets made.", {"kind"});
//   metrics::Counter& big = sent.with({"big"});  // look up once, keep the reference
//   big.add(1);                                  // hot path: one relaxed atomic add
//
// A family is a metric name with its help text, type and label names; a series is one set
// of label values. Every series also carries the registry's constant labels (rank, job_id),
// written first. Series and families are never removed: references stay valid as long as
// the registry lives.
//
// Threads: every call may come from any thread. Recording (add, set, observe) is lock-free
// (relaxed atomics: a scrape sees each value as of some recent moment; a histogram's
// buckets, sum and count are not read atomically together, which Prometheus tolerates).
// Creating a family or looking up a series takes the registry's mutex: do it once, not
// per call. render() takes the same mutex and runs the collect hooks.
//
// No I/O here: the HTTP server is the runtime's (src/runtime/metrics_server.h).
//
// Failure: asking for a family under a name already used with another type, other labels
// or invalid characters, or a series with the wrong number of label values, throws
// InvalidArgument. Recording never throws.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace skyring::metrics {

class Counter {
 public:
  // v >= 0; a negative or NaN v is ignored (a counter only goes up).
  void add(double v = 1) noexcept {
    if (v > 0) value_.fetch_add(v, std::memory_order_relaxed);
  }
  // Mirrors a monotonic source read at scrape time (a collect hook): sets the value, but
  // never lowers it.
  void advanceTo(double v) noexcept;
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void add(double v) noexcept { value_.fetch_add(v, std::memory_order_relaxed); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // bounds: the buckets' upper bounds, strictly increasing; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void observe(double v) noexcept;
  const std::vector<double>& bounds() const noexcept { return bounds_; }
  // Cumulative count of bucket i (i == bounds().size(): +Inf, the total count).
  std::uint64_t cumulative(std::size_t i) const noexcept;
  std::uint64_t count() const noexcept { return cumulative(bounds_.size()); }
  double sum() const noexcept { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // per bucket, not cumulative
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds, 50 us to 60 s: a node allreduce to a stalled WAN hop.
const std::vector<double>& latencyBuckets();

enum class Type : std::uint8_t { counter, gauge, histogram };

template <typename M>
class Family {
 public:
  // The series of these label values (created on first use). Takes the registry's mutex.
  M& with(const std::vector<std::string>& labelValues);

 private:
  friend class Registry;
  Family(std::mutex& mutex, std::size_t labels, std::vector<double> bounds)
      : mutex_(mutex), labels_(labels), bounds_(std::move(bounds)) {}
  std::mutex& mutex_;
  std::size_t labels_;
  std::vector<double> bounds_;  // histograms only
  std::map<std::vector<std::string>, std::unique_ptr<M>> series_;
};

class Registry {
 public:
  // constantLabels: (name, value) pairs on every series, e.g. {{"rank", "3"}, {"job_id", "x"}}.
  explicit Registry(std::vector<std::pair<std::string, std::string>> constantLabels = {});
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The family of name (created on first use; the same help, type and labels must be
  // given every time). Names follow Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*; counters end
  // in _total.
  Family<Counter>& counter(std::string_view name, std::string_view help,
                           std::vector<std::string> labels = {});
  Family<Gauge>& gauge(std::string_view name, std::string_view help,
                       std::vector<std::string> labels = {});
  Family<Histogram>& histogram(std::string_view name, std::string_view help,
                               std::vector<std::string> labels, std::vector<double> bounds);

  // fn runs at the start of every render(), with the registry's mutex released, to copy
  // values kept elsewhere (a transport's byte counts) into series it looked up before.
  // It must not throw. Hooks run in the order added.
  void onCollect(std::function<void()> fn);

  // Every family, in the order created, in the text exposition format 0.0.4.
  std::string render() const;

 private:
  struct Entry {
    std::string name;
    std::string help;
    Type type;
    std::vector<std::string> labels;
    std::vector<double> bounds;
    std::unique_ptr<Family<Counter>> counters;
    std::unique_ptr<Family<Gauge>> gauges;
    std::unique_ptr<Family<Histogram>> histograms;
  };
  Entry& entry(std::string_view name, std::string_view help, Type type,
               std::vector<std::string> labels, std::vector<double> bounds);

  std::vector<std::pair<std::string, std::string>> constant_;
  mutable std::mutex mutex_;
  std::deque<Entry> entries_;  // guarded by mutex_; a deque keeps references stable
  mutable std::mutex hooksMutex_;
  std::vector<std::function<void()>> hooks_;  // guarded by hooksMutex_
};

// The text format's escaping of a label value (backslash, double quote, newline).
std::string escapeLabelValue(std::string_view v);

}  // namespace skyring::metrics
