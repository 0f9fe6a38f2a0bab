#include "skyring/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "skyring/error.h"

namespace skyring::metrics {

void Counter::advanceTo(double v) noexcept {
  double seen = value_.load(std::memory_order_relaxed);
  while (v > seen && !value_.compare_exchange_weak(seen, v, std::memory_order_relaxed)) {
  }
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
  for (std::size_t i = 0; i + 1 < bounds_.size(); ++i) {
    SKYRING_CHECK_ARG(bounds_[i] < bounds_[i + 1], {},
                      "histogram bounds must increase strictly, at ", i);
  }
}

void Histogram::observe(double v) noexcept {
  // The first bucket whose upper bound holds v (le is inclusive); past the last: +Inf.
  const auto i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) -
                                          bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::uint64_t Histogram::cumulative(std::size_t i) const noexcept {
  std::uint64_t total = 0;
  for (std::size_t b = 0; b <= i && b <= bounds_.size(); ++b)
    total += buckets_[b].load(std::memory_order_relaxed);
  return total;
}

const std::vector<double>& latencyBuckets() {
  static const std::vector<double> kBounds = {5e-5, 1e-4,   2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                                              1e-2, 2.5e-2, 5e-2,   0.1,  0.25, 0.5,    1,
                                              2.5,  5,      10,     30,   60};
  return kBounds;
}

template <typename M>
M& Family<M>::with(const std::vector<std::string>& labelValues) {
  SKYRING_CHECK_ARG(labelValues.size() == labels_, {}, "metrics: ", labelValues.size(),
                    " label values for a family of ", labels_, " labels");
  std::lock_guard lock(mutex_);
  auto& slot = series_[labelValues];
  if (!slot) {
    if constexpr (std::is_same_v<M, Histogram>) {
      slot = std::make_unique<M>(bounds_);
    } else {
      slot = std::make_unique<M>();
    }
  }
  return *slot;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

namespace {

bool validName(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!(letter || c == ':' || (i > 0 && c >= '0' && c <= '9'))) return false;
  }
  return true;
}

// Go's strconv.FormatFloat(v, 'g', -1, 64) spellings for the special values, shortest
// round-trip digits otherwise (what Prometheus' own clients write).
std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, end);
}

std::string escapeHelp(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string escapeLabelValue(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\\') {
      out += "\\\\";
    } else {
      out += c;
    }
  }
  return out;
}

Registry::Registry(std::vector<std::pair<std::string, std::string>> constantLabels)
    : constant_(std::move(constantLabels)) {
  for (const auto& [name, value] : constant_)
    SKYRING_CHECK_ARG(validName(name), {}, "metrics: invalid label name '", name, "'");
}

Registry::Entry& Registry::entry(std::string_view name, std::string_view help, Type type,
                                 std::vector<std::string> labels, std::vector<double> bounds) {
  SKYRING_CHECK_ARG(validName(name), {}, "metrics: invalid metric name '", name, "'");
  for (const auto& l : labels) {
    SKYRING_CHECK_ARG(validName(l) && l != "le", {}, "metrics: invalid label name '", l, "' of ",
                      name);
  }
  std::lock_guard lock(mutex_);
  for (Entry& e : entries_) {
    if (e.name != name) continue;
    SKYRING_CHECK_ARG(e.type == type && e.labels == labels && e.bounds == bounds, {},
                      "metrics: ", name,
                      " is already registered with another type, labels or buckets");
    return e;
  }
  Entry& e = entries_.emplace_back();
  e.name = name;
  e.help = help;
  e.type = type;
  e.labels = std::move(labels);
  e.bounds = std::move(bounds);
  const std::size_t n = e.labels.size();
  switch (type) {
    case Type::counter:
      e.counters.reset(new Family<Counter>(mutex_, n, {}));
      break;
    case Type::gauge:
      e.gauges.reset(new Family<Gauge>(mutex_, n, {}));
      break;
    case Type::histogram:
      e.histograms.reset(new Family<Histogram>(mutex_, n, e.bounds));
      break;
  }
  return e;
}

Family<Counter>& Registry::counter(std::string_view name, std::string_view help,
                                   std::vector<std::string> labels) {
  return *entry(name, help, Type::counter, std::move(labels), {}).counters;
}

Family<Gauge>& Registry::gauge(std::string_view name, std::string_view help,
                               std::vector<std::string> labels) {
  return *entry(name, help, Type::gauge, std::move(labels), {}).gauges;
}

Family<Histogram>& Registry::histogram(std::string_view name, std::string_view help,
                                       std::vector<std::string> labels,
                                       std::vector<double> bounds) {
  // Checked here, before the family exists, so a bad call leaves nothing behind.
  Histogram check(bounds);
  return *entry(name, help, Type::histogram, std::move(labels), std::move(bounds)).histograms;
}

void Registry::onCollect(std::function<void()> fn) {
  std::lock_guard lock(hooksMutex_);
  hooks_.push_back(std::move(fn));
}

std::string Registry::render() const {
  {
    std::lock_guard lock(hooksMutex_);
    for (const auto& hook : hooks_)
      hook();
  }
  std::string out;
  std::lock_guard lock(mutex_);
  for (const Entry& e : entries_) {
    const char* type = e.type == Type::counter ? "counter"
                       : e.type == Type::gauge ? "gauge"
                                               : "histogram";
    out += "# HELP " + e.name + " " + escapeHelp(e.help) + "\n";
    out += "# TYPE " + e.name + " " + type + "\n";
    // The label set of a series, with an extra label (le) when given, as {a="x",...}.
    auto labels = [&](const std::vector<std::string>& values, std::string_view extra = {},
                      std::string_view extraValue = {}) {
      std::string s;
      auto put = [&](std::string_view name, std::string_view value) {
        s += s.empty() ? "{" : ",";
        s += name;
        s += "=\"" + escapeLabelValue(value) + "\"";
      };
      for (const auto& [name, value] : constant_)
        put(name, value);
      for (std::size_t i = 0; i < values.size(); ++i)
        put(e.labels[i], values[i]);
      if (!extra.empty()) put(extra, extraValue);
      return s.empty() ? s : s + "}";
    };
    if (e.counters) {
      for (const auto& [values, c] : e.counters->series_)
        out += e.name + labels(values) + " " + number(c->value()) + "\n";
    } else if (e.gauges) {
      for (const auto& [values, g] : e.gauges->series_)
        out += e.name + labels(values) + " " + number(g->value()) + "\n";
    } else {
      for (const auto& [values, h] : e.histograms->series_) {
        for (std::size_t i = 0; i <= h->bounds().size(); ++i) {
          const double le = i < h->bounds().size() ? h->bounds()[i] : INFINITY;
          out += e.name + "_bucket" + labels(values, "le", number(le)) + " " +
                 std::to_string(h->cumulative(i)) + "\n";
        }
        out += e.name + "_sum" + labels(values) + " " + number(h->sum()) + "\n";
        out += e.name + "_count" + labels(values) + " " + std::to_string(h->count()) + "\n";
      }
    }
  }
  return out;
}

}  // namespace skyring::metrics
