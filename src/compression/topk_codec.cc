// "topk": the k = clamp(round(fraction * n), 1, n) elements of largest |v| (ties to the
// lower index, so the set is unique), sent as values and delta-coded indices. Payload:
//   u32 w (bits per index delta, 0..32) | k f32 values, ascending index order |
//   ceil(k * w / 8) bytes: delta_j = index_j - index_{j-1} - 1 (delta_0 = index_0), each
//   in w bits, LSB first.
// The header's param is k. Tensors of topk hold fewer than 2^32 elements.
//
// Selection: exact mode ranks all n composite keys (codec_ops.h topkKey) with
// std::nth_element. Sampled mode estimates a magnitude threshold from a seeded sample so
// that ~2k candidates pass, and ranks only those; with fewer than k candidates it falls
// back to exact. Both select the same set, so the bytes do not depend on the mode.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>

#include "compression/codec_ops.h"
#include "compression/codecs.h"

namespace skyring::compression {
namespace {

constexpr std::size_t kMinSample = 4096;

std::size_t topkCount(std::size_t n, double fraction) noexcept {
  if (n == 0) return 0;
  const double k = std::round(fraction * static_cast<double>(n));
  return std::clamp<std::size_t>(static_cast<std::size_t>(k), 1, n);
}

// Puts the keys of the k largest of `keys` first (any order).
void selectLargest(std::vector<std::uint64_t>& keys, std::size_t k) {
  if (k < keys.size()) {
    std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k - 1), keys.end(),
                     std::greater<>());
  }
  keys.resize(k);
}

// The magnitude (as bits) that about `want` of the n elements reach, from a sample.
std::uint32_t sampledThreshold(const float* v, std::size_t n, std::size_t want, std::uint64_t key) {
  const std::size_t samples =
      std::min(n, std::max(kMinSample, 64 * n / std::max<std::size_t>(want, 1)));
  std::vector<std::uint32_t> mags(samples);
  for (std::size_t j = 0; j < samples; ++j) {
    const std::size_t i = samples == n ? j : ops::mix64(key + j) % n;
    mags[j] = std::bit_cast<std::uint32_t>(v[i]) & 0x7fffffffu;
  }
  const std::size_t rank =
      std::min(samples - 1, static_cast<std::size_t>(static_cast<double>(want) * samples / n));
  std::nth_element(mags.begin(), mags.begin() + static_cast<std::ptrdiff_t>(rank), mags.end(),
                   std::greater<>());
  return mags[rank];
}

class TopkCodec final : public Compressor {
 public:
  explicit TopkCodec(const CompressionOptions& o) : Compressor(o) {}
  bool linear() const noexcept override { return false; }
  std::size_t maxEncodedBytes(std::size_t count) const override {
    SKYRING_CHECK_ARG(count <= std::numeric_limits<std::uint32_t>::max(), {},
                      "topk supports tensors of fewer than 2^32 elements, got ", count);
    return kHeaderBytes + 4 + 8 * topkCount(count, options().topkFraction);
  }

 private:
  Encoded encodePayload(std::span<const float> in, float* residual, CompressorState& state,
                        std::span<std::byte> payload) const override {
    const std::size_t n = in.size();
    const std::size_t k = topkCount(n, options().topkFraction);
    // With error feedback the residual becomes v = in + residual, selected entries are sent
    // and zeroed, and what stays is the new residual.
    const float* v = in.data();
    if (residual != nullptr) {
      for (std::size_t i = 0; i < n; ++i)
        residual[i] += in[i];
      v = residual;
    }
    auto& keys = state.scratch;
    keys.clear();
    bool sampled = false;
    if (options().topkSampled && 4 * k < n) {
      const std::uint32_t t = sampledThreshold(v, n, 2 * k, ops::streamKey(state.seed, state.step));
      keys.reserve(4 * k);
      for (std::size_t i = 0; i < n; ++i) {
        if ((std::bit_cast<std::uint32_t>(v[i]) & 0x7fffffffu) >= t) {
          keys.push_back(ops::topkKey(v[i], static_cast<std::uint32_t>(i)));
        }
      }
      sampled = keys.size() >= k;
      if (!sampled) keys.clear();
    }
    if (!sampled) {
      keys.resize(n);
      for (std::size_t i = 0; i < n; ++i)
        keys[i] = ops::topkKey(v[i], static_cast<std::uint32_t>(i));
    }
    selectLargest(keys, k);
    for (auto& key : keys)
      key = ops::topkKeyIndex(key);
    std::sort(keys.begin(), keys.end());

    std::uint32_t maxDelta = 0;
    for (std::size_t j = 0; j < k; ++j) {
      const auto delta = static_cast<std::uint32_t>(j == 0 ? keys[0] : keys[j] - keys[j - 1] - 1);
      maxDelta = std::max(maxDelta, delta);
    }
    const auto width = static_cast<std::uint32_t>(std::bit_width(maxDelta));
    storeU32(payload.data(), width);
    std::byte* values = payload.data() + 4;
    std::byte* packed = values + k * sizeof(float);
    std::uint64_t acc = 0;
    std::uint32_t accBits = 0;
    std::size_t out = 0;
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t i = keys[j];
      std::memcpy(values + j * sizeof(float), &v[i], sizeof(float));
      if (residual != nullptr) residual[i] = 0.0f;
      const std::uint64_t delta = j == 0 ? keys[0] : keys[j] - keys[j - 1] - 1;
      acc |= delta << accBits;
      accBits += width;
      while (accBits >= 8) {
        packed[out++] = static_cast<std::byte>(acc & 0xffu);
        acc >>= 8;
        accBits -= 8;
      }
    }
    if (accBits > 0) packed[out++] = static_cast<std::byte>(acc & 0xffu);
    return {4 + k * sizeof(float) + out, static_cast<std::uint32_t>(k),
            static_cast<std::uint16_t>(sampled ? kFlagSampled : 0)};
  }

  void decodePayload(const WireHeader& h, std::span<const std::byte> payload,
                     std::span<float> out) const override {
    const std::size_t n = out.size();
    const std::size_t k = h.param;
    SKYRING_CHECK_ARG(k <= n && payload.size() >= 4, {}, "topk header claims ", k, " of ", n,
                      " elements, payload ", payload.size(), " bytes");
    const std::uint32_t width = loadU32(payload.data());
    SKYRING_CHECK_ARG(width <= 32, {}, "topk index width ", width, " is over 32 bits");
    checkPayloadSize(h, payload.size(), 4 + k * sizeof(float) + ceilDiv(k * width, 8));
    std::fill(out.begin(), out.end(), 0.0f);
    const std::byte* values = payload.data() + 4;
    const std::byte* packed = values + k * sizeof(float);
    const std::uint64_t mask = width == 0 ? 0 : (~std::uint64_t{0} >> (64 - width));
    std::uint64_t acc = 0;
    std::uint32_t accBits = 0;
    std::size_t in = 0;
    std::uint64_t index = 0;
    for (std::size_t j = 0; j < k; ++j) {
      while (accBits < width) {
        acc |= static_cast<std::uint64_t>(packed[in++]) << accBits;
        accBits += 8;
      }
      const std::uint64_t delta = acc & mask;
      acc >>= width;
      accBits -= width;
      index += (j == 0 ? 0 : 1) + delta;
      SKYRING_CHECK_ARG(index < n, {}, "topk index ", index, " out of range ", n, " (corrupt)");
      out[index] = loadF32(values + j * sizeof(float));
    }
  }
};

}  // namespace

std::unique_ptr<Compressor> makeTopkCodec(const CompressionOptions& o) {
  return std::make_unique<TopkCodec>(o);
}

}  // namespace skyring::compression
