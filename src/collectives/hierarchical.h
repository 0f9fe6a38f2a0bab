// Hierarchical allreduce over the topology's levels (explained in
// hierarchical_allreduce.cc), and the tag layout its subgroups use.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "collectives/algorithms.h"
#include "collectives/compressed_allreduce.h"
#include "collectives/exchange.h"
#include "skyring/logging.h"
#include "skyring/topology.h"
#include "skyring/transport.h"

namespace skyring::collectives {

// Subgroup tag layout. The collectives' 16-bit step field (tags.h, bits 0..15) holds ring
// steps below 2n; a subgroup of up to 2048 ranks needs only bits 0..11, so bits 12..15
// carry the id of the subgroup a message belongs to (transport/subgroup_transport.h ORs
// it in and rejects a step that would reach it). The UCX mapping (ucx_tags.h) folds only
// the top bits of the tag into the sequence number, so these bits survive it intact.
inline constexpr transport::Tag kSubgroupIdShift = 12;
inline constexpr transport::Tag kSubgroupIdMask = transport::Tag{0xf} << kSubgroupIdShift;
// Id 0 is the parent itself (never used by a hierarchical call, which sends nothing on
// the parent directly); 1 is the ring inside a cloud for the reduce-scatter, 15 the same
// ring for the allgather (they run at once when the call is pipelined); 2..14 the
// cross-cloud groups of the shards, cycling (see hierarchical_allreduce.cc for why a
// repeat is harmless).
inline constexpr std::uint32_t kCloudGroupId = 1;
inline constexpr std::uint32_t kCloudAllgatherGroupId = 15;
inline constexpr std::uint32_t kFirstShardGroupId = 2;
inline constexpr std::uint32_t kShardGroupIds = 13;
// Pipelining of large calls (hierarchical_allreduce.cc): at most this many slices, each
// of at least this many bytes.
inline constexpr int kMaxSlices = 8;
inline constexpr std::size_t kMinSliceBytes = std::size_t{4} << 20;
// Largest group a level may have (ring allreduce steps run to 2n - 3).
inline constexpr int kMaxSubgroupSize = 2048;

struct HierarchicalCall {
  std::shared_ptr<transport::Transport> world;  // the communicator's transport
  const topology::Topology& topology;           // same size as world
  const Logger& logger;
  CallSignature signature;  // of the user's call: stall reports describe it
  std::uint32_t userTag;
  std::uint32_t sequence;
  std::chrono::milliseconds timeout;
  // The codec (null: full precision) and the tensor's state, and the levels it compresses;
  // used for f32 sum and avg only (the caller checks, and rejects PowerSGD in a cloud).
  const compression::Compressor* codec = nullptr;
  TensorCompressionState* codecState = nullptr;
  // A fused buffer's tensors (CollectiveOptions::segments): each piece's codec state is
  // loaded from them and stored back (elementwise codecs only); codecState then only
  // holds this call's pieces.
  const SegmentLayout* segments = nullptr;
  bool compressCloud = false;
  bool compressCrossCloud = true;
};

// output = op over every rank of input, bit for bit what ringAllreduce gives on exactly
// representable data (avg is one division by the world size). input may equal output.
// With a codec the levels it is given compress (compressed_allreduce.h): every rank still
// ends with the same bytes, approximately the reduction.
// Throws InvalidArgument for a level group larger than kMaxSubgroupSize.
void hierarchicalAllreduce(const HierarchicalCall& call, BufferView input, BufferView output,
                           ReduceOp op, const RingParams& params);

}  // namespace skyring::collectives
