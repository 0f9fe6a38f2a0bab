// Internal to kernels/codecs*.cu: launch geometry and argument checks the codec kernels
// share, and SKYRING_CUDA_TRY, which returns the first failing CUDA status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "skyring/compression.h"

#define SKYRING_CUDA_TRY(expr)                          \
  do {                                                  \
    const cudaError_t skyringErr_ = (expr);             \
    if (skyringErr_ != cudaSuccess) return skyringErr_; \
  } while (0)

namespace skyring::kernels::detail {

inline constexpr int kThreads = 256;

// Grid-stride kernels: enough blocks to cover n, at most 65535, at least one.
inline unsigned blocksFor(std::size_t n) {
  const std::size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks == 0 ? 1 : (blocks < 65535 ? blocks : 65535));
}

__device__ inline std::size_t firstIndex() {
  return static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::size_t gridStride() {
  return static_cast<std::size_t>(gridDim.x) * blockDim.x;
}

inline std::size_t ceilDiv(std::size_t a, std::size_t b) {
  return (a + b - 1) / b;
}

inline bool aligned4(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 4 == 0;
}

inline bool validBlock(std::uint32_t block) {
  return block >= 1 && block <= compression::kMaxBlock;
}

}  // namespace skyring::kernels::detail
