// Compressed allreduce of one piece among the ranks of one group: the cross-cloud level of
// hierarchical allreduce when a codec is configured (SKYRING_COMPRESSION). Explained in
// compressed_allreduce.cc.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
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
// Each map is used by one stage of a pipelined call only (hierarchical_allreduce.cc).
struct TensorCompressionState {
  std::size_t count = 0;
  int groupShape = 0;  // hash of the owners' group sizes, to notice a different layout
  std::map<std::size_t, PieceCompressionState> pieces;  // across clouds, by piece offset
  // With the cloud level compressed: its reduce-scatter, by slice offset, and its
  // allgather, by piece offset.
  std::map<std::size_t, PieceCompressionState> cloudSlices;
  std::map<std::size_t, compression::CompressorState> cloudPieces;
  // Momentum compression (CompressionOptions::momentum): this rank's momentum, and the
  // last decoded result (the same on every rank).
  std::vector<float> momentum;
  std::vector<float> lastOutput;
};

// Fused buffers (CollectiveOptions::segments): each tensor keeps its own codec state,
// by element, so that it follows the tensor whatever else the buffer holds this time. One
// error-feedback residual per place where a rank encodes an element: the block it sends
// to the piece's owner across clouds, the block it owns and re-encodes there, and the
// same two inside a cloud (SKYRING_COMPRESSION_LEVELS=cloud).
enum class Residual : std::uint8_t { crossSend, crossReduced, cloudSend, cloudGather };
inline constexpr std::size_t kResiduals = 4;

// One tensor's state, kept by the communicator under (spec, tensor name).
struct SegmentCodecState {
  std::size_t count = 0;
  std::array<std::vector<float>, kResiduals> residual;  // count floats each, once used
  std::uint64_t calls = 0;                              // compressed allreduces so far
  // Where the tensor was in the last buffer (offset, buffer count): the cloud allgather's
  // residual is dropped when it moves (communicator.cc says why).
  std::size_t lastOffset = 0;
  std::size_t lastBuffer = 0;
  // PowerSGD (compressed_segments.cc): the residual M and the warm-start Q of the tensor's
  // matrix, rows x cols.
  compression::CompressorState powerSgd;
  std::size_t rows = 0;
  std::vector<float> momentum;  // as TensorCompressionState's
  std::vector<float> lastOutput;
};

// The tensors of one fused buffer, in order and covering it, each with its state.
struct SegmentLayout {
  struct Entry {
    std::size_t offset;  // in the buffer, elements
    std::size_t count;
    SegmentCodecState* state;
  };
  std::vector<Entry> tensors;
  std::uint64_t salt = 0;  // differs from call to call, equal on every rank: seeds the call

  // role's residual of buffer elements [at, at + out.size()) into out (zeros where unused
  // so far), and back. Different roles may be used from different threads at once.
  void load(Residual role, std::size_t at, std::span<float> out) const;
  void store(Residual role, std::size_t at, std::span<const float> in) const;
};

// A piece's states for compressedPieceAllreduce (send and reduced) or
// compressedReduceScatter (send only: no reduced role), made for this call from the
// layout's residuals; storePiece writes what the call left in them back.
PieceCompressionState loadPiece(const SegmentLayout& layout, Residual send,
                                std::optional<Residual> reduced, std::size_t at, std::size_t len,
                                int groupSize, int me, const compression::Compressor& codec,
                                std::uint64_t seed);
void storePiece(const SegmentLayout& layout, Residual send, std::optional<Residual> reduced,
                std::size_t at, std::size_t len, int me, const PieceCompressionState& state);

// Momentum compression around a compressed call of data (f32, count elements): before it,
// data becomes this rank's momentum u = beta u + data; after it, data (the decoded
// momentum m) becomes m - beta m_prev and m is kept. Per tensor of layout when given, else
// in state. Explained in docs/compression.md.
void momentumBefore(float* data, std::size_t count, double beta, const SegmentLayout* layout,
                    TensorCompressionState* state);
void momentumAfter(float* data, std::size_t count, double beta, const SegmentLayout* layout,
                   TensorCompressionState* state);

// piece (f32, len elements) holds this rank's contribution on entry and, on return, the
// same bytes on every rank of ex's group: decode(encode(sum over the group)) divided by
// divisor (1 for sum, the world size for avg). seed must be equal on every rank of the
// group for the same piece (PowerSGD's first Q comes from it). Throws InvalidArgument for
// corrupt encodings, after aborting the group so no rank waits for this one.
void compressedPieceAllreduce(Exchange& ex, float* piece, std::size_t len, std::size_t divisor,
                              const compression::Compressor& codec, PieceCompressionState& state,
                              std::uint64_t seed, const RingParams& params);

// The first half of compressedPieceAllreduce, for a level whose result is not final: on
// return block ex.rank() of Partition{len, ex.size()} of piece holds the sum over the
// group (the others' contributions decoded, this rank's own exact); the rest of piece is
// left as it was. seed as above (it seeds the per-block states).
void compressedReduceScatter(Exchange& ex, float* piece, std::size_t len,
                             const compression::Compressor& codec, PieceCompressionState& state,
                             std::uint64_t seed);

// A region of the buffer that one rank owns and encodes as a unit in compressedAllgather.
struct OwnedPiece {
  std::size_t offset;
  std::size_t len;
  compression::CompressorState* state;  // the owner's (null on the other ranks)
};

// Allgather of encoded pieces: owned[r] lists, in increasing offset, the pieces of buffer
// that group rank r holds; it encodes each with its state (error feedback on the sender,
// as step 3 above) and every rank, r included, decodes those bytes into place. An
// elementwise codec only (not PowerSGD). Pieces that hold the same values with the same
// state history on other ranks encode to the same bytes, which is what keeps clouds of
// different sizes identical (hierarchical_allreduce.cc). Uses steps `step` and step + 1
// of ex; compressedPieceAllreduce's step 3 is this with one block per rank.
void compressedAllgather(Exchange& ex, float* buffer,
                         const std::vector<std::vector<OwnedPiece>>& owned,
                         const compression::Compressor& codec, std::uint32_t step = 0);

}  // namespace skyring::collectives
