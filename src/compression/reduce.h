// Elementwise reductions on host memory: the CPU twin of kernels/reduce.cu.
//
// Both twins compute exactly the same bytes: f16 and bf16 are widened to f32, combined,
// and rounded back to nearest-even with the conversions of skyring/dtype.h; integer sum
// and prod wrap; avg is a sum here and is finished by divideBy().
#pragma once

#include <cstddef>

#include "skyring/dtype.h"
#include "skyring/reduce_op.h"

namespace skyring::compression {

// dst[i] = a[i] op b[i] for i < count. dst may be the same pointer as a or b; other
// overlap is not allowed.
void reduce(ReduceOp op, DType dtype, void* dst, const void* a, const void* b,
            std::size_t count) noexcept;

// buf[i] = buf[i] / divisor: the last step of avg. Floats divide in their accumulation
// type (f32 for f16/bf16); integers truncate toward zero.
void divideBy(DType dtype, void* buf, std::size_t count, std::size_t divisor) noexcept;

}  // namespace skyring::compression
