// Ring reduce-scatter and ring allreduce.
//
// The buffer is split into n segments (Partition). In n-1 steps each rank receives one
// segment from its predecessor, reduces it with its own contribution and, at the next
// step, passes the result on; after the last step rank r holds segment r reduced over
// all ranks. Each step is chunked: the pipelineDepth receives in flight land in a small
// scratch ring while the previous chunk is being reduced, so the reduction overlaps the
// transfer. Allreduce finishes with a ring allgather of the reduced segments.
//
// Out of place costs no copy: every reduction reads input and writes output, and
// sends read whichever buffer holds the segment's latest value.
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/ring.h"
#include "collectives/scratch.h"
#include "compression/reduce.h"

namespace skyring::collectives {
namespace {

using SegmentTarget = std::function<BufferView(int step, int segment)>;

// The shared ring: `target(step, segment)` says where the partial result of a step goes
// (and so where the next step's send reads it from).
void reduceScatterSteps(Exchange& ex, BufferView input, const Partition& part, ReduceOp op,
                        const RingParams& params, const SegmentTarget& target) {
  const Ring ring{ex.rank(), ex.size()};
  // Scratch follows the message: no chunk is longer than the largest segment, and no more
  // slots than a segment has chunks, however large the settings.
  const std::size_t elem = dtypeSize(input.dtype);
  const std::size_t chunkElems = collectives::chunkElems(params.chunkBytes, elem, part.size(0));
  const auto depth = std::min(static_cast<std::size_t>(params.pipelineDepth),
                              Chunking{part.size(0), chunkElems}.chunks());
  const auto scratch = allocateScratch(
      depth * chunkElems * elem, ex.context(), "ring receive scratch",
      detail::concat(depth, " chunks of ", chunkElems * elem,
                     " bytes: SKYRING_RING_PIPELINE_DEPTH=", params.pipelineDepth,
                     ", SKYRING_RING_CHUNK_BYTES=", params.chunkBytes, ", capped by the message"));
  const BufferView slots{scratch.get(), depth * chunkElems, input.dtype, MemoryKind::host};

  std::vector<std::unique_ptr<transport::Request>> sends;
  std::vector<std::unique_ptr<transport::Request>> recvs(depth);
  for (int step = 0; step < ex.size() - 1; ++step) {
    const int sendSeg = ring.reduceScatterSendSegment(step);
    const int recvSeg = ring.reduceScatterRecvSegment(step);
    const BufferView sendFrom = step == 0 ? input.slice(part.offset(sendSeg), part.size(sendSeg))
                                          : target(step - 1, sendSeg);
    const BufferView mine = input.slice(part.offset(recvSeg), part.size(recvSeg));
    const BufferView into = target(step, recvSeg);
    const Chunking sendChunks{sendFrom.count, chunkElems};
    const Chunking recvChunks{into.count, chunkElems};
    const auto step32 = static_cast<std::uint32_t>(step);

    auto postRecv = [&](std::size_t c) {
      recvs[c % depth] =
          ex.recv(ring.prev(), step32, slots.slice((c % depth) * chunkElems, recvChunks.size(c)));
    };
    for (std::size_t c = 0; c < std::min(depth, recvChunks.chunks()); ++c)
      postRecv(c);
    for (std::size_t c = 0; c < sendChunks.chunks(); ++c) {
      sends.push_back(
          ex.send(ring.next(), step32, sendFrom.slice(sendChunks.offset(c), sendChunks.size(c))));
    }
    for (std::size_t c = 0; c < recvChunks.chunks(); ++c) {
      ex.wait(recvs[c % depth]);
      const std::size_t off = recvChunks.offset(c);
      const std::size_t n = recvChunks.size(c);
      compression::reduce(op, input.dtype, into.slice(off, n).data, mine.slice(off, n).data,
                          slots.slice((c % depth) * chunkElems, n).data, n);
      if (c + depth < recvChunks.chunks()) postRecv(c + depth);
    }
    // The next step overwrites what these sends read only in the scratch case, and
    // waiting here keeps at most one step of sends outstanding.
    ex.waitAll(sends);
  }
}

}  // namespace

void ringReduceScatter(Exchange& ex, BufferView input, BufferView output, ReduceOp op,
                       const RingParams& params) {
  const int n = ex.size();
  const Partition part{input.count, n};
  if (n > 1) {
    // Intermediate results alternate between two scratch segments: the sends of step s+1
    // read buffer s%2 while step s+1 reduces into the other.
    // (Not value-initialised, and not at all with two ranks, whose one step writes output:
    // zeroing two segments of a large buffer cost more than the step itself.)
    const std::size_t segBytes = part.size(0) * dtypeSize(input.dtype);
    std::unique_ptr<std::byte[]> scratch;
    if (n > 2) {
      scratch = allocateScratch(2 * segBytes, ex.context(), "reduce-scatter scratch",
                                "two segments of the output");
    }
    reduceScatterSteps(ex, input, part, op, params, [&](int step, int segment) {
      if (step == n - 2) return output;
      return BufferView{scratch.get() + static_cast<std::size_t>(step % 2) * segBytes,
                        part.size(segment), input.dtype, MemoryKind::host};
    });
  } else if (output.data != input.data && output.count > 0) {
    std::memcpy(output.data, input.data, output.bytes());
  }
  if (op == ReduceOp::avg) {
    compression::divideBy(output.dtype, output.data, output.count, static_cast<std::size_t>(n));
  }
}

void ringReduceScatterInPlace(Exchange& ex, BufferView input, BufferView output, ReduceOp op,
                              const RingParams& params) {
  const Partition part{input.count, ex.size()};
  if (ex.size() > 1) {
    reduceScatterSteps(ex, input, part, op, params, [&](int, int segment) {
      return output.slice(part.offset(segment), part.size(segment));
    });
  } else if (output.data != input.data && output.count > 0) {
    std::memcpy(output.data, input.data, output.bytes());
  }
}

void ringAllreduce(Exchange& ex, BufferView input, BufferView output, ReduceOp op,
                   const RingParams& params) {
  const int n = ex.size();
  const Partition part{input.count, n};
  ringReduceScatterInPlace(ex, input, output, op, params);
  if (op == ReduceOp::avg) {
    const int r = ex.rank();
    compression::divideBy(output.dtype, output.slice(part.offset(r), part.size(r)).data,
                          part.size(r), static_cast<std::size_t>(n));
  }
  if (n > 1) ringAllgather(ex, output, params, static_cast<std::uint32_t>(n - 1));
}

}  // namespace skyring::collectives
