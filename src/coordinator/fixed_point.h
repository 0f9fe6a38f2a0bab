// The aggregator's accumulator arithmetic (internal): weighted contributions w * g are
// turned into 128-bit fixed-point integers with 64 fraction bits and summed as integers.
//
// Why: the result must be the same bit for bit whatever order submissions and their chunks
// arrive in (docs/coordinator.md, "Determinism"), and floating-point addition is not
// associative. Each contribution's conversion depends on that contribution alone (the
// product w * g is rounded once, as a double, then truncated toward zero to a multiple of
// 2^-64), and integer addition is associative and commutative, so the sum, and everything
// computed from it, is independent of the order. Wrapping (unsigned) addition makes a
// contribution exactly removable again (undo of an aborted submission), and intermediate
// wrap-around harmless as long as the final sum is in range, which kMaxContribution and
// the limit on contributions per element guarantee.
//
// Precision: absolute 2^-64 (5.4e-20) per weighted contribution; values of w * g below
// that are dropped. Range: |w * g| <= kMaxContribution = 2^52 for each contribution, at
// most kMaxContributionsPerElement (1024) of them, so |sum| < 2^62 < 2^63.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace skyring::coordinator::fixed {

__extension__ using Fixed = unsigned __int128;
__extension__ using SignedFixed = __int128;

inline constexpr int kFractionBits = 64;
inline constexpr double kMaxContribution = 4503599627370496.0;  // 2^52
inline constexpr std::uint32_t kMaxContributionsPerElement = 1024;

// x * 2^64 truncated toward zero, in two's complement. x must be finite with
// |x| <= kMaxContribution (the caller checks).
inline Fixed fromDouble(double x) noexcept {
  const auto bits = std::bit_cast<std::uint64_t>(x);
  const int exponent = static_cast<int>((bits >> 52) & 0x7ffu);
  if (exponent == 0) return 0;  // zero or denormal: far below 2^-64
  const Fixed mantissa = (bits & ((std::uint64_t{1} << 52) - 1)) | (std::uint64_t{1} << 52);
  // x = mantissa * 2^(exponent - 1075); times 2^64.
  const int shift = exponent - 1075 + kFractionBits;
  Fixed magnitude = 0;
  if (shift >= 0) {
    magnitude = mantissa << shift;  // shift <= 64 since |x| <= 2^52
  } else if (shift > -64) {
    magnitude = mantissa >> -shift;
  }
  return (bits >> 63) != 0 ? Fixed{0} - magnitude : magnitude;
}

// sum * 2^-64, rounded once to the nearest double.
inline double toDouble(Fixed sum) noexcept {
  return std::ldexp(static_cast<double>(static_cast<SignedFixed>(sum)), -kFractionBits);
}

}  // namespace skyring::coordinator::fixed
