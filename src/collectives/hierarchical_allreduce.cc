// Hierarchical allreduce: reduce-scatter inside each cloud, allreduce of each shard across
// clouds, allgather inside each cloud. A composition of the ring plans, each run over a
// SubgroupTransport of one level; nothing here moves a byte itself.
//
//   1. Cloud level. The ranks of a cloud form a ring in Topology::ringOrder (node-mates
//      adjacent, so most ring hops stay inside a node: the node level is folded into the
//      cloud ring). Ring reduce-scatter over Partition{count, c} leaves the rank at ring
//      position i holding segment i of the buffer reduced over its cloud, in place in
//      output.
//   2. Across clouds. Each rank carries its own segment over the WAN, all ranks of a
//      cloud in parallel. Clouds of different sizes cut the buffer at different places,
//      so segments do not line up; the rule: cut the buffer at every boundary of every
//      cloud's partition. Each piece between two neighbouring cuts lies inside exactly one
//      segment of every cloud, i.e. has exactly one owner per cloud; those G owners (in
//      cloud order) reduce-scatter the piece among themselves, the owner of each
//      sub-segment divides it once by the world size for avg, and they allgather it. With
//      even clouds the pieces are exactly the segments, and the groups are "the i-th rank
//      of every cloud". Each cloud still sends 2(G-1)/G of the buffer over the WAN in
//      total (the pieces cover it once), spread over all of its ranks.
//   3. Cloud level again: ring allgather of the segments, so every rank has everything.
//
// Ordering and deadlock freedom: a rank handles its pieces in increasing offset, one at a
// time. The lowest piece not yet finished has every owner's earlier pieces finished, so
// all its owners are in it and it completes; by induction every piece does.
//
// Tags: every level uses the call's user tag and sequence number, with its subgroup id in
// bits 12..15 of the step (hierarchical.h). The cloud ring (id 1) and the shard groups
// never share a pair of ranks (one is inside a cloud, the other across), so they cannot
// be confused. Shard groups cycle through ids 2..15: two pieces with one id may share a
// pair of ranks, but both ranks handle their pieces in the same order and wait for a piece
// to finish before the next, so per-pair FIFO matching pairs every message with the right
// receive regardless.
//
// Compression (SKYRING_COMPRESSION): only step 2 crosses clouds, so only step 2 is
// compressed, per piece, by compressedPieceAllreduce; the cloud levels stay exact.
//
// Exactness: lower levels combine with sum where the op is avg, and the single division
// happens on the fully reduced sub-segment as in ringAllreduce, so on exactly
// representable inputs the bytes equal the flat ring's.
#include <algorithm>
#include <string>
#include <vector>

#include "collectives/hierarchical.h"
#include "collectives/ring.h"
#include "compression/reduce.h"
#include "transport/subgroup_transport.h"

namespace skyring::collectives {
namespace {

using topology::Level;
using transport::SubgroupTransport;

transport::Tag subgroupBits(std::uint32_t id) {
  return transport::Tag{id} << kSubgroupIdShift;
}

Exchange exchangeOver(transport::Transport& t, const HierarchicalCall& call) {
  return Exchange(t, call.logger, call.signature, call.userTag, call.sequence, call.timeout);
}

// Index of the non-empty segment of `part` that holds element `pos` (< part.count).
int segmentAt(const Partition& part, std::size_t pos) {
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

}  // namespace

void hierarchicalAllreduce(const HierarchicalCall& call, BufferView input, BufferView output,
                           ReduceOp op, const RingParams& params) {
  const topology::Topology& topo = call.topology;
  const int me = call.world->rank();
  const ErrorContext ctx{me, -1, "hierarchical allreduce"};
  SKYRING_CHECK_ARG(topo.size() == call.world->size(), ctx, "topology of ", topo.size(),
                    " ranks for a group of ", call.world->size());
  const ReduceOp combine = op == ReduceOp::avg ? ReduceOp::sum : op;
  const std::size_t count = input.count;

  // Every cloud's ring, in cloud order: the same on every rank.
  std::vector<std::vector<int>> rings;
  for (const auto& group : topo.groups(Level::cloud)) {
    SKYRING_CHECK_ARG(static_cast<int>(group.size()) <= kMaxSubgroupSize, ctx, "a cloud of ",
                      group.size(), " ranks exceeds ", kMaxSubgroupSize);
    rings.push_back(topo.ringOrder(group));
  }
  const int clouds = static_cast<int>(rings.size());
  SKYRING_CHECK_ARG(clouds <= kMaxSubgroupSize, ctx, clouds, " clouds exceed ", kMaxSubgroupSize);
  const int myCloud = topo.groupIndex(Level::cloud, me);

  // 1. Reduce-scatter inside the cloud.
  SubgroupTransport cloudGroup(call.world, rings[static_cast<std::size_t>(myCloud)],
                               subgroupBits(kCloudGroupId), kSubgroupIdMask);
  Exchange cloudEx = exchangeOver(cloudGroup, call);
  const Partition cloudPart{count, cloudGroup.size()};
  const int pos = cloudGroup.rank();
  ringReduceScatter(cloudEx, input, output.slice(cloudPart.offset(pos), cloudPart.size(pos)),
                    combine, params);

  // 2. Each piece of this rank's segment, allreduced with its owners in the other clouds.
  std::vector<std::size_t> cuts;
  for (const auto& ring : rings) {
    const Partition p{count, static_cast<int>(ring.size())};
    for (int s = 0; s < p.parts; ++s)
      cuts.push_back(p.offset(s));
  }
  cuts.push_back(count);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

  TensorCompressionState* codecState = call.codec != nullptr ? call.codecState : nullptr;
  if (codecState != nullptr && codecState->count != count) {
    codecState->pieces.clear();
    codecState->count = count;
  }

  const std::size_t segBegin = cloudPart.offset(pos);
  const std::size_t segEnd = segBegin + cloudPart.size(pos);
  for (std::size_t j = 0; j + 1 < cuts.size(); ++j) {
    const std::size_t lo = cuts[j];
    if (lo < segBegin || lo >= segEnd) continue;  // pieces never straddle a segment edge
    const std::size_t len = cuts[j + 1] - lo;
    std::vector<int> owners;
    for (const auto& ring : rings) {
      const Partition p{count, static_cast<int>(ring.size())};
      owners.push_back(ring[static_cast<std::size_t>(segmentAt(p, lo))]);
    }
    const auto id = kFirstShardGroupId + static_cast<std::uint32_t>(j % kShardGroupIds);
    SubgroupTransport shardGroup(call.world, std::move(owners), subgroupBits(id), kSubgroupIdMask);
    Exchange shardEx = exchangeOver(shardGroup, call);
    const BufferView piece = output.slice(lo, len);
    if (codecState != nullptr) {
      // The same seed on every owner of the piece: PowerSGD's first Q depends on it.
      const std::uint64_t seed = (std::uint64_t{lo} << 20) ^ len;
      try {
        compressedPieceAllreduce(shardEx, static_cast<float*>(piece.data), len,
                                 op == ReduceOp::avg ? static_cast<std::size_t>(topo.size()) : 1,
                                 *call.codec, codecState->pieces[lo], seed, params);
      } catch (const InvalidArgument& e) {  // a corrupt encoding: nobody may wait for us
        call.world->abort(e.kind(), "rank " + std::to_string(me) + ": " + e.detail());
        throw;
      }
      continue;
    }
    const Partition sub{len, shardGroup.size()};
    const int g = shardGroup.rank();
    const BufferView owned = piece.slice(sub.offset(g), sub.size(g));
    ringReduceScatter(shardEx, piece, owned, combine, params);
    if (op == ReduceOp::avg) {
      compression::divideBy(owned.dtype, owned.data, owned.count,
                            static_cast<std::size_t>(topo.size()));
    }
    ringAllgather(shardEx, piece, params, static_cast<std::uint32_t>(shardGroup.size() - 1));
  }

  // 3. Allgather inside the cloud; its steps follow the reduce-scatter's.
  ringAllgather(cloudEx, output, params, static_cast<std::uint32_t>(cloudGroup.size() - 1));
}

}  // namespace skyring::collectives
