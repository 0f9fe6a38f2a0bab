// The arithmetic of each ReduceOp on one element, shared by the CPU reducer and the
// CUDA kernels so both produce the same bytes. Every function is usable on host and
// device (nvcc compiles this with --expt-relaxed-constexpr).
#pragma once

#include <cstdint>
#include <type_traits>

#include "skyring/dtype.h"
#include "skyring/reduce_op.h"

namespace skyring::compression::ops {

// How each storage type is combined: 16-bit floats in float; the rest in themselves.
template <typename T>
struct Accum {
  using type = T;
  static constexpr T load(T v) { return v; }
  static constexpr T store(T v) { return v; }
};
template <>
struct Accum<Float16> {
  using type = float;
  static constexpr float load(Float16 v) { return halfBitsToFloat(v.bits); }
  static constexpr Float16 store(float v) { return Float16{floatToHalfBits(v)}; }
};
template <>
struct Accum<BFloat16> {
  using type = float;
  static constexpr float load(BFloat16 v) { return bf16BitsToFloat(v.bits); }
  static constexpr BFloat16 store(float v) { return BFloat16{floatToBf16Bits(v)}; }
};

// Integer arithmetic in the unsigned type wraps instead of overflowing (UB for signed).
template <typename A>
constexpr A add(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
  } else {
    return a + b;
  }
}
template <typename A>
constexpr A mul(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    // Promote to at least unsigned int so that u16*u16 cannot overflow a signed int.
    using U = std::common_type_t<std::make_unsigned_t<A>, unsigned>;
    return static_cast<A>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b)));
  } else {
    return a * b;
  }
}

template <ReduceOp Op, typename A>
constexpr A combine(A a, A b) {
  if constexpr (Op == ReduceOp::sum || Op == ReduceOp::avg) {
    return add(a, b);
  } else if constexpr (Op == ReduceOp::prod) {
    return mul(a, b);
  } else if constexpr (Op == ReduceOp::min) {
    return b < a ? b : a;
  } else {
    return a < b ? b : a;
  }
}

template <ReduceOp Op, typename T>
constexpr T apply(T a, T b) {
  using Ac = Accum<T>;
  return Ac::store(combine<Op>(Ac::load(a), Ac::load(b)));
}

template <typename T>
constexpr T divide(T v, std::uint64_t divisor) {
  using Ac = Accum<T>;
  using A = typename Ac::type;
  if constexpr (std::is_integral_v<A>) {
    return Ac::store(static_cast<A>(static_cast<std::int64_t>(Ac::load(v)) /
                                    static_cast<std::int64_t>(divisor)));
  } else {
    return Ac::store(Ac::load(v) / static_cast<A>(divisor));
  }
}

}  // namespace skyring::compression::ops
