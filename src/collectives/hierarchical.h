// Hierarchical allreduce over the topology's levels (explained in
// hierarchical_allreduce.cc), and the tag layout its subgroups use.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/compressed_allreduce.h"
#include "collectives/exchange.h"
#include "skyring/logging.h"
#include "skyring/topology.h"
#include "skyring/transport.h"

namespace skyring::collectives {

// Level ids of the subgroups of one call (the level field of transport/tag_layout.h, which
// the SubgroupTransport of each level fills; the innermost group's id names a message, so
// every group of a call, at any depth, needs an id of its own). 1 is the ring inside a
// cloud for the reduce-scatter, 15 the same ring for the allgather (they run at once when
// the call is pipelined); 2..11 the cross-cloud groups of the shards, cycling (see
// hierarchical_allreduce.cc for why a repeat is harmless); 12..14 are free for groups
// nested inside these (a level inside the node, say).
inline constexpr std::uint32_t kCloudGroupId = 1;
inline constexpr std::uint32_t kCloudAllgatherGroupId = 15;
inline constexpr std::uint32_t kFirstShardGroupId = 2;
inline constexpr std::uint32_t kShardGroupIds = 10;
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
  // The ranks that take part (world ranks, any order), every one calling with the same
  // list; empty: all of them. The node level (node_level.h) runs one call per piece
  // among the owners of that piece, one per node. avg still divides by topology.size().
  std::vector<int> members = {};
  // Where input starts in the tensor that codecState and segments describe, and that
  // tensor's count (0: this call's). The node level runs one call per piece of its tensor:
  // the pieces' codec states (keyed by element offset), seeds and segment residuals are
  // then the tensor's, apart between the pieces a rank owns and the same from step to step.
  std::size_t offset = 0;
  std::size_t tensorCount = 0;
  // CollectiveOptions::observer: told each level's phase and each encode and decode.
  CollectiveObserver* observer = nullptr;
};

// output = op over every rank of input, bit for bit what ringAllreduce gives on exactly
// representable data (avg is one division by the world size). input may equal output.
// With a codec the levels it is given compress (compressed_allreduce.h): every rank still
// ends with the same bytes, approximately the reduction.
// Throws InvalidArgument for a level group larger than kMaxSubgroupSize.
void hierarchicalAllreduce(const HierarchicalCall& call, BufferView input, BufferView output,
                           ReduceOp op, const RingParams& params);

}  // namespace skyring::collectives
