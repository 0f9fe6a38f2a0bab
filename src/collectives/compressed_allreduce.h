// Compressed allreduce of one piece among the ranks of one group: the cross-cloud level of
// hierarchical allreduce when a codec is configured (SKYRING_COMPRESSION). Explained in
// compressed_allreduce.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/exchange.h"
#include "skyring/compression.h"

namespace skyring::collectives {

// What one rank keeps between calls for one piece of one tensor.
struct PieceCompressionState {
  // Elementwise codecs: toOwner[j] encodes the block this rank sends to group rank j (the
  // rank's own entry is unused); reduced re-encodes the sum of the block it owns.
  // PowerSGD: toOwner[0] is the piece's state (residual, warm-started Q).
  std::vector<compression::CompressorState> toOwner;
  compression::CompressorState reduced;
};

// Every piece of one tensor, by its offset in the tensor; reset when the layout changes.
struct TensorCompressionState {
  std::size_t count = 0;
  int groupShape = 0;  // hash of the owners' group sizes, to notice a different layout
  std::map<std::size_t, PieceCompressionState> pieces;
};

// piece (f32, len elements) holds this rank's contribution on entry and, on return, the
// same bytes on every rank of ex's group: decode(encode(sum over the group)) divided by
// divisor (1 for sum, the world size for avg). seed must be equal on every rank of the
// group for the same piece (PowerSGD's first Q comes from it). Throws InvalidArgument for
// corrupt encodings, after aborting the group so no rank waits for this one.
void compressedPieceAllreduce(Exchange& ex, float* piece, std::size_t len, std::size_t divisor,
                              const compression::Compressor& codec, PieceCompressionState& state,
                              std::uint64_t seed, const RingParams& params);

}  // namespace skyring::collectives
