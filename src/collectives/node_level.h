// The node level of allreduce in a job with several nodes (node_level_allreduce.cc):
// shared memory inside each node, the network only between nodes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "collectives/hierarchical.h"
#include "collectives/node_algorithms.h"
#include "transport/node_channel.h"

namespace skyring::collectives {

struct NodeLevelCall {
  // The level above, over the world: its transport, topology (several nodes), logger,
  // signature, tag, sequence, timeout and, with several clouds, the codec it applies
  // across clouds with the whole buffer's codec state (or fused layout): none with one
  // cloud. Its members, offset and tensorCount are set per piece here.
  const HierarchicalCall& above;
  // This node's ranks (worldRanks() = topology's node group, in order), or null for a
  // rank alone on its node. Borrowed; one call at a time.
  transport::NodeChannel* node;
  // Two node call numbers are used, nodeSequence and nodeSequence + 1.
  std::uint64_t nodeSequence;
  transport::Clock::time_point deadline;
  NodeParams nodeParams;
  std::vector<std::byte>* scratch;  // the node reduce-scatter's, kept by the caller
};

// output = op over every rank of input (avg: one division by the world size), by:
//   1. reduce-scatter inside each node through shared memory (local rank l of a node of
//      L ranks ends with segment l of Partition{count, L});
//   2. each piece of that segment (the buffer is cut at every node's segment boundary,
//      so a piece has exactly one owner per node, as the pieces across clouds in
//      hierarchical_allreduce.cc) allreduced among its owners: a ring over the network
//      with one cloud, hierarchicalAllreduce restricted to the owners with several;
//   3. allgather inside each node through shared memory.
// Node-mates never send each other bytes over the transport. input may equal output.
// Bit for bit the flat ring's result on exactly representable data.
void nodeLevelAllreduce(const NodeLevelCall& call, BufferView input, BufferView output, ReduceOp op,
                        const RingParams& params);

}  // namespace skyring::collectives
