// Ring allgather: n-1 steps; at step s a rank forwards the segment it received at step
// s-1. Chunks are received straight into their final place, so there is no copy and no
// scratch; all of a step's chunks are posted at once.
#include <cstdint>
#include <cstring>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/ring.h"

namespace skyring::collectives {

void ringAllgather(Exchange& ex, BufferView buffer, const RingParams& params,
                   std::uint32_t firstStep) {
  const int n = ex.size();
  if (n == 1) return;
  const Ring ring{ex.rank(), n};
  const Partition part{buffer.count, n};
  const std::size_t chunkElems =
      collectives::chunkElems(params.chunkBytes, dtypeSize(buffer.dtype), part.size(0));
  std::vector<std::unique_ptr<transport::Request>> sends;
  std::vector<std::unique_ptr<transport::Request>> recvs;
  for (int step = 0; step < n - 1; ++step) {
    const auto tagStep = firstStep + static_cast<std::uint32_t>(step);
    const int sendSeg = ring.allgatherSendSegment(step);
    const int recvSeg = ring.allgatherRecvSegment(step);
    const BufferView from = buffer.slice(part.offset(sendSeg), part.size(sendSeg));
    const BufferView into = buffer.slice(part.offset(recvSeg), part.size(recvSeg));
    const Chunking sendChunks{from.count, chunkElems};
    const Chunking recvChunks{into.count, chunkElems};
    for (std::size_t c = 0; c < recvChunks.chunks(); ++c) {
      recvs.push_back(
          ex.recv(ring.prev(), tagStep, into.slice(recvChunks.offset(c), recvChunks.size(c))));
    }
    for (std::size_t c = 0; c < sendChunks.chunks(); ++c) {
      sends.push_back(
          ex.send(ring.next(), tagStep, from.slice(sendChunks.offset(c), sendChunks.size(c))));
    }
    ex.waitAll(recvs);
    ex.waitAll(sends);
  }
}

}  // namespace skyring::collectives
