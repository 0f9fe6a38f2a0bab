// Per-element and per-block math of every codec, fused with error feedback: the one
// definition the CPU codecs (src/compression/*_codec.cc) and their CUDA twins share, so
// both produce the same bytes. Everything is inline, branch-free where it matters, and
// marked SKYRING_HD so nvcc compiles it for the device (with --expt-relaxed-constexpr for
// the conversions of skyring/dtype.h).
//
// The error-feedback step of every codec is: v = input + residual; q = compress(v);
// residual = v - decompress(q). With error feedback off, residual is not touched.
#pragma once

#include <bit>
#include <cstdint>

#include "skyring/dtype.h"

#if defined(__CUDACC__)
#define SKYRING_HD __host__ __device__
#else
#define SKYRING_HD
#endif

namespace skyring::compression::ops {

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 moves v into a
// binade whose ulp is 1, so the FPU's own rounding does the work. Unlike rintf this
// vectorizes without SSE4.1 and is the same on the GPU (no fast-math anywhere).
SKYRING_HD inline float roundNearestEven(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}
SKYRING_HD inline float floorSmall(float v) {
  const float r = roundNearestEven(v);
  return r > v ? r - 1.0f : r;
}

// Counter-based RNG (splitmix64's finaliser): the random number of element `index` at
// `step` depends only on (seed, step, index), so any thread order gives the same bytes.
SKYRING_HD inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
SKYRING_HD inline std::uint64_t streamKey(std::uint64_t seed, std::uint64_t step) {
  return mix64(seed ^ mix64(step + 0x9e3779b97f4a7c15ull));
}
// Uniform in [0, 1) with 24 random bits (exactly representable in float). Per element
// only 32-bit multiplies (murmur3's finaliser, a bijection of the counter for a given
// key), so the loop vectorizes; the 64-bit mixing is done once per call in streamKey.
SKYRING_HD inline std::uint32_t mix32(std::uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}
SKYRING_HD inline float uniform01(std::uint64_t key, std::uint64_t index) {
  const std::uint32_t lo = static_cast<std::uint32_t>(index) ^ static_cast<std::uint32_t>(key);
  const std::uint32_t hi = static_cast<std::uint32_t>(index >> 32) * 0x9e3779b1u;
  const std::uint32_t h = mix32(lo * 0x9e3779b1u ^ static_cast<std::uint32_t>(key >> 32) ^ hi);
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// ---- fp16 / bf16: a cast; the residual keeps the rounding error.
SKYRING_HD inline std::uint16_t fp16EncodeEf(float in, float& residual) {
  const float v = in + residual;
  const std::uint16_t h = floatToHalfBits(v);
  residual = v - halfBitsToFloat(h);
  return h;
}
SKYRING_HD inline std::uint16_t bf16EncodeEf(float in, float& residual) {
  const float v = in + residual;
  const std::uint16_t b = floatToBf16Bits(v);
  residual = v - bf16BitsToFloat(b);
  return b;
}

// ---- int8: one f32 scale per block, scale = max|v| / 127, q in [-127, 127].
inline constexpr float kInt8Max = 127.0f;
SKYRING_HD inline float absf(float v) {
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) & 0x7fffffffu);
}
// Block maxima are taken over the bits of |v| as integers: non-negative floats order like
// their bits (NaN above infinity), integer max vectorizes where float max reductions do
// not, and max is order-independent, so a parallel reduction gives the same scale.
SKYRING_HD inline std::uint32_t absBits(float v) {
  return std::bit_cast<std::uint32_t>(v) & 0x7fffffffu;
}
SKYRING_HD inline std::uint32_t maxAbsBits(std::uint32_t acc, float v) {
  const std::uint32_t a = absBits(v);
  return a > acc ? a : acc;
}
SKYRING_HD inline float int8Scale(std::uint32_t maxAbsBitsValue) {
  return std::bit_cast<float>(maxAbsBitsValue) / kInt8Max;
}
// Clamps to [-127, 127]; NaN (a NaN or infinite scale) becomes -127 deterministically.
SKYRING_HD inline std::int8_t int8Clamp(float t) {
  t = t > -kInt8Max ? t : -kInt8Max;
  t = t < kInt8Max ? t : kInt8Max;
  return static_cast<std::int8_t>(static_cast<int>(t));
}
// A true division (not a multiply by 1/scale) so that |v - q*scale| <= scale/2 holds.
SKYRING_HD inline std::int8_t int8QuantizeRne(float v, float scale) {
  const float t = scale > 0.0f ? v / scale : 0.0f;
  return int8Clamp(roundNearestEven(t));
}
// Stochastic rounding: floor(v/scale + u) with u uniform in [0, 1), so E[q*scale] = v.
SKYRING_HD inline std::int8_t int8QuantizeStochastic(float v, float scale, float u) {
  const float t = scale > 0.0f ? v / scale : 0.0f;
  return int8Clamp(floorSmall(t + u));
}
SKYRING_HD inline float int8Dequantize(std::int8_t q, float scale) {
  return static_cast<float>(q) * scale;
}
// The fused step for one element of a block whose v = in + residual has scale `scale`.
SKYRING_HD inline std::int8_t int8EncodeEf(float in, float& residual, float scale, bool stochastic,
                                           float u) {
  const float v = in + residual;
  const std::int8_t q =
      stochastic ? int8QuantizeStochastic(v, scale, u) : int8QuantizeRne(v, scale);
  residual = v - int8Dequantize(q, scale);
  return q;
}

// ---- sign: one bit per element (1 = negative, the float's sign bit, so -0 is negative),
// one f32 scale per block = mean |v| of the block. The CUDA twin's sum order may differ:
// scales agree within a few ulps, bits exactly.
SKYRING_HD inline std::uint32_t signBit(float v) {
  return std::bit_cast<std::uint32_t>(v) >> 31;
}
// Flips the scale's sign bit: -scale when bit is 1, for every scale (NaN included).
SKYRING_HD inline float signDecode(std::uint32_t bit, float scale) {
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(scale) ^ (bit << 31));
}
SKYRING_HD inline std::uint32_t signEncodeEf(float in, float& residual, float scale) {
  const float v = in + residual;
  const std::uint32_t bit = signBit(v);
  residual = v - signDecode(bit, scale);
  return bit;
}

// ---- topk: elements ranked by |v|, compared as integers (the bits of |v| order like the
// values, and NaN ranks above infinity, so the order is total); ties go to the lower
// index. The composite key sorts descending by magnitude then ascending by index.
SKYRING_HD inline std::uint64_t topkKey(float v, std::uint32_t index) {
  const std::uint32_t mag = std::bit_cast<std::uint32_t>(v) & 0x7fffffffu;
  return (std::uint64_t{mag} << 32) | (0xffffffffu - index);
}
SKYRING_HD inline std::uint32_t topkKeyIndex(std::uint64_t key) {
  return 0xffffffffu - static_cast<std::uint32_t>(key);
}

}  // namespace skyring::compression::ops
