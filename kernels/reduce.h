// CUDA twin of src/compression/reduce.h: the same elementwise reductions on device
// memory, producing the same bytes (both use compression/reduce_ops.h).
//
// Launches are asynchronous on `stream`; the return value is the launch status.
// Pointers must be device (or managed) memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "skyring/dtype.h"
#include "skyring/reduce_op.h"

namespace skyring::kernels {

cudaError_t reduce(ReduceOp op, DType dtype, void* dst, const void* a, const void* b,
                   std::size_t count, cudaStream_t stream);

cudaError_t divideBy(DType dtype, void* buf, std::size_t count, std::size_t divisor,
                     cudaStream_t stream);

}  // namespace skyring::kernels
