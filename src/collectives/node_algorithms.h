// Collectives among the ranks of one node through a NodeChannel: no network stack, no
// transport messages. Like the ring algorithms these never validate arguments (the
// Communicator does); they do check that every local rank made the same call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/reduce_op.h"
#include "transport/node_channel.h"

namespace skyring::collectives {

struct NodeParams {
  std::size_t chunkBytes;  // bytes reduced per step of the staged and single-copy paths
  std::size_t smallBytes;  // largest call for the slots path (at most ch.slotBytes())
};

// Allreduce among all ranks of the channel (call number seq, counting from 1). Three
// algorithms, picked by size, the same on every rank:
//   - slots (bytes <= params.smallBytes): each rank copies its input into its slot, waits
//     for everyone's arrival, and reduces all slots in local rank order itself: one
//     synchronisation, no second round for small messages.
//   - staged (bytes <= ch.slotBytes()): each rank copies its input into its slot; rank r
//     reduces segment r of all slots in place in its own slot; after a second
//     synchronisation every rank copies the reduced segments out. No system calls: while
//     the buffers fit in the last-level cache this beats the single-copy path, whose
//     kernel page pinning costs more than the extra copies.
//   - single copy (larger, ch.singleCopy()): rank r owns segment r of the buffer. Chunk by
//     chunk it reads every peer's input of that segment straight from the peer's memory
//     into a cache-sized scratch buffer, reduces it into its own output, and writes the
//     result straight into every peer's output. Each rank reads S and writes S of main
//     memory, the least any allreduce can do; no segment is touched by two ranks, so in
//     place works too. A second synchronisation says everyone is done with everyone's
//     buffers.
// scratch is grown to chunkBytes and kept by the caller between calls.
void nodeAllreduce(transport::NodeChannel& ch, std::uint64_t seq, BufferView input,
                   BufferView output, ReduceOp op, transport::Clock::time_point deadline,
                   const NodeParams& params, std::vector<std::byte>& scratch);

// True where nodeAllreduce can run this call.
bool nodeAllreduceFits(const transport::NodeChannel& ch, std::size_t bytes);

// Returns once every rank of the channel arrived.
void nodeBarrier(transport::NodeChannel& ch, std::uint64_t seq,
                 transport::Clock::time_point deadline);

}  // namespace skyring::collectives
