// Pipelined chain broadcast and the dissemination barrier.
#include <cstdint>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/ring.h"

namespace skyring::collectives {

void chainBroadcast(Exchange& ex, BufferView buffer, int root, const RingParams& params) {
  const int n = ex.size();
  if (n == 1 || buffer.count == 0) return;
  const Ring ring{ex.rank(), n};
  const int pos = chainPosition(ex.rank(), root, n);
  const bool receives = pos > 0;
  const bool forwards = pos < n - 1;
  const Chunking chunks{buffer.count,
                        chunkElems(params.chunkBytes, dtypeSize(buffer.dtype), buffer.count)};
  const auto depth = static_cast<std::size_t>(params.pipelineDepth);
  std::vector<std::unique_ptr<transport::Request>> recvs(depth);
  std::vector<std::unique_ptr<transport::Request>> sends;
  auto chunk = [&](std::size_t c) { return buffer.slice(chunks.offset(c), chunks.size(c)); };
  if (receives) {
    for (std::size_t c = 0; c < std::min(depth, chunks.chunks()); ++c) {
      recvs[c] = ex.recv(ring.prev(), 0, chunk(c));
    }
  }
  for (std::size_t c = 0; c < chunks.chunks(); ++c) {
    if (receives) {
      ex.wait(recvs[c % depth]);
      if (c + depth < chunks.chunks()) recvs[c % depth] = ex.recv(ring.prev(), 0, chunk(c + depth));
    }
    if (forwards) sends.push_back(ex.send(ring.next(), 0, chunk(c)));
  }
  ex.waitAll(sends);
}

void disseminationBarrier(Exchange& ex) {
  const int n = ex.size();
  std::uint32_t round = 0;
  for (int distance = 1; distance < n; distance *= 2, ++round) {
    auto recv = ex.recv(mod(ex.rank() - distance, n), round, std::span<std::byte>{});
    auto send = ex.send(mod(ex.rank() + distance, n), round, std::span<const std::byte>{});
    ex.wait(recv);
    ex.wait(send);
  }
}

}  // namespace skyring::collectives
