// "int8": blocks of B elements (default 256, the last one shorter), each with one f32
// scale = max|v| / 127 and B int8 values q = round(v / scale) in [-127, 127]; rounding is
// to nearest even, or stochastic from the counter RNG of codec_ops.h keyed by (seed,
// step, element index). Payload: ceil(n / B) f32 scales, then n int8 values.
//
// The loops below restate codec_ops.h's scalar steps so that GCC vectorizes them (lanes
// for the block maximum, a table-driven counter RNG, the stochastic clamp split into
// passes). They produce the same bytes and residual bits as the scalar ops, apart from the
// payload bits of NaNs in the residual: checked on 2.2e9 seeded elements (all modes,
// blocks 1 to 2^20, denormals, infinities, NaNs, counters near 2^32) before and after.
#include <algorithm>
#include <cstdint>
#include <optional>

#include "compression/codec_ops.h"
#include "compression/codecs.h"

namespace skyring::compression {
namespace {

constexpr std::size_t kChunk = 4096;

// Block maxima as in ops::maxAbsBits, but over int32: |v|'s bits are below 2^31, so signed
// and unsigned order agree, and SSE2 has a signed compare (no unsigned one). kLanes
// independent maxima break the loop-carried dependency; max is order-independent, so the
// result is the same.
constexpr std::size_t kLanes = 16;

float blockScale(const float* in, const float* residual, std::size_t m) noexcept {
  std::int32_t lane[kLanes] = {};
  std::size_t i = 0;
  const auto absBits = [](float v) { return static_cast<std::int32_t>(ops::absBits(v)); };
  if (residual == nullptr) {
    for (; i + kLanes <= m; i += kLanes) {
      for (std::size_t j = 0; j < kLanes; ++j)
        lane[j] = std::max(lane[j], absBits(in[i + j]));
    }
    for (; i < m; ++i)
      lane[0] = std::max(lane[0], absBits(in[i]));
  } else {
    for (; i + kLanes <= m; i += kLanes) {
      for (std::size_t j = 0; j < kLanes; ++j)
        lane[j] = std::max(lane[j], absBits(in[i + j] + residual[i + j]));
    }
    for (; i < m; ++i)
      lane[0] = std::max(lane[0], absBits(in[i] + residual[i]));
  }
  std::int32_t maxAbs = 0;
  for (const std::int32_t l : lane)
    maxAbs = std::max(maxAbs, l);
  return ops::int8Scale(static_cast<std::uint32_t>(maxAbs));
}

// ops::uniform01 for one key over runs of indices. For an index below 2^32 it is
// mix32((index ^ keyLo) * kGolden ^ keyHi) >> 8, scaled by 2^-24 (the index's high word
// is 0). Split x = index ^ keyLo into x & ~255 and x & 255: the product is the sum of
// their products (mod 2^32), the second of which comes from a 256-entry table for the
// key, so a run of up to 256 indices costs one multiply plus mix32's two per element
// rather than three. Indices from 2^32 on take ops::uniform01 itself.
class UniformStream {
 public:
  explicit UniformStream(std::uint64_t key) noexcept
      : key_(key),
        keyLo_(static_cast<std::uint32_t>(key)),
        keyHi_(static_cast<std::uint32_t>(key >> 32)) {
    for (std::uint32_t j = 0; j < 256; ++j)
      lowProduct_[j] = ((j ^ keyLo_) & 255u) * kGolden;
  }

  // u[i] = ops::uniform01(key, first + i) for i < m.
  void fill(std::uint64_t first, std::size_t m, float* u) const noexcept {
    if (first + m > (std::uint64_t{1} << 32)) {
      for (std::size_t i = 0; i < m; ++i)
        u[i] = ops::uniform01(key_, first + i);
      return;
    }
    for (std::size_t i = 0; i < m;) {
      const auto index = static_cast<std::uint32_t>(first + i);
      const std::uint32_t low = index & 255u;
      const std::size_t run = std::min<std::size_t>(m - i, 256u - low);
      const std::uint32_t highProduct = ((index ^ keyLo_) & ~255u) * kGolden;
      const std::uint32_t* table = lowProduct_ + low;
      float* out = u + i;
      for (std::size_t j = 0; j < run; ++j) {
        const std::uint32_t h = ops::mix32((highProduct + table[j]) ^ keyHi_);
        out[j] = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
      }
      i += run;
    }
  }

 private:
  static constexpr std::uint32_t kGolden = 0x9e3779b1u;  // as in ops::uniform01
  std::uint64_t key_;
  std::uint32_t keyLo_;
  std::uint32_t keyHi_;
  std::uint32_t lowProduct_[256];
};

// ops::int8QuantizeStochastic split into passes over a chunk, with the same float
// operations in the same order: (1) t = v / scale, floorSmall(t + u) and int8Clamp's lower
// bound (which maps NaN to -127); (2) its upper bound; (3) the cast to int8. Fused, GCC
// merges the two selects and sinks them past the narrowing cast into byte blends that cost
// more than all the rest; apart, each is a compare and a blend in float lanes.
float floorLowerClamped(float v, float scale, float u) noexcept {
  const float t = scale > 0.0f ? v / scale : 0.0f;
  const float r = ops::floorSmall(t + u);
  return r > -ops::kInt8Max ? r : -ops::kInt8Max;
}
float upperClamped(float r) noexcept {
  return r < ops::kInt8Max ? r : ops::kInt8Max;
}

// Quantises m <= kChunk elements whose first has global index `first`. Separate loops per
// mode keep each one simple enough to vectorize.
void quantize(const float* in, float* residual, std::size_t m, std::size_t first, float scale,
              const UniformStream* stochastic, std::int8_t* q) noexcept {
  if (stochastic != nullptr) {
    // r holds u, then the rounded values: integers in [-127, 127], never -0 (floorSmall's
    // sums are exact, so a zero is +0), hence equal to float(q) for the residual.
    float r[kChunk];
    stochastic->fill(first, m, r);
    if (residual != nullptr) {
      for (std::size_t i = 0; i < m; ++i)
        r[i] = floorLowerClamped(in[i] + residual[i], scale, r[i]);
      for (std::size_t i = 0; i < m; ++i) {
        r[i] = upperClamped(r[i]);
        residual[i] = (in[i] + residual[i]) - r[i] * scale;
      }
    } else {
      for (std::size_t i = 0; i < m; ++i)
        r[i] = floorLowerClamped(in[i], scale, r[i]);
      for (std::size_t i = 0; i < m; ++i)
        r[i] = upperClamped(r[i]);
    }
    for (std::size_t i = 0; i < m; ++i)
      q[i] = static_cast<std::int8_t>(static_cast<int>(r[i]));
  } else if (residual != nullptr) {
    for (std::size_t i = 0; i < m; ++i)
      q[i] = ops::int8EncodeEf(in[i], residual[i], scale, false, 0.0f);
  } else {
    for (std::size_t i = 0; i < m; ++i)
      q[i] = ops::int8QuantizeRne(in[i], scale);
  }
}

class Int8Codec final : public Compressor {
 public:
  explicit Int8Codec(const CompressionOptions& o) : Compressor(o), block_(o.blockSize) {}
  bool linear() const noexcept override { return false; }
  std::size_t maxEncodedBytes(std::size_t count) const override {
    return kHeaderBytes + payloadBytes(count, block_);
  }

 private:
  static std::size_t payloadBytes(std::size_t count, std::size_t block) noexcept {
    return ceilDiv(count, block) * sizeof(float) + count;
  }

  Encoded encodePayload(std::span<const float> in, float* residual, CompressorState& state,
                        std::span<std::byte> payload) const override {
    const std::size_t n = in.size();
    const bool stochastic = options().stochastic;
    std::optional<UniformStream> uniforms;
    if (stochastic) uniforms.emplace(ops::streamKey(state.seed, state.step));
    std::byte* scales = payload.data();
    std::byte* values = scales + ceilDiv(n, block_) * sizeof(float);
    std::int8_t q[kChunk];
    for (std::size_t b = 0, first = 0; first < n; ++b, first += block_) {
      const std::size_t m = std::min<std::size_t>(block_, n - first);
      float* r = residual == nullptr ? nullptr : residual + first;
      const float scale = blockScale(in.data() + first, r, m);
      std::memcpy(scales + b * sizeof(float), &scale, sizeof scale);
      // q goes through a stack buffer: values is std::byte storage (see cast_codecs.cc).
      for (std::size_t c = 0; c < m; c += kChunk) {
        const std::size_t k = std::min(kChunk, m - c);
        quantize(in.data() + first + c, r == nullptr ? nullptr : r + c, k, first + c, scale,
                 uniforms ? &*uniforms : nullptr, q);
        std::memcpy(values + first + c, q, k);
      }
    }
    return {payloadBytes(n, block_), static_cast<std::uint32_t>(block_),
            static_cast<std::uint16_t>(stochastic ? kFlagStochastic : 0)};
  }

  void decodePayload(const WireHeader& h, std::span<const std::byte> payload,
                     std::span<float> out) const override {
    const std::size_t n = out.size();
    const std::size_t block = h.param;
    SKYRING_CHECK_ARG(block >= 1 && block <= kMaxBlock, {}, "int8 block size ", block,
                      " in header is out of range");
    checkPayloadSize(h, payload.size(), payloadBytes(n, block));
    const std::byte* scales = payload.data();
    const auto* values = reinterpret_cast<const std::int8_t*>(scales + ceilDiv(n, block) * 4);
    for (std::size_t b = 0, first = 0; first < n; ++b, first += block) {
      const std::size_t m = std::min(block, n - first);
      const float scale = loadF32(scales + b * sizeof(float));
      float* y = out.data() + first;
      const std::int8_t* x = values + first;
      for (std::size_t i = 0; i < m; ++i)
        y[i] = ops::int8Dequantize(x[i], scale);
    }
  }

  std::size_t block_;
};

}  // namespace

std::unique_ptr<Compressor> makeInt8Codec(const CompressionOptions& o) {
  return std::make_unique<Int8Codec>(o);
}

}  // namespace skyring::compression
