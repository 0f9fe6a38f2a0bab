#include "engine/fusion.h"

#include <algorithm>
#include <type_traits>

namespace skyring::engine {

std::size_t inPlaceBytes(double slowestLatencySeconds, int ranks) {
  // Conservative figures for a loaded host: memcpy at 4 GB/s, and 100 us of engine work and
  // wake-ups per collective.
  constexpr double kCopyBytesPerSecond = 4e9;
  constexpr double kPerCollectiveSeconds = 100e-6;
  constexpr std::size_t kFloor = std::size_t{1} << 20;
  const double collective =
      2.0 * std::max(ranks - 1, 0) * slowestLatencySeconds + kPerCollectiveSeconds;
  const double bytes = collective * kCopyBytesPerSecond / 2;  // two copies pay for it
  if (bytes >= 1e18) return SIZE_MAX;
  return std::max(kFloor, static_cast<std::size_t>(bytes));
}

std::vector<std::vector<std::size_t>> planFusion(const std::vector<FusionItem>& items,
                                                 std::size_t threshold, std::size_t inPlaceBytes) {
  struct Open {
    int group;
    DType dtype;
    ReduceOp op;
    std::string codec;
    std::size_t bytes;
    std::vector<std::size_t> members;
  };
  std::vector<std::vector<std::size_t>> batches;
  std::vector<Open> open;  // at most one per (group, dtype, op), in order of creation
  for (std::size_t i = 0; i < items.size(); ++i) {
    const FusionItem& it = items[i];
    if (it.bytes == 0) continue;
    if (it.bytes > threshold || (it.codec.empty() && it.bytes >= inPlaceBytes)) {
      batches.push_back({i});
      continue;
    }
    Open* same = nullptr;
    for (auto& o : open) {
      if (o.group == it.group && o.dtype == it.dtype && o.op == it.op && o.codec == it.codec) {
        same = &o;
      }
    }
    if (same != nullptr && same->bytes + it.bytes > threshold) {
      batches.push_back(std::move(same->members));
      same->members.clear();
      same->bytes = 0;
    }
    if (same == nullptr) {
      open.push_back({it.group, it.dtype, it.op, it.codec, 0, {}});
      same = &open.back();
    }
    same->bytes += it.bytes;
    same->members.push_back(i);
  }
  for (auto& o : open) {
    if (!o.members.empty()) batches.push_back(std::move(o.members));
  }
  return batches;
}

void scaleInPlace(BufferView buffer, double factor) {
  if (factor == 1) return;
  dispatchDType(buffer.dtype, [&]<typename T>() {
    auto* p = static_cast<T*>(buffer.data);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const auto f = static_cast<T>(factor);
      for (std::size_t i = 0; i < buffer.count; ++i)
        p[i] *= f;
    } else if constexpr (std::is_same_v<T, Float16>) {
      const auto f = static_cast<float>(factor);
      for (std::size_t i = 0; i < buffer.count; ++i)
        p[i] = toFloat16(toFloat(p[i]) * f);
    } else if constexpr (std::is_same_v<T, BFloat16>) {
      const auto f = static_cast<float>(factor);
      for (std::size_t i = 0; i < buffer.count; ++i)
        p[i] = toBFloat16(toFloat(p[i]) * f);
    }
  });
}

}  // namespace skyring::engine
