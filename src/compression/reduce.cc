#include "compression/reduce.h"

#include <cstdint>

#include "compression/reduce_ops.h"

namespace skyring::compression {
namespace {

// Plain indexed loops over restrict-free pointers: GCC vectorizes them (with a runtime
// overlap check, since dst may equal a), including the branch-free f16/bf16 paths.
template <ReduceOp Op, typename T>
void reduceLoop(T* dst, const T* a, const T* b, std::size_t n) noexcept {
  if constexpr (std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>) {
    // Loop over the raw bits: GCC does not vectorize loads of the one-member structs.
    using Ac = ops::Accum<T>;
    auto* d = reinterpret_cast<std::uint16_t*>(dst);
    const auto* x = reinterpret_cast<const std::uint16_t*>(a);
    const auto* y = reinterpret_cast<const std::uint16_t*>(b);
    for (std::size_t i = 0; i < n; ++i) {
      d[i] = Ac::store(ops::combine<Op>(Ac::load(T{x[i]}), Ac::load(T{y[i]}))).bits;
    }
  } else {
    for (std::size_t i = 0; i < n; ++i)
      dst[i] = ops::apply<Op>(a[i], b[i]);
  }
}

template <typename T>
void reduceTyped(ReduceOp op, void* dst, const void* a, const void* b, std::size_t n) noexcept {
  auto* d = static_cast<T*>(dst);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::avg:
      return reduceLoop<ReduceOp::sum>(d, x, y, n);
    case ReduceOp::prod:
      return reduceLoop<ReduceOp::prod>(d, x, y, n);
    case ReduceOp::min:
      return reduceLoop<ReduceOp::min>(d, x, y, n);
    case ReduceOp::max:
      return reduceLoop<ReduceOp::max>(d, x, y, n);
  }
}

}  // namespace

void reduce(ReduceOp op, DType dtype, void* dst, const void* a, const void* b,
            std::size_t count) noexcept {
  if (count == 0) return;
  dispatchDType(dtype, [&]<typename T>() { reduceTyped<T>(op, dst, a, b, count); });
}

void divideBy(DType dtype, void* buf, std::size_t count, std::size_t divisor) noexcept {
  if (count == 0 || divisor == 1) return;
  dispatchDType(dtype, [&]<typename T>() {
    auto* p = static_cast<T*>(buf);
    for (std::size_t i = 0; i < count; ++i)
      p[i] = ops::divide(p[i], divisor);
  });
}

}  // namespace skyring::compression
