// "sign" (EF-SignSGD, 1 bit per element): blocks of B elements (default 1024) each send
// one f32 scale = mean |v| of the block and the sign bit of every v (1 = negative);
// decoding gives +-scale. Payload: ceil(n / B) f32 scales, then ceil(n / 8) bytes of sign
// bits, element i in bit i % 8 of byte i / 8. Ratio ~ 32 / (1 + 32 / B): 31x for B = 1024.
#include <algorithm>
#include <cstdint>

#include "compression/codec_ops.h"
#include "compression/codecs.h"

namespace skyring::compression {
namespace {

// mean |v| in float with 8 interleaved partial sums (so the loop vectorizes), combined as
// ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)): the order a twin must follow to match bit for bit.
float meanAbs(const float* in, const float* residual, std::size_t m) noexcept {
  float s[8] = {};
  std::size_t g = 0;
  for (; g + 8 <= m; g += 8) {
    for (std::size_t j = 0; j < 8; ++j)
      s[j] += ops::absf(in[g + j] + (residual != nullptr ? residual[g + j] : 0.0f));
  }
  for (std::size_t j = 0; g + j < m; ++j)
    s[j] += ops::absf(in[g + j] + (residual != nullptr ? residual[g + j] : 0.0f));
  const float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  return m == 0 ? 0.0f : sum / static_cast<float>(m);
}

// The bits of m elements starting at a byte boundary. Whole bytes have a loop of constant
// trip count so that GCC can vectorize across the 8 lanes.
void packAligned(const float* in, float* residual, std::size_t m, float scale,
                 std::byte* bits) noexcept {
  std::size_t g = 0;
  if (residual == nullptr) {
    for (; g + 8 <= m; g += 8) {
      std::uint32_t byte = 0;
      for (std::size_t j = 0; j < 8; ++j)
        byte |= ops::signBit(in[g + j]) << j;
      bits[g / 8] = static_cast<std::byte>(byte);
    }
  } else {
    for (; g + 8 <= m; g += 8) {
      std::uint32_t byte = 0;
      for (std::size_t j = 0; j < 8; ++j)
        byte |= ops::signEncodeEf(in[g + j], residual[g + j], scale) << j;
      bits[g / 8] = static_cast<std::byte>(byte);
    }
  }
  if (g == m) return;
  std::uint32_t byte = 0;
  for (std::size_t j = 0; g + j < m; ++j) {
    const std::size_t i = g + j;
    byte |=
        (residual != nullptr ? ops::signEncodeEf(in[i], residual[i], scale) : ops::signBit(in[i]))
        << j;
  }
  bits[g / 8] = static_cast<std::byte>(byte);
}

class SignCodec final : public Compressor {
 public:
  explicit SignCodec(const CompressionOptions& o) : Compressor(o), block_(o.blockSize) {}
  bool linear() const noexcept override { return false; }
  std::size_t maxEncodedBytes(std::size_t count) const override {
    return kHeaderBytes + payloadBytes(count, block_);
  }

 private:
  static std::size_t payloadBytes(std::size_t count, std::size_t block) noexcept {
    return ceilDiv(count, block) * sizeof(float) + ceilDiv(count, 8);
  }

  Encoded encodePayload(std::span<const float> in, float* residual, CompressorState&,
                        std::span<std::byte> payload) const override {
    const std::size_t n = in.size();
    std::byte* scales = payload.data();
    std::byte* bits = scales + ceilDiv(n, block_) * sizeof(float);
    // Blocks that are not whole bytes share bytes with their neighbours: OR bit by bit.
    const bool aligned = block_ % 8 == 0;
    if (!aligned) std::fill_n(bits, ceilDiv(n, 8), std::byte{0});
    for (std::size_t b = 0, first = 0; first < n; ++b, first += block_) {
      const std::size_t m = std::min(block_, n - first);
      float* r = residual == nullptr ? nullptr : residual + first;
      const float scale = meanAbs(in.data() + first, r, m);
      std::memcpy(scales + b * sizeof(float), &scale, sizeof scale);
      if (aligned) {
        packAligned(in.data() + first, r, m, scale, bits + first / 8);
        continue;
      }
      for (std::size_t i = 0; i < m; ++i) {
        const std::size_t e = first + i;
        const std::uint32_t bit =
            r != nullptr ? ops::signEncodeEf(in[e], r[i], scale) : ops::signBit(in[e]);
        bits[e / 8] |= static_cast<std::byte>(bit << (e % 8));
      }
    }
    return {payloadBytes(n, block_), static_cast<std::uint32_t>(block_), 0};
  }

  void decodePayload(const WireHeader& h, std::span<const std::byte> payload,
                     std::span<float> out) const override {
    const std::size_t n = out.size();
    const std::size_t block = h.param;
    SKYRING_CHECK_ARG(block >= 1 && block <= kMaxBlock, {}, "sign block size ", block,
                      " in header is out of range");
    checkPayloadSize(h, payload.size(), payloadBytes(n, block));
    const std::byte* scales = payload.data();
    const auto* bits = reinterpret_cast<const std::uint8_t*>(scales + ceilDiv(n, block) * 4);
    // Whole bytes inside a block go 8 at a time; bytes that straddle blocks bit by bit.
    for (std::size_t b = 0, first = 0; first < n; ++b, first += block) {
      const std::size_t end = std::min(block, n - first) + first;
      const float scale = loadF32(scales + b * sizeof(float));
      std::size_t e = first;
      for (; e < end && e % 8 != 0; ++e)
        out[e] = ops::signDecode((bits[e / 8] >> (e % 8)) & 1u, scale);
      for (; e + 8 <= end; e += 8) {
        const std::uint32_t byte = bits[e / 8];
        for (std::size_t j = 0; j < 8; ++j)
          out[e + j] = ops::signDecode((byte >> j) & 1u, scale);
      }
      for (; e < end; ++e)
        out[e] = ops::signDecode((bits[e / 8] >> (e % 8)) & 1u, scale);
    }
  }

  std::size_t block_;
};

}  // namespace

std::unique_ptr<Compressor> makeSignCodec(const CompressionOptions& o) {
  return std::make_unique<SignCodec>(o);
}

}  // namespace skyring::compression
