// Pairwise-exchange alltoall (pairwise.h). Every block is received straight into its place
// in output; all of a step's messages are posted before waiting on them, and steps run one
// after the other so a rank has at most one send and one receive in flight.
#include <cstdint>
#include <cstring>

#include "collectives/algorithms.h"
#include "collectives/pairwise.h"

namespace skyring::collectives {

void pairwiseAlltoall(Exchange& ex, BufferView input, std::span<const std::size_t> sendCounts,
                      BufferView output, std::span<const std::size_t> recvCounts) {
  const int n = ex.size();
  const Pairwise pw{ex.rank(), n};
  const auto sendAt = blockOffsets(sendCounts);
  const auto recvAt = blockOffsets(recvCounts);
  const auto me = static_cast<std::size_t>(ex.rank());
  const BufferView own = input.slice(sendAt[me], sendCounts[me]);
  if (own.count > 0)
    std::memcpy(output.slice(recvAt[me], recvCounts[me]).data, own.data, own.bytes());
  std::vector<std::unique_ptr<transport::Request>> sends;
  std::vector<std::unique_ptr<transport::Request>> recvs;
  for (int step = 1; step < n; ++step) {
    const auto to = static_cast<std::size_t>(pw.sendPeer(step));
    const auto from = static_cast<std::size_t>(pw.recvPeer(step));
    const auto tag = static_cast<std::uint32_t>(step);
    // Both sides know a block's size (the caller's counts agree), so empty blocks are
    // skipped on both.
    if (recvCounts[from] > 0) {
      recvs.push_back(
          ex.recv(static_cast<int>(from), tag, output.slice(recvAt[from], recvCounts[from])));
    }
    if (sendCounts[to] > 0) {
      sends.push_back(ex.send(static_cast<int>(to), tag, input.slice(sendAt[to], sendCounts[to])));
    }
    ex.waitAll(recvs);
    ex.waitAll(sends);
  }
}

}  // namespace skyring::collectives
