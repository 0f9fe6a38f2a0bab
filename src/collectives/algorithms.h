// The collective algorithms, each a plan of sends, receives and reductions over an
// Exchange. None of them validates arguments (the Communicator does) or owns a transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "collectives/exchange.h"
#include "skyring/buffer_view.h"
#include "skyring/reduce_op.h"

namespace skyring::collectives {

struct RingParams {
  std::size_t chunkBytes;
  int pipelineDepth;
};

// Ring allreduce: reduce-scatter then allgather, 2(n-1) steps, each rank sending
// 2(n-1)/n of the buffer in chunks so transfers overlap reductions. input may equal
// output.
void ringAllreduce(Exchange& ex, BufferView input, BufferView output, ReduceOp op,
                   const RingParams& params);

// Ring reduce-scatter: input holds n blocks of output.count; rank r gets block r.
void ringReduceScatter(Exchange& ex, BufferView input, BufferView output, ReduceOp op,
                       const RingParams& params);

// The reduce-scatter of ringAllreduce: output (input's count; may be input) serves as the
// scratch, so segment rank() of output ends reduced and the others hold partial sums. No
// division for avg.
void ringReduceScatterInPlace(Exchange& ex, BufferView input, BufferView output, ReduceOp op,
                              const RingParams& params);

// Ring allgather in place over Partition{buffer.count, n}: segment rank() is filled,
// the others arrive. Steps are tagged from firstStep on.
void ringAllgather(Exchange& ex, BufferView buffer, const RingParams& params,
                   std::uint32_t firstStep = 0);

// Pipelined chain broadcast from root: chunk c travels root -> root+1 -> ... while
// chunk c+1 follows, so time is (chunks + n - 2) chunk transfers.
void chainBroadcast(Exchange& ex, BufferView buffer, int root, const RingParams& params);

// Pairwise-exchange alltoall (pairwise.h): sendCounts[p] elements of input (blocks in rank
// order) go to rank p; block p of output (recvCounts[p] elements) comes from rank p. The
// counts must agree between ranks (p's sendCounts[r] is r's recvCounts[p]).
void pairwiseAlltoall(Exchange& ex, BufferView input, std::span<const std::size_t> sendCounts,
                      BufferView output, std::span<const std::size_t> recvCounts);

// Dissemination barrier: ceil(log2 n) rounds of zero-byte messages.
void disseminationBarrier(Exchange& ex);

}  // namespace skyring::collectives
