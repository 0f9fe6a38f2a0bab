// Node level of allreduce (node_level.h). Why pieces: nodes of different sizes cut the
// buffer at different places, so local rank l of one node and local rank l of another do
// not hold the same elements. Cutting at every node's boundaries gives pieces that lie
// inside one segment of every node; their owners (one per node) allreduce them. A rank
// handles its pieces in increasing offset, one at a time, so the lowest unfinished piece
// always has all of its owners in it (no deadlock), and two pieces whose groups share a
// pair of ranks (the same subgroup id, see below) are matched in the same order on both.
//
// Tags: the pieces' rings use the call's user tag and sequence with level ids cycling
// through the shard ids of hierarchical.h (kFirstShardGroupId..), as the cross-cloud
// pieces do; with several clouds hierarchicalAllreduce uses its own ids over the world.
// Nothing else of this call is on the transport: the node levels go through shared memory.
//
// Compression: a codec given in the level above (communicator.cc passes one with several
// clouds and the cross-cloud level only, SKYRING_COMPRESSION_LEVELS' default) compresses
// the cross-cloud hop of each piece, as in hierarchical_allreduce.cc; the node levels and
// the ring between nodes of a cloud stay exact, as they are without the node level. A
// rank's momentum (momentumBefore/After) wraps the whole call in communicator.cc: it is
// linear, so reducing the ranks' momenta inside the node first changes nothing.
#include "collectives/node_level.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "collectives/ring.h"
#include "compression/reduce.h"
#include "transport/subgroup_transport.h"

namespace skyring::collectives {
namespace {

using topology::Level;

// Index of the segment of `part` that holds element pos (< part.count).
int ownerOf(const Partition& part, std::size_t pos) {
  int lo = 0;
  int hi = part.parts - 1;
  while (lo < hi) {  // last segment whose offset is <= pos; empty ones start at count
    const int mid = (lo + hi + 1) / 2;
    if (part.offset(mid) <= pos)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One piece among its owners, one cloud: ring reduce-scatter, one division for avg,
// ring allgather.
void pieceRing(const HierarchicalCall& above, std::vector<int> owners, std::uint32_t id,
               BufferView piece, ReduceOp op, const RingParams& params) {
  const ReduceOp combine = op == ReduceOp::avg ? ReduceOp::sum : op;
  transport::SubgroupTransport group(above.world, std::move(owners),
                                     transport::SubgroupTransport::Scope::level(id),
                                     "node level (ring of local rank shards)");
  Exchange ex(group, above.logger, above.signature, above.userTag, above.sequence, above.timeout);
  ex.diagnoseOver(*above.world);
  // Between nodes of one cloud: the cloud level's network.
  ex.recordPhases({above.observer, "cloud", 0});
  const PhaseSpan phase(ex.phases(), "cloud allreduce", piece.bytes());
  const Partition sub{piece.count, group.size()};
  const int g = group.rank();
  if (group.size() > 1) ringReduceScatterInPlace(ex, piece, piece, combine, params);
  if (op == ReduceOp::avg) {
    compression::divideBy(piece.dtype, piece.slice(sub.offset(g), sub.size(g)).data, sub.size(g),
                          static_cast<std::size_t>(above.topology.size()));
  }
  if (group.size() > 1)
    ringAllgather(ex, piece, params, static_cast<std::uint32_t>(group.size() - 1));
}

// Runs one node phase (fn(deadline)). A phase that stalls for 4/5 of the timeout joins
// the call's stall diagnosis over the world, naming the node-mate it waits on, as a stalled
// transport wait does (exchange.h): the ranks waiting at the other levels then hear whom
// this rank waits on, instead of blaming this rank.
template <typename Fn>
void nodePhase(const NodeLevelCall& call, Fn&& fn) {
  const HierarchicalCall& above = call.above;
  const auto diagnoseAt =
      std::min(call.deadline, transport::Clock::now() + above.timeout - above.timeout / 5);
  try {
    fn(diagnoseAt);
  } catch (const Timeout& e) {
    if (e.peer() < 0 || transport::Clock::now() >= call.deadline) throw;
    Exchange ex(*above.world, above.logger, above.signature, above.userTag, above.sequence,
                above.timeout);
    ex.stalledOn(e.peer());
  }
}

}  // namespace

void nodeLevelAllreduce(const NodeLevelCall& call, BufferView input, BufferView output, ReduceOp op,
                        const RingParams& params) {
  const HierarchicalCall& above = call.above;
  const topology::Topology& topo = above.topology;
  const int me = above.world->rank();
  const std::size_t count = input.count;
  const ReduceOp combine = op == ReduceOp::avg ? ReduceOp::sum : op;
  const auto& nodes = topo.groups(Level::node);
  const auto& mates = topo.groupOf(Level::node, me);
  const Partition mine{count, static_cast<int>(mates.size())};
  const int local = topo.indexInGroup(Level::node, me);

  const PhaseRecorder nodeLevel{above.observer, "node", 0};
  // 1. Inside the node.
  if (call.node != nullptr) {
    const PhaseSpan phase(nodeLevel, "node reduce-scatter", input.bytes());
    nodePhase(call, [&](transport::Clock::time_point deadline) {
      nodeReduceScatter(*call.node, call.nodeSequence, above.userTag, input, output, combine,
                        deadline, call.nodeParams, *call.scratch);
    });
  } else if (input.data != output.data) {
    std::memcpy(output.data, input.data, input.bytes());
  }

  // 2. Between nodes, piece by piece of this rank's segment.
  std::vector<std::size_t> cuts{count};
  for (const auto& node : nodes) {
    const Partition p{count, static_cast<int>(node.size())};
    for (int s = 0; s < p.parts; ++s)
      cuts.push_back(p.offset(s));
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  const std::size_t segBegin = mine.offset(local);
  const std::size_t segEnd = segBegin + mine.size(local);
  for (std::size_t j = 0; j + 1 < cuts.size(); ++j) {
    const std::size_t lo = cuts[j];
    if (lo < segBegin || lo >= segEnd) continue;  // pieces never straddle a segment edge
    std::vector<int> owners;
    for (const auto& node : nodes)
      owners.push_back(node[static_cast<std::size_t>(
          ownerOf(Partition{count, static_cast<int>(node.size())}, lo))]);
    owners = topo.ringOrder(owners);  // clouds contiguous: the ring crosses each WAN once
    const BufferView piece = output.slice(lo, cuts[j + 1] - lo);
    if (topo.clouds() == 1) {
      pieceRing(above, std::move(owners),
                kFirstShardGroupId + static_cast<std::uint32_t>(j % kShardGroupIds), piece, op,
                params);
    } else {
      HierarchicalCall level = above;
      level.members = std::move(owners);
      // The codec, if any, compresses the piece across clouds; its states are keyed by
      // the piece's elements in the whole buffer, so a rank's pieces keep theirs apart.
      level.offset = lo;
      level.tensorCount = count;
      hierarchicalAllreduce(level, piece, piece, op, params);
    }
  }

  // 3. Inside the node again.
  if (call.node != nullptr) {
    const PhaseSpan phase(nodeLevel, "node allgather", output.bytes());
    nodePhase(call, [&](transport::Clock::time_point deadline) {
      nodeAllgather(*call.node, call.nodeSequence + 1, above.userTag, output, op, deadline,
                    call.nodeParams);
    });
  }
}

}  // namespace skyring::collectives
