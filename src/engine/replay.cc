#include "engine/replay.h"

#include <algorithm>

#include "engine/fusion.h"

namespace skyring::engine {

void StepRecorder::ran(std::uint32_t slot, bool replayable) {
  if (std::find(current_.begin(), current_.end(), slot) != current_.end()) endStep();
  if (!replayable) spoiled_ = true;
  current_.push_back(slot);
}

std::optional<std::vector<std::uint32_t>> StepRecorder::repeated() {
  if (current_.empty() || spoiled_ || previousSpoiled_ || current_.size() != previous_.size()) {
    return std::nullopt;
  }
  std::vector<std::uint32_t> a = current_;
  std::vector<std::uint32_t> b = previous_;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  if (a != b) return std::nullopt;
  std::vector<std::uint32_t> replay = current_;
  endStep();
  return replay;
}

void StepRecorder::endStep() {
  if (current_.empty() && !spoiled_) return;  // idle cycles in a row
  previous_ = std::move(current_);
  previousSpoiled_ = spoiled_;
  current_.clear();
  spoiled_ = false;
}

void StepRecorder::reset() {
  current_.clear();
  previous_.clear();
  spoiled_ = false;
  previousSpoiled_ = true;
}

std::size_t descriptorBytes(const Descriptor& d) {
  std::size_t count = 1;
  for (std::int64_t dim : d.shape)
    count *= static_cast<std::size_t>(dim);
  return count * dtypeSize(d.dtype);
}

std::vector<ReplayBatch> planReplay(const std::vector<std::uint32_t>& slots,
                                    const ResponseCache& cache, std::size_t threshold) {
  std::vector<ReplayBatch> batches;
  std::vector<std::uint32_t> run;  // tensors with data since the last zero-element one
  auto flush = [&] {
    std::vector<FusionItem> items;
    for (std::uint32_t s : run) {
      const Descriptor& d = cache.at(s);
      items.push_back({d.dtype, d.op, descriptorBytes(d), -1});
    }
    for (const auto& batch : planFusion(items, threshold)) {
      ReplayBatch b;
      for (std::size_t i : batch)
        b.slots.push_back(run[i]);
      batches.push_back(std::move(b));
    }
    run.clear();
  };
  for (std::uint32_t s : slots) {
    if (descriptorBytes(cache.at(s)) == 0) {
      flush();
      batches.push_back({{}, {s}});
    } else {
      run.push_back(s);
    }
  }
  flush();
  return batches;
}

}  // namespace skyring::engine
