#include "engine/replay.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

namespace {

template <typename T>
T fromInt(int v) {
  if constexpr (std::is_same_v<T, Float16>) {
    return toFloat16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return toBFloat16(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

template <typename T>
double toDouble(T v) {
  if constexpr (std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>) {
    return static_cast<double>(toFloat(v));
  } else {
    return static_cast<double>(v);
  }
}

}  // namespace

bool flagInBand(DType dtype, ReduceOp op, int n) {
  if (op != ReduceOp::sum && op != ReduceOp::avg) return true;  // min, max, prod of 0 and 1
  switch (dtype) {
    case DType::f16:
      return n <= 2048;
    case DType::bf16:
      return n <= 256;
    case DType::i8:
      return n <= 127;
    case DType::u8:
      return n <= 255;
    default:
      return true;  // f32 (2^24), f64, i32, i64
  }
}

void writeFlag(std::byte* out, DType dtype, ReduceOp op, bool mine) {
  // max: 0 when this rank has the batch, so the maximum is 0 only when every rank has it.
  const int v = op == ReduceOp::max ? (mine ? 0 : 1) : (mine ? 1 : 0);
  dispatchDType(dtype, [&]<typename T>() {
    const T t = fromInt<T>(v);
    std::memcpy(out, &t, sizeof t);
  });
}

bool readFlag(const std::byte* in, DType dtype, ReduceOp op, int n) {
  const double v = dispatchDType(dtype, [&]<typename T>() {
    T t;
    std::memcpy(&t, in, sizeof t);
    return toDouble(t);
  });
  switch (op) {
    case ReduceOp::sum:
      return v == static_cast<double>(n);
    case ReduceOp::max:
      return v == 0;
    default:  // avg (the sum divided by n), min, prod
      return v == 1;
  }
}

std::size_t descriptorBytes(const Descriptor& d) {
  std::size_t count = 1;
  for (std::int64_t dim : d.shape)
    count *= static_cast<std::size_t>(dim);
  return count * dtypeSize(d.dtype);
}

std::vector<ReplayBatch> planReplay(const std::vector<std::uint32_t>& slots,
                                    const ResponseCache& cache, std::size_t threshold,
                                    const std::function<std::string(const Descriptor&)>& codecOf,
                                    std::size_t inPlaceBytes) {
  std::vector<ReplayBatch> batches;
  std::vector<std::uint32_t> run;  // tensors with data since the last zero-element one
  auto flush = [&] {
    std::vector<FusionItem> items;
    for (std::uint32_t s : run) {
      const Descriptor& d = cache.at(s);
      items.push_back({d.dtype, d.op, descriptorBytes(d), -1, codecOf ? codecOf(d) : ""});
    }
    for (const auto& batch : planFusion(items, threshold, inPlaceBytes)) {
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
      // Zero-element tensors in a row share one flag.
      if (batches.empty() || !batches.back().slots.empty()) batches.emplace_back();
      batches.back().empty.push_back(s);
    } else {
      run.push_back(s);
    }
  }
  flush();
  return batches;
}

}  // namespace skyring::engine
