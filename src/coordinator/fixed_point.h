// The aggregator's accumulator arithmetic (internal): weighted contributions w * g are
// turned into 128-bit fixed-point integers with 64 fraction bits and summed as integers.
//
// Why: the result must be the same bit for bit whatever order submissions and their chunks
// arrive in (docs/coordinator.md, "Determinism"), and floating-point addition is not
// associative. Each contribution's conversion depends on that contribution alone (the
// product w * g is rounded once, as a double, then truncated toward zero to a multiple of
// 2^-63), and integer addition is associative and commutative, so the sum, and everything
// computed from it, is independent of the order. Wrapping (unsigned) addition makes a
// contribution exactly removable again (undo of an aborted submission), and intermediate
// wrap-around harmless as long as the final sum is in range, which kMaxContribution and
// the limit on contributions per element guarantee.
//
// Precision: absolute 2^-63 (1.1e-19) per weighted contribution; values of w * g below
// that are dropped. Range: |w * g| <= kMaxContribution = 2^52 for each contribution, at
// most kMaxContributionsPerElement (1024) of them, so |sum| < 2^62 < 2^63.
#pragma once

#include <cmath>
#include <cstdint>

namespace skyring::coordinator::fixed {

__extension__ using Fixed = unsigned __int128;
__extension__ using SignedFixed = __int128;

inline constexpr int kFractionBits = 64;
inline constexpr double kMaxContribution = 4503599627370496.0;  // 2^52
inline constexpr std::uint32_t kMaxContributionsPerElement = 1024;

// x as a multiple of 2^-63 (truncated toward zero), scaled by 2^64, in two's complement.
// x must be finite with |x| <= kMaxContribution (the caller checks). The integer part and
// the fraction are split exactly (x - trunc(x) is representable), and each is converted
// by one hardware truncation: no branches, a few cycles per element.
inline Fixed fromDouble(double x) noexcept {
  const double whole = std::trunc(x);
  const double fraction = x - whole;  // exact; |fraction| < 1, the sign of x
  const auto high = static_cast<std::int64_t>(whole);
  const auto low = static_cast<std::int64_t>(fraction * 0x1p63);  // |.| < 2^63
  return (static_cast<Fixed>(static_cast<SignedFixed>(high)) << kFractionBits) +
         (static_cast<Fixed>(static_cast<SignedFixed>(low)) << 1);
}

// sum * 2^-64, rounded once to the nearest double.
inline double toDouble(Fixed sum) noexcept {
  return static_cast<double>(static_cast<SignedFixed>(sum)) * 0x1p-64;  // exact scaling
}

}  // namespace skyring::coordinator::fixed
