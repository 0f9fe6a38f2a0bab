// Tensor fusion: which ready tensors share one allreduce, and the scaling applied while
// they are copied in and out. Pure: no communication; the engine thread calls it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/reduce_op.h"

namespace skyring::engine {

struct FusionItem {
  DType dtype;
  ReduceOp op;
  std::size_t bytes;
  // Items fuse only within one group: -1 for allreduce, the root for broadcast.
  int group = -1;
  // And only with items of one codec (empty: none): a compressed batch is one compressed
  // allreduce whose tensors keep their own codec state (docs/engine.md, "Compression").
  std::string codec{};
};

// Splits items (in the order every rank agreed on) into batches, each run as one
// collective: items of one group, dtype, op and codec, together at most threshold bytes. An item
// larger than threshold is a batch of its own, and so is an uncompressed one of at least
// inPlaceBytes (it runs in place, with no copy through the fusion buffer). Items of zero bytes
// are left out (they need no collective). Depends only on its arguments, so every rank gets
// the same batches.
std::vector<std::vector<std::size_t>> planFusion(const std::vector<FusionItem>& items,
                                                 std::size_t threshold,
                                                 std::size_t inPlaceBytes = SIZE_MAX);

// The size from which an uncompressed tensor runs as a collective of its own, in place,
// rather than through the fusion buffer: where copying it in and out (two passes over its
// bytes, on cores the reduction also needs) costs more than one more collective (2 (n - 1)
// one-way latencies of the group's slowest link, plus the engine's fixed cost per
// collective); never below 1 MiB. Across clouds (30 ms by the default cost model) that is
// beyond any fusion threshold: there every tensor fuses. Same inputs on every rank (the
// cost model is a setting every rank agrees on), so the same answer.
std::size_t inPlaceBytes(double slowestLatencySeconds, int ranks);

// Multiplies a floating-point buffer in place by factor (f16 and bf16 through float);
// factor 1 leaves the bytes alone. The caller has checked the dtype is floating point.
void scaleInPlace(BufferView buffer, double factor);

}  // namespace skyring::engine
