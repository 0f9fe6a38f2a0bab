// Grid-stride elementwise kernels. One template per (op, dtype) pair, instantiated from
// the same dispatch as the CPU reducer, so the instantiation matrix has one source.
#include "compression/reduce_ops.h"
#include "kernels/reduce.h"

namespace skyring::kernels {
namespace {

constexpr int kThreads = 256;

template <ReduceOp Op, typename T>
__global__ void reduceKernel(T* dst, const T* a, const T* b, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = compression::ops::apply<Op>(a[i], b[i]);
  }
}

template <typename T>
__global__ void divideKernel(T* buf, std::size_t n, std::uint64_t divisor) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    buf[i] = compression::ops::divide(buf[i], divisor);
  }
}

unsigned blocksFor(std::size_t n) {
  const std::size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
}

template <ReduceOp Op, typename T>
cudaError_t launch(void* dst, const void* a, const void* b, std::size_t n, cudaStream_t s) {
  reduceKernel<Op, T><<<blocksFor(n), kThreads, 0, s>>>(
      static_cast<T*>(dst), static_cast<const T*>(a), static_cast<const T*>(b), n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t reduce(ReduceOp op, DType dtype, void* dst, const void* a, const void* b,
                   std::size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return dispatchDType(dtype, [&]<typename T>() {
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::avg:
        return launch<ReduceOp::sum, T>(dst, a, b, count, stream);
      case ReduceOp::prod:
        return launch<ReduceOp::prod, T>(dst, a, b, count, stream);
      case ReduceOp::min:
        return launch<ReduceOp::min, T>(dst, a, b, count, stream);
      case ReduceOp::max:
        break;
    }
    return launch<ReduceOp::max, T>(dst, a, b, count, stream);
  });
}

cudaError_t divideBy(DType dtype, void* buf, std::size_t count, std::size_t divisor,
                     cudaStream_t stream) {
  if (count == 0 || divisor == 1) return cudaSuccess;
  return dispatchDType(dtype, [&]<typename T>() {
    divideKernel<T>
        <<<blocksFor(count), kThreads, 0, stream>>>(static_cast<T*>(buf), count, divisor);
    return cudaGetLastError();
  });
}

}  // namespace skyring::kernels
