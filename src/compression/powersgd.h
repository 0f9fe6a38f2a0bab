// PowerSGD (Vogels et al., 2019) in explicit phases, so that the collective layer can
// allreduce the factors between them:
//
//   powerSgdComputeP    M = input (+ residual); P = M Q            -> allreduce P (sum)
//   powerSgdComputeQ    orthonormalise P; Q = M^T P                 -> allreduce Q, / world
//   powerSgdDecompress  out = P Q^T; residual = M - out; keep Q as the next warm start
//
// out is then the average over ranks of the rank-r approximation. Every rank must use
// the same seed (CompressorState::seed) so that the first Q is the same everywhere; after
// that, Q stays identical across ranks because it is the allreduced one.
//
// Shape: a tensor of n elements is read as a rows x cols row-major matrix with cols =
// ceil(sqrt(n)) and rows = ceil(n / cols), the last row zero-padded: near-square keeps
// (rows + cols) * rank, the bytes sent, near its minimum 2 sqrt(n) rank. The rank used is
// min(rank, rows, cols).
//
// Thread-safety: as Compressor; each state is used by one thread at a time. Spans are
// borrowed; sizes are checked (InvalidArgument).
#pragma once

#include <cstddef>
#include <span>

#include "skyring/compression.h"

namespace skyring::compression {

struct PowerSgdShape {
  std::size_t count = 0;
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::size_t rank = 0;
  std::size_t pSize() const noexcept { return rows * rank; }
  std::size_t qSize() const noexcept { return cols * rank; }
};

PowerSgdShape powerSgdShape(std::size_t count, std::size_t rank) noexcept;
// A tensor's own matrix (rows = its first dimension, cols = the product of the others),
// as PyTorch's PowerSGD hook reads it; rank min(rank, rows, cols).
PowerSgdShape powerSgdMatrix(std::size_t rows, std::size_t cols, std::size_t rank) noexcept;

// Phase 1. Keeps M in state.residual until phase 3; initialises state.q from the seed on
// first use. p.size() == shape.pSize().
void powerSgdComputeP(std::span<const float> input, bool errorFeedback, const PowerSgdShape& shape,
                      CompressorState& state, std::span<float> p);
// Phase 2, on the allreduced p: orthonormalises its columns in place (Gram-Schmidt), then
// q = M^T p. q.size() == shape.qSize().
void powerSgdComputeQ(const PowerSgdShape& shape, CompressorState& state, std::span<float> p,
                      std::span<float> q);
// Phase 3, on the allreduced and averaged q: out = p q^T (out.size() == count); the
// residual becomes M - out with error feedback, zero without; state.q = q.
void powerSgdDecompress(bool errorFeedback, const PowerSgdShape& shape, CompressorState& state,
                        std::span<const float> p, std::span<const float> q, std::span<float> out);

// out = p q^T, the first shape.count elements: the decoder, and the last step of phase 3.
void powerSgdExpand(const PowerSgdShape& shape, std::span<const float> p, std::span<const float> q,
                    std::span<float> out) noexcept;

}  // namespace skyring::compression
