// Element types, their sizes and names, and the 16-bit float conversions.
//
// Thread-safety: everything here is pure and may be called from any thread.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace skyring {

enum class DType : std::uint8_t { f32, f64, f16, bf16, i8, u8, i32, i64 };

inline constexpr DType kAllDTypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16,
                                       DType::i8,  DType::u8,  DType::i32, DType::i64};

// Size of one element in bytes.
std::size_t dtypeSize(DType dtype) noexcept;
// Short lower-case name as used by nccl-tests ("float", "half", ...) is not used here:
// names are the enum spelling ("f32", "bf16", ...).
std::string_view dtypeName(DType dtype) noexcept;
// Parses a name from dtypeName(); throws InvalidArgument on anything else.
DType parseDType(std::string_view name);
bool isFloatingPoint(DType dtype) noexcept;

// Storage types for the two 16-bit float formats. They carry bits only; arithmetic
// converts to float, which is how the reductions accumulate them.
struct Float16 {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

// IEEE binary16 <-> binary32. Round to nearest even; overflow gives infinity; NaN stays
// NaN (quiet). Written without branches so loops over arrays vectorize.
constexpr float halfBitsToFloat(std::uint16_t h) noexcept {
  constexpr std::uint32_t kShiftedExp = 0x7c00u << 13;
  const std::uint32_t magnitude = (std::uint32_t{h} & 0x7fffu) << 13;
  const std::uint32_t exp = magnitude & kShiftedExp;
  const std::uint32_t normal = magnitude + ((127u - 15u) << 23);
  const std::uint32_t infOrNan = normal + ((128u - 16u) << 23);
  // Subnormal halves: let the FPU renormalise by subtracting the implicit bit.
  const float sub = std::bit_cast<float>(normal + (1u << 23)) - std::bit_cast<float>(113u << 23);
  std::uint32_t out =
      exp == kShiftedExp ? infOrNan : (exp == 0 ? std::bit_cast<std::uint32_t>(sub) : normal);
  out |= (std::uint32_t{h} & 0x8000u) << 16;
  return std::bit_cast<float>(out);
}

constexpr std::uint16_t floatToHalfBits(float f) noexcept {
  constexpr std::uint32_t kF32Inf = 255u << 23;
  constexpr std::uint32_t kF16Overflow = (127u + 16u) << 23;
  constexpr std::uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = x & 0x80000000u;
  x ^= sign;
  const std::uint32_t special = x > kF32Inf ? 0x7e00u : 0x7c00u;
  // Subnormal result: adding the magic number makes the FPU round the mantissa for us.
  const std::uint32_t denorm =
      std::bit_cast<std::uint32_t>(std::bit_cast<float>(x) + std::bit_cast<float>(kDenormMagic)) -
      kDenormMagic;
  const std::uint32_t mantOdd = (x >> 13) & 1u;
  const std::uint32_t normal = (x + ((15u - 127u) << 23) + 0xfffu + mantOdd) >> 13;
  const std::uint32_t out = x >= kF16Overflow ? special : (x < (113u << 23) ? denorm : normal);
  return static_cast<std::uint16_t>(out | (sign >> 16));
}

constexpr float bf16BitsToFloat(std::uint16_t b) noexcept {
  return std::bit_cast<float>(std::uint32_t{b} << 16);
}

constexpr std::uint16_t floatToBf16Bits(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const std::uint32_t quietNan = (x >> 16) | 0x40u;
  const bool isNan = (x & 0x7fffffffu) > 0x7f800000u;
  return static_cast<std::uint16_t>(isNan ? quietNan : rounded);
}

inline float toFloat(Float16 h) noexcept {
  return halfBitsToFloat(h.bits);
}
inline float toFloat(BFloat16 b) noexcept {
  return bf16BitsToFloat(b.bits);
}
inline Float16 toFloat16(float f) noexcept {
  return Float16{floatToHalfBits(f)};
}
inline BFloat16 toBFloat16(float f) noexcept {
  return BFloat16{floatToBf16Bits(f)};
}

// Maps a DType to its C++ storage type.
template <DType D>
struct DTypeTraits;
template <>
struct DTypeTraits<DType::f32> {
  using type = float;
};
template <>
struct DTypeTraits<DType::f64> {
  using type = double;
};
template <>
struct DTypeTraits<DType::f16> {
  using type = Float16;
};
template <>
struct DTypeTraits<DType::bf16> {
  using type = BFloat16;
};
template <>
struct DTypeTraits<DType::i8> {
  using type = std::int8_t;
};
template <>
struct DTypeTraits<DType::u8> {
  using type = std::uint8_t;
};
template <>
struct DTypeTraits<DType::i32> {
  using type = std::int32_t;
};
template <>
struct DTypeTraits<DType::i64> {
  using type = std::int64_t;
};

// Calls fn.template operator()<T>() with T the storage type of dtype: the one place
// where a runtime dtype becomes a compile-time type.
template <typename Fn>
decltype(auto) dispatchDType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f64:
      return fn.template operator()<double>();
    case DType::f16:
      return fn.template operator()<Float16>();
    case DType::bf16:
      return fn.template operator()<BFloat16>();
    case DType::i8:
      return fn.template operator()<std::int8_t>();
    case DType::u8:
      return fn.template operator()<std::uint8_t>();
    case DType::i32:
      return fn.template operator()<std::int32_t>();
    case DType::i64:
      return fn.template operator()<std::int64_t>();
    case DType::f32:
      break;
  }
  return fn.template operator()<float>();
}

}  // namespace skyring
