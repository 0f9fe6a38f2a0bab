// Collectives among the ranks of one node through a NodeChannel: no network stack, no
// transport messages. Like the ring algorithms these never validate arguments (the
// Communicator does); they do check that every local rank made the same call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/reduce_op.h"
#include "transport/node_channel.h"

namespace skyring::collectives {

struct NodeParams {
  std::size_t chunkBytes;       // bytes per rank per round (pipelined, single copy)
  std::size_t smallBytes;       // largest call for the slots path (at most ch.slotBytes())
  std::size_t singleCopyBytes;  // 0, or the smallest call for the single-copy path
};

// Allreduce among all ranks of the channel (call number seq, counting from 1). Three
// algorithms, picked by size, the same on every rank:
//   - slots (bytes <= params.smallBytes): each rank copies its input into its slot, waits
//     for everyone's arrival, and reduces all slots in local rank order itself: one
//     synchronisation, no second round for small messages.
//   - pipelined (the default above that): rank r owns segment r. Round k moves chunk k
//     of every segment through a ring of blocks in each rank's region: every rank copies
//     its input's chunk k of the other segments into its block, rank r reduces chunk k of
//     segment r from its own input and everyone's block, and everyone copies the reduced
//     chunks out. Three counters per rank (copied, reduced, consumed) order the rounds;
//     a block is reused once every peer consumed it. Each rank reads S and writes S of
//     main memory; everything else stays in cache because the ring is small (1 MiB), and
//     there are no system calls. This beat both a whole-buffer staging and the
//     single-copy path at every size measured.
//   - single copy (bytes >= params.singleCopyBytes > 0, ch.singleCopy()): chunk by chunk
//     rank r reads every peer's input of segment r straight from the peer's memory
//     (process_vm_readv) into a scratch buffer, reduces into its own output, and writes
//     the result into every peer's output (process_vm_writev); a second synchronisation
//     says everyone is done with everyone's buffers. Kept for hosts where the kernel's
//     page pinning is cheap (huge pages); off by default.
// No segment is touched by two ranks, so every path works in place too.
// scratch is grown to chunkBytes and kept by the caller between calls.
void nodeAllreduce(transport::NodeChannel& ch, std::uint64_t seq, BufferView input,
                   BufferView output, ReduceOp op, transport::Clock::time_point deadline,
                   const NodeParams& params, std::vector<std::byte>& scratch);

// nodeAllreduce of the pieces' concatenation (one dtype), in place where they are: the
// slots or the pipelined path read each chunk from the piece(s) holding it and write the
// result back there, so a batch of tensors needs no fusion buffer (the engine's batches on
// one node). Never the single-copy path (a peer's input is no longer one address range).
// A node-mate may run nodeAllreduce of the same call (same count, dtype and op) where that
// takes the slots or pipelined path (Communicator::allreducesInPlace sees to it).
void nodeAllreducePieces(transport::NodeChannel& ch, std::uint64_t seq,
                         std::span<const BufferView> pieces, ReduceOp op,
                         transport::Clock::time_point deadline, const NodeParams& params);

// The node level of a job with several nodes (node_level.h): reduce-scatter over
// Partition{count, ch.size()} (local rank r ends with segment r of output reduced with op,
// no division for avg; the rest of output is untouched), and its inverse, the allgather
// of those segments in place. Both run the staged pipeline above, or, from
// params.singleCopyBytes on (where ch.singleCopy()), read peers' buffers directly (one
// or two synchronisations per call instead of two per chunk); one call sequence number
// each; tag (the user's) is checked with the call, so node-mates that interleave calls
// of different tags fail with a message instead of mixing them. scratch: one chunk,
// grown on the single-copy path.
void nodeReduceScatter(transport::NodeChannel& ch, std::uint64_t seq, std::uint32_t tag,
                       BufferView input, BufferView output, ReduceOp op,
                       transport::Clock::time_point deadline, const NodeParams& params,
                       std::vector<std::byte>& scratch);
void nodeAllgather(transport::NodeChannel& ch, std::uint64_t seq, std::uint32_t tag,
                   BufferView buffer, ReduceOp op, transport::Clock::time_point deadline,
                   const NodeParams& params);

// True where nodeAllreduce can run this call.
bool nodeAllreduceFits(const transport::NodeChannel& ch, std::size_t bytes);

// Returns once every rank of the channel arrived.
void nodeBarrier(transport::NodeChannel& ch, std::uint64_t seq,
                 transport::Clock::time_point deadline);

}  // namespace skyring::collectives
