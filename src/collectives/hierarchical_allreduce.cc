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
// Tags: every level uses the call's user tag and sequence number, with its own level id
// (hierarchical.h) in the tag's level field (transport/tag_layout.h). The cloud ring has two
// ids, 1 for the reduce-scatter and 15 for the allgather (they run at once when pipelined); a
// cloud ring and a shard group never share a pair of ranks (one is inside a cloud, the
// other across), so they cannot be confused. Shard groups cycle through ids 2..11: two
// pieces with one id may share a pair of ranks, but both ranks handle their pieces in the
// same order and wait for a piece to finish before the next, so per-pair FIFO matching
// pairs every message with the right receive regardless.
//
// Pipelining: a call of at least 2 kMinSliceBytes whose WAN share takes long against
// the cost model's cross-cloud latency is cut into up to kMaxSlices slices, and the three
// steps run as three stages in three threads, each taking the slices in order: slice s
// crosses clouds while slice s + 1 is reduced and slice s - 1 gathered inside the cloud,
// so the levels inside the cloud hide behind the WAN. Each slice is a complete
// hierarchical allreduce of its elements; the stages are ordered per slice by two
// counters. With a small latency-to-bandwidth product only (each slice pays the WAN's
// latencies again).
//
// Compression (SKYRING_COMPRESSION, at the levels of SKYRING_COMPRESSION_LEVELS): step 2
// per piece by compressedPieceAllreduce (by default the only compressed level: it is the
// one that crosses clouds); steps 1 and 3 by compressedReduceScatter over the cloud and
// compressedAllgather of the pieces (each piece encoded alone, see allgatherInCloud). The
// codec states live in the tensor's TensorCompressionState, one map per stage.
//
// Exactness: lower levels combine with sum where the op is avg, and the single division
// happens on the fully reduced sub-segment as in ringAllreduce, so on exactly
// representable inputs the bytes equal the flat ring's.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "collectives/hierarchical.h"
#include "collectives/ring.h"
#include "compression/reduce.h"
#include "transport/subgroup_transport.h"

namespace skyring::collectives {
namespace {

using topology::Level;
using transport::SubgroupTransport;

// An exchange of one level whose phases go to the call's observer as level's, from
// `thread` (CollectivePhase::thread).
Exchange exchangeOver(transport::Transport& t, const HierarchicalCall& call, std::string_view level,
                      int thread = 0) {
  Exchange ex(t, call.logger, call.signature, call.userTag, call.sequence, call.timeout);
  ex.diagnoseOver(*call.world);  // a stall anywhere is diagnosed by the whole group
  ex.recordPhases({call.observer, level, thread});
  return ex;
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

// What every stage of one call needs: the rings, this rank's place, the op.
struct Plan {
  const HierarchicalCall& call;
  const RingParams& params;
  ReduceOp op;
  ReduceOp combine;                     // what the levels below the top combine with (sum for avg)
  std::vector<std::vector<int>> rings;  // every cloud's ring, in cloud order
  int myCloud = 0;
  int me = 0;

  const std::vector<int>& myRing() const { return rings[static_cast<std::size_t>(myCloud)]; }
  Partition cloudPart(std::size_t count) const {
    return {count, static_cast<int>(myRing().size())};
  }
  int pos() const {
    const auto& r = myRing();
    return static_cast<int>(std::find(r.begin(), r.end(), me) - r.begin());
  }
};

// Codec states start from seeds that every rank computes alike for the same place in the
// buffer (and the same level), so that owners in different clouds stay in step.
std::uint64_t seedOf(std::size_t offset, std::size_t len, std::uint64_t level) {
  return ((std::uint64_t{offset} << 20) ^ len) + (level << 58);
}

// A corrupt encoding in a stage (the codec's decoder says InvalidArgument): bytes from the
// network are a TransportError, and the world is aborted so that nobody waits for this rank.
template <typename Fn>
void abortingOnBadBytes(const Plan& plan, Fn&& fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    const std::string reason =
        "rank " + std::to_string(plan.call.world->jobRank(plan.me)) + ": " + e.detail();
    plan.call.world->abort(ErrorKind::transport, reason);
    SKYRING_THROW(TransportError,
                  (ErrorContext{plan.call.world->jobRank(plan.me), -1, "hierarchical allreduce"}),
                  reason);
  }
}

// The cuts of `count` elements at every cloud's segment boundaries, and count itself.
std::vector<std::size_t> piecesCuts(const Plan& plan, std::size_t count) {
  std::vector<std::size_t> cuts;
  for (const auto& ring : plan.rings) {
    const Partition p{count, static_cast<int>(ring.size())};
    for (int s = 0; s < p.parts; ++s)
      cuts.push_back(p.offset(s));
  }
  cuts.push_back(count);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  return cuts;
}

// 1. Reduce-scatter of in inside the cloud; this rank's segment lands in out (the rest of
// out, this slice's, is scratch until the allgather). `base`: the slice's offset
// in the tensor (HierarchicalCall::offset).
void reduceScatterInCloud(const Plan& plan, Exchange& ex, BufferView in, BufferView out,
                          std::size_t base) {
  const HierarchicalCall& call = plan.call;
  // A cloud of one rank (the node level's pieces, one owner per node) has no such phase.
  const PhaseSpan phase(ex.size() > 1 ? ex.phases() : PhaseRecorder{}, "cloud reduce-scatter",
                        in.bytes());
  if (call.codec == nullptr || !call.compressCloud) {
    ringReduceScatterInPlace(ex, in, out, plan.combine, plan.params);
    return;
  }
  if (in.data != out.data) std::memcpy(out.data, in.data, in.bytes());
  auto& state = call.codecState->cloudSlices[base];
  if (call.segments != nullptr) {
    state = loadPiece(*call.segments, Residual::cloudSend, std::nullopt, base, out.count, ex.size(),
                      ex.rank(), *call.codec, seedOf(base, out.count, 1));
  }
  abortingOnBadBytes(plan, [&] {
    compressedReduceScatter(ex, static_cast<float*>(out.data), out.count, *call.codec, state,
                            seedOf(base, out.count, 1));
  });
  if (call.segments != nullptr) {
    storePiece(*call.segments, Residual::cloudSend, std::nullopt, base, out.count, ex.rank(),
               state);
  }
}

// 2. Each piece of this rank's segment of `slice` (which starts at element `base` of the
// tensor), allreduced with its owners in the other clouds.
void acrossClouds(const Plan& plan, BufferView slice, std::size_t base) {
  const HierarchicalCall& call = plan.call;
  const std::size_t count = slice.count;
  const std::vector<std::size_t> cuts = piecesCuts(plan, count);

  const Partition cloudPart = plan.cloudPart(count);
  const int pos = plan.pos();
  const std::size_t segBegin = cloudPart.offset(pos);
  const std::size_t segEnd = segBegin + cloudPart.size(pos);
  // Every piece of this rank's segment: this thread's (stage 1 is the caller's).
  const PhaseSpan phase(PhaseRecorder{call.observer, "cross-cloud", 0}, "cross-cloud allreduce",
                        (segEnd - segBegin) * dtypeSize(slice.dtype));
  for (std::size_t j = 0; j + 1 < cuts.size(); ++j) {
    const std::size_t lo = cuts[j];
    if (lo < segBegin || lo >= segEnd) continue;  // pieces never straddle a segment edge
    const std::size_t len = cuts[j + 1] - lo;
    std::vector<int> owners;
    for (const auto& ring : plan.rings) {
      const Partition p{count, static_cast<int>(ring.size())};
      owners.push_back(ring[static_cast<std::size_t>(segmentAt(p, lo))]);
    }
    const auto id = kFirstShardGroupId + static_cast<std::uint32_t>(j % kShardGroupIds);
    SubgroupTransport shardGroup(call.world, std::move(owners), SubgroupTransport::Scope::level(id),
                                 "cross-cloud level");
    Exchange shardEx = exchangeOver(shardGroup, call, "cross-cloud");
    const BufferView piece = slice.slice(lo, len);
    const std::size_t divisor =
        plan.op == ReduceOp::avg ? static_cast<std::size_t>(call.topology.size()) : 1;
    if (call.codec != nullptr && call.compressCrossCloud) {
      // The same seed on every owner of the piece: PowerSGD's first Q depends on it.
      const std::size_t at = base + lo;
      auto& state = call.codecState->pieces[at];
      if (call.segments != nullptr) {
        state = loadPiece(*call.segments, Residual::crossSend, Residual::crossReduced, at, len,
                          shardEx.size(), shardEx.rank(), *call.codec, seedOf(at, len, 0));
      }
      abortingOnBadBytes(plan, [&] {
        compressedPieceAllreduce(shardEx, static_cast<float*>(piece.data), len, divisor,
                                 *call.codec, state, seedOf(at, len, 0), plan.params);
      });
      if (call.segments != nullptr) {
        storePiece(*call.segments, Residual::crossSend, Residual::crossReduced, at, len,
                   shardEx.rank(), state);
      }
      continue;
    }
    const Partition sub{len, shardGroup.size()};
    const int g = shardGroup.rank();
    const BufferView owned = piece.slice(sub.offset(g), sub.size(g));
    ringReduceScatterInPlace(shardEx, piece, piece, plan.combine, plan.params);
    if (divisor != 1) compression::divideBy(owned.dtype, owned.data, owned.count, divisor);
    ringAllgather(shardEx, piece, plan.params, static_cast<std::uint32_t>(shardGroup.size() - 1));
  }
}

// 3. Allgather of the segments inside the cloud. Compressed, each rank encodes every piece
// of its segment on its own (the pieces of acrossClouds): a piece has one owner per cloud,
// all holding the same values and the same codec state, so every cloud decodes the same
// bytes even where clouds cut the buffer differently.
void allgatherInCloud(const Plan& plan, Exchange& ex, BufferView slice, std::size_t base) {
  const HierarchicalCall& call = plan.call;
  const PhaseSpan phase(ex.size() > 1 ? ex.phases() : PhaseRecorder{}, "cloud allgather",
                        slice.bytes());
  if (call.codec == nullptr || !call.compressCloud) {
    ringAllgather(ex, slice, plan.params, 0);
    return;
  }
  const std::size_t count = slice.count;
  const std::vector<std::size_t> cuts = piecesCuts(plan, count);
  const Partition cloudPart = plan.cloudPart(count);
  const int pos = plan.pos();
  std::vector<std::vector<OwnedPiece>> owned(static_cast<std::size_t>(cloudPart.parts));
  for (std::size_t j = 0; j + 1 < cuts.size(); ++j) {
    const std::size_t lo = cuts[j];
    const std::size_t len = cuts[j + 1] - lo;
    const int owner = segmentAt(cloudPart, lo);
    compression::CompressorState* state = nullptr;
    if (owner == pos) {
      state = &call.codecState->cloudPieces[base + lo];
      if (state->count != len) {
        const std::uint64_t salt = call.segments != nullptr ? call.segments->salt : 0;
        *state = call.codec->makeState(len, seedOf(base + lo, len, 2) ^ salt);
      }
      if (call.segments != nullptr && !state->residual.empty()) {
        call.segments->load(Residual::cloudGather, base + lo, state->residual);
      }
    }
    owned[static_cast<std::size_t>(owner)].push_back({lo, len, state});
  }
  abortingOnBadBytes(
      plan, [&] { compressedAllgather(ex, static_cast<float*>(slice.data), owned, *call.codec); });
  for (const auto& piece : owned[static_cast<std::size_t>(pos)]) {
    if (call.segments != nullptr && !piece.state->residual.empty()) {
      call.segments->store(Residual::cloudGather, base + piece.offset, piece.state->residual);
    }
  }
}

// How many slices to pipeline: enough that the stages inside a cloud hide behind the
// WAN, but each slice's WAN transfer (this rank's 2(G-1)/G of its share) must take at
// least four one-way latencies of the cost model, or the per-slice latencies would cost
// more than the overlap saves, and each slice must hold kMinSliceBytes (smaller slices
// measured slower: 2 x 4 ranks in namespaces at 4 MiB took 140 ms in 8 slices, 51 ms in
// one).
int sliceCount(const Plan& plan, std::size_t bytes) {
  const auto& wan = plan.call.topology.costs()[topology::LinkClass::crossCloud];
  const double g = static_cast<double>(plan.rings.size());
  const double share =
      2 * (g - 1) / g * static_cast<double>(bytes) / static_cast<double>(plan.myRing().size());
  const double minSliceSec = 4 * wan.latencySec;
  const bool cloudLevel = std::any_of(plan.rings.begin(), plan.rings.end(),
                                      [](const auto& ring) { return ring.size() > 1; });
  if (!cloudLevel || plan.rings.size() < 2 || wan.bandwidthBytesPerSec <= 0 ||
      bytes < 2 * kMinSliceBytes) {
    return 1;  // nothing inside the clouds to hide, or no WAN, or too small
  }
  const double wanSec = share / wan.bandwidthBytesPerSec;
  const double byLatency = minSliceSec > 0 ? wanSec / minSliceSec : kMaxSlices;
  const double bySize = static_cast<double>(bytes / kMinSliceBytes);
  return static_cast<int>(std::clamp(std::min(byLatency, bySize), 1.0, double{kMaxSlices}));
}

}  // namespace

void hierarchicalAllreduce(const HierarchicalCall& call, BufferView input, BufferView output,
                           ReduceOp op, const RingParams& params) {
  const topology::Topology& topo = call.topology;
  const int me = call.world->rank();
  const ErrorContext ctx{me, -1, "hierarchical allreduce"};
  SKYRING_CHECK_ARG(topo.size() == call.world->size(), ctx, "topology of ", topo.size(),
                    " ranks for a group of ", call.world->size());
  const std::size_t count = input.count;
  Plan plan{call, params, op, op == ReduceOp::avg ? ReduceOp::sum : op, {}, 0, me};
  for (const auto& group : topo.groups(Level::cloud)) {
    std::vector<int> ranks;  // the cloud's members (the node level passes one per node)
    for (int r : group) {
      if (call.members.empty() ||
          std::find(call.members.begin(), call.members.end(), r) != call.members.end())
        ranks.push_back(r);
    }
    if (ranks.empty()) continue;
    SKYRING_CHECK_ARG(static_cast<int>(ranks.size()) <= kMaxSubgroupSize, ctx, "a cloud of ",
                      ranks.size(), " ranks exceeds ", kMaxSubgroupSize);
    if (std::find(ranks.begin(), ranks.end(), me) != ranks.end())
      plan.myCloud = static_cast<int>(plan.rings.size());
    plan.rings.push_back(topo.ringOrder(ranks));
  }
  const int clouds = static_cast<int>(plan.rings.size());
  SKYRING_CHECK_ARG(clouds <= kMaxSubgroupSize, ctx, clouds, " clouds exceed ", kMaxSubgroupSize);
  // With members of one cloud only, the ring below would divide avg by its own size.
  SKYRING_CHECK_ARG(call.members.empty() || clouds > 1 || op != ReduceOp::avg, ctx,
                    "members of one cloud with avg");
  const std::size_t tensorCount = call.tensorCount != 0 ? call.tensorCount : count;
  if (call.codec != nullptr && call.codecState->count != tensorCount) {
    call.codecState->pieces.clear();
    call.codecState->cloudSlices.clear();
    call.codecState->cloudPieces.clear();
    call.codecState->count = tensorCount;
  }

  SubgroupTransport rsGroup(call.world, plan.myRing(),
                            SubgroupTransport::Scope::level(kCloudGroupId),
                            clouds == 1 ? "" : "cloud level (reduce-scatter)");
  if (clouds == 1) {  // no level above the cloud: the cloud's ring allreduce is all there is
    Exchange ex = exchangeOver(rsGroup, call, "cloud");
    const PhaseSpan phase(ex.phases(), "cloud allreduce", input.bytes());
    if (call.codec != nullptr && call.compressCloud) {
      if (input.data != output.data) std::memcpy(output.data, input.data, input.bytes());
      const std::size_t divisor = op == ReduceOp::avg ? static_cast<std::size_t>(topo.size()) : 1;
      const std::size_t at = call.offset;
      auto& state = call.codecState->cloudSlices[at];
      if (call.segments != nullptr) {
        state = loadPiece(*call.segments, Residual::cloudSend, Residual::cloudGather, at, count,
                          ex.size(), ex.rank(), *call.codec, seedOf(at, count, 1));
      }
      abortingOnBadBytes(plan, [&] {
        compressedPieceAllreduce(ex, static_cast<float*>(output.data), count, divisor, *call.codec,
                                 state, seedOf(at, count, 1), params);
      });
      if (call.segments != nullptr) {
        storePiece(*call.segments, Residual::cloudSend, Residual::cloudGather, at, count, ex.rank(),
                   state);
      }
      return;
    }
    ringAllreduce(ex, input, output, op, params);
    return;
  }
  SubgroupTransport agGroup(call.world, plan.myRing(),
                            SubgroupTransport::Scope::level(kCloudAllgatherGroupId),
                            "cloud level (allgather)");
  // Every rank computes the same slicing (from the topology's cost model and the count).
  const int slices = sliceCount(plan, input.bytes());
  // Pipelined, the cloud's two stages run on helper threads 1 and 2 of the call.
  Exchange rsEx = exchangeOver(rsGroup, call, "cloud", slices > 1 ? 1 : 0);
  Exchange agEx = exchangeOver(agGroup, call, "cloud", slices > 1 ? 2 : 0);
  const Partition sliced{count, slices};
  if (slices == 1) {
    reduceScatterInCloud(plan, rsEx, input, output, call.offset);
    acrossClouds(plan, output, call.offset);
    allgatherInCloud(plan, agEx, output, call.offset);
    return;
  }
  // Pipelined: slice s goes through the three stages in order, each stage (its own thread,
  // its own level id) takes the slices in order, so the levels inside the cloud overlap
  // with the WAN. A stage that fails aborts the world, which fails the others.
  std::atomic<int> reduced{0};
  std::atomic<int> crossed{0};
  std::atomic<bool> failed{false};
  const auto waitFor = [&](std::atomic<int>& done, int s) {
    while (done.load() <= s) {
      if (failed.load()) return false;
      done.wait(done.load());
    }
    return true;
  };
  std::exception_ptr errors[3];
  std::atomic<int> firstFailure{-1};  // the stage whose error is the cause, not an echo
  const auto stage = [&](int which, auto&& fn) {
    try {
      fn();
    } catch (...) {
      errors[which] = std::current_exception();
      int none = -1;
      firstFailure.compare_exchange_strong(none, which);
      failed.store(true);
      call.world->abort(ErrorKind::aborted, "rank " + std::to_string(call.world->jobRank(me)) +
                                                ": a stage of hierarchical allreduce failed");
      reduced.fetch_add(slices);  // wake every waiter
      reduced.notify_all();
      crossed.fetch_add(slices);
      crossed.notify_all();
    }
  };
  std::thread first([&] {
    stage(0, [&] {
      for (int s = 0; s < slices; ++s) {
        reduceScatterInCloud(plan, rsEx, input.slice(sliced.offset(s), sliced.size(s)),
                             output.slice(sliced.offset(s), sliced.size(s)),
                             call.offset + sliced.offset(s));
        reduced.fetch_add(1);
        reduced.notify_all();
      }
    });
  });
  std::thread last([&] {
    stage(2, [&] {
      for (int s = 0; s < slices; ++s) {
        if (!waitFor(crossed, s)) return;
        allgatherInCloud(plan, agEx, output.slice(sliced.offset(s), sliced.size(s)),
                         call.offset + sliced.offset(s));
      }
    });
  });
  stage(1, [&] {
    for (int s = 0; s < slices; ++s) {
      if (!waitFor(reduced, s)) return;
      acrossClouds(plan, output.slice(sliced.offset(s), sliced.size(s)),
                   call.offset + sliced.offset(s));
      crossed.fetch_add(1);
      crossed.notify_all();
    }
  });
  first.join();
  last.join();
  if (firstFailure.load() >= 0) std::rethrow_exception(errors[firstFailure.load()]);
}

}  // namespace skyring::collectives
