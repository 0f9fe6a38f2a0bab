// Integer-valued test inputs whose exact reductions are representable in every dtype
// (as nccl-tests does), and their expected results computed independently of the
// library (in double / int64, then converted once), so results compare bit for bit.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/dtype.h"
#include "skyring/reduce_op.h"

namespace skyring::testing {

inline bool isSigned(DType d) {
  return d != DType::u8;
}

// Value of element i on `rank`: sums of up to 11 ranks stay within i8, u8, f16 and bf16
// exactness; products are of {1, 2, -1} so they stay exact (or wrap, for 8-bit ints).
inline double inputValue(ReduceOp op, DType dtype, int rank, std::size_t i) {
  const auto k = static_cast<long long>((i * 7 + static_cast<std::size_t>(rank) * 13) % 11);
  if (op == ReduceOp::prod) {
    const long long m = k % 3;
    if (m == 0) return 2;
    if (m == 1 || !isSigned(dtype)) return 1;
    return -1;
  }
  return isSigned(dtype) ? static_cast<double>(k - 5) : static_cast<double>(k);
}

template <typename T>
T fromDouble(double v) {
  if constexpr (std::is_same_v<T, Float16>) {
    return toFloat16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return toBFloat16(static_cast<float>(v));
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(static_cast<std::int64_t>(v));  // modular since C++20
  } else {
    return static_cast<T>(v);
  }
}

// Bytes of `count` elements of rank's input.
inline std::vector<std::byte> makeInput(ReduceOp op, DType dtype, int rank, std::size_t count,
                                        std::size_t first = 0) {
  std::vector<std::byte> out(count * dtypeSize(dtype));
  dispatchDType(dtype, [&]<typename T>() {
    for (std::size_t i = 0; i < count; ++i) {
      T v = fromDouble<T>(inputValue(op, dtype, rank, first + i));
      std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
    }
  });
  return out;
}

// Bytes of the exact result over `ranks` ranks for elements [first, first + count).
inline std::vector<std::byte> expectedResult(ReduceOp op, DType dtype, int ranks, std::size_t count,
                                             std::size_t first = 0) {
  std::vector<std::byte> out(count * dtypeSize(dtype));
  dispatchDType(dtype, [&]<typename T>() {
    for (std::size_t i = 0; i < count; ++i) {
      double acc = inputValue(op, dtype, 0, first + i);
      for (int r = 1; r < ranks; ++r) {
        const double v = inputValue(op, dtype, r, first + i);
        switch (op) {
          case ReduceOp::sum:
          case ReduceOp::avg:
            acc += v;
            break;
          case ReduceOp::prod:
            acc *= v;
            break;
          case ReduceOp::min:
            acc = v < acc ? v : acc;
            break;
          case ReduceOp::max:
            acc = v > acc ? v : acc;
            break;
        }
      }
      T result;
      if (op != ReduceOp::avg) {
        result = fromDouble<T>(acc);
      } else if constexpr (std::is_integral_v<T>) {
        result = static_cast<T>(static_cast<std::int64_t>(acc) / ranks);
      } else if constexpr (std::is_same_v<T, double>) {
        result = acc / ranks;
      } else {
        result =
            fromDouble<T>(static_cast<double>(static_cast<float>(acc) / static_cast<float>(ranks)));
      }
      std::memcpy(out.data() + i * sizeof(T), &result, sizeof(T));
    }
  });
  return out;
}

inline BufferView viewOf(std::vector<std::byte>& bytes, DType dtype) {
  return {bytes.data(), bytes.size() / dtypeSize(dtype), dtype, MemoryKind::host};
}

}  // namespace skyring::testing
