// "int8": blocks of B elements (default 256, the last one shorter), each with one f32
// scale = max|v| / 127 and B int8 values q = round(v / scale) in [-127, 127]; rounding is
// to nearest even, or stochastic from the counter RNG of codec_ops.h keyed by (seed,
// step, element index). Payload: ceil(n / B) f32 scales, then n int8 values.
#include <algorithm>

#include "compression/codec_ops.h"
#include "compression/codecs.h"

namespace skyring::compression {
namespace {

constexpr std::size_t kChunk = 4096;

float blockScale(const float* in, const float* residual, std::size_t m) noexcept {
  std::uint32_t maxAbs = 0;
  if (residual == nullptr) {
    for (std::size_t i = 0; i < m; ++i)
      maxAbs = ops::maxAbsBits(maxAbs, in[i]);
  } else {
    for (std::size_t i = 0; i < m; ++i)
      maxAbs = ops::maxAbsBits(maxAbs, in[i] + residual[i]);
  }
  return ops::int8Scale(maxAbs);
}

// Quantises m <= kChunk elements whose first has global index `first`. Separate loops per
// mode keep each one simple enough to vectorize.
void quantize(const float* in, float* residual, std::size_t m, std::size_t first, float scale,
              bool stochastic, std::uint64_t key, std::int8_t* q) noexcept {
  if (stochastic && residual != nullptr) {
    for (std::size_t i = 0; i < m; ++i)
      q[i] = ops::int8EncodeEf(in[i], residual[i], scale, true, ops::uniform01(key, first + i));
  } else if (stochastic) {
    for (std::size_t i = 0; i < m; ++i)
      q[i] = ops::int8QuantizeStochastic(in[i], scale, ops::uniform01(key, first + i));
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
    const std::uint64_t key = ops::streamKey(state.seed, state.step);
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
                 stochastic, key, q);
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
