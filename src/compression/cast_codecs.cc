// "fp16" and "bf16": each element cast to a 16-bit float, round to nearest even (the
// conversions of skyring/dtype.h). Payload: count * 2 bytes, little-endian bits. The two
// codecs differ only in the conversion, so they share this file.
//
// Speed: the portable loops vectorize (branch-free conversions, -O3 -fno-trapping-math),
// and are compiled twice, for the x86-64 baseline and for AVX2, chosen at run time. fp16
// on a CPU with F16C uses vcvtps2ph/vcvtph2ps instead, which round the same way; NaN
// inputs are canonicalised first so that they too give the portable path's bits.
#include <algorithm>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "compression/codec_ops.h"
#include "compression/codecs.h"

namespace skyring::compression {
namespace {

// Words go through a small stack buffer and memcpy: the payload is std::byte storage, and
// writing it through a uint16_t pointer would break the aliasing rules.
constexpr std::size_t kChunk = 2048;

template <bool Half>
[[gnu::always_inline]] inline void encodeLoop(const float* in, float* residual, std::byte* out,
                                              std::size_t n) noexcept {
  std::uint16_t tmp[kChunk];
  for (std::size_t base = 0; base < n; base += kChunk) {
    const std::size_t m = std::min(kChunk, n - base);
    const float* x = in + base;
    if (residual == nullptr) {
      for (std::size_t i = 0; i < m; ++i)
        tmp[i] = Half ? floatToHalfBits(x[i]) : floatToBf16Bits(x[i]);
    } else {
      float* r = residual + base;
      for (std::size_t i = 0; i < m; ++i)
        tmp[i] = Half ? ops::fp16EncodeEf(x[i], r[i]) : ops::bf16EncodeEf(x[i], r[i]);
    }
    std::memcpy(out + base * 2, tmp, m * 2);
  }
}

template <bool Half>
[[gnu::always_inline]] inline void decodeLoop(const std::byte* in, float* out,
                                              std::size_t n) noexcept {
  std::uint16_t tmp[kChunk];
  for (std::size_t base = 0; base < n; base += kChunk) {
    const std::size_t m = std::min(kChunk, n - base);
    std::memcpy(tmp, in + base * 2, m * 2);
    float* y = out + base;
    for (std::size_t i = 0; i < m; ++i)
      y[i] = Half ? halfBitsToFloat(tmp[i]) : bf16BitsToFloat(tmp[i]);
  }
}

template <bool Half>
void encodePortable(const float* in, float* residual, std::byte* out, std::size_t n) noexcept {
  encodeLoop<Half>(in, residual, out, n);
}
template <bool Half>
void decodePortable(const std::byte* in, float* out, std::size_t n) noexcept {
  decodeLoop<Half>(in, out, n);
}

#if defined(__x86_64__)
bool hasAvx2() noexcept {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
bool hasF16c() noexcept {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}

[[gnu::target("avx2")]] void bf16EncodeAvx2(const float* in, float* residual, std::byte* out,
                                            std::size_t n) noexcept {
  encodeLoop<false>(in, residual, out, n);
}
[[gnu::target("avx2")]] void bf16DecodeAvx2(const std::byte* in, float* out,
                                            std::size_t n) noexcept {
  decodeLoop<false>(in, out, n);
}

[[gnu::target("avx2,f16c")]] void fp16EncodeF16c(const float* in, float* residual, std::byte* out,
                                                 std::size_t n) noexcept {
  const __m256 signMask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 quietNan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(in + i);
    __m256 r = _mm256_setzero_ps();
    if (residual != nullptr) {
      r = _mm256_loadu_ps(residual + i);
      v = _mm256_add_ps(v, r);
    }
    // The portable conversion maps every NaN to sign | 0x7e00; vcvtps2ph keeps payload bits.
    const __m256 isNan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256 canon = _mm256_or_ps(_mm256_and_ps(v, signMask), quietNan);
    v = _mm256_blendv_ps(v, canon, isNan);
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * 2), h);
    if (residual != nullptr) _mm256_storeu_ps(residual + i, _mm256_sub_ps(v, _mm256_cvtph_ps(h)));
  }
  encodeLoop<true>(in + i, residual == nullptr ? nullptr : residual + i, out + i * 2, n - i);
}

[[gnu::target("avx2,f16c")]] void fp16DecodeF16c(const std::byte* in, float* out,
                                                 std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i * 2));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  decodeLoop<true>(in + i * 2, out + i, n - i);
}
#endif

template <bool Half>
void encodeCast(const float* in, float* residual, std::byte* out, std::size_t n) noexcept {
#if defined(__x86_64__)
  if constexpr (Half) {
    if (hasF16c()) return fp16EncodeF16c(in, residual, out, n);
  } else {
    if (hasAvx2()) return bf16EncodeAvx2(in, residual, out, n);
  }
#endif
  encodePortable<Half>(in, residual, out, n);
}

template <bool Half>
void decodeCast(const std::byte* in, float* out, std::size_t n) noexcept {
#if defined(__x86_64__)
  if constexpr (Half) {
    if (hasF16c()) return fp16DecodeF16c(in, out, n);
  } else {
    if (hasAvx2()) return bf16DecodeAvx2(in, out, n);
  }
#endif
  decodePortable<Half>(in, out, n);
}

template <bool Half>
class CastCodec final : public Compressor {
 public:
  explicit CastCodec(const CompressionOptions& o) : Compressor(o) {}
  bool linear() const noexcept override { return true; }
  std::size_t maxEncodedBytes(std::size_t count) const override { return kHeaderBytes + count * 2; }

 private:
  Encoded encodePayload(std::span<const float> in, float* residual, CompressorState&,
                        std::span<std::byte> payload) const override {
    encodeCast<Half>(in.data(), residual, payload.data(), in.size());
    return {in.size() * 2, 0, 0};
  }
  void decodePayload(const WireHeader& h, std::span<const std::byte> payload,
                     std::span<float> out) const override {
    checkPayloadSize(h, payload.size(), out.size() * 2);
    decodeCast<Half>(payload.data(), out.data(), out.size());
  }
};

}  // namespace

std::unique_ptr<Compressor> makeFp16Codec(const CompressionOptions& o) {
  return std::make_unique<CastCodec<true>>(o);
}
std::unique_ptr<Compressor> makeBf16Codec(const CompressionOptions& o) {
  return std::make_unique<CastCodec<false>>(o);
}

}  // namespace skyring::compression
