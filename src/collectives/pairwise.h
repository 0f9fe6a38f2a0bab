// Rank arithmetic of the pairwise-exchange alltoall: n-1 steps; at step s (1..n-1) rank r
// sends its block for rank r+s and receives rank r-s's block for it, so every pair meets
// once and no rank receives from two peers in one step. Pure: no I/O.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

namespace skyring::collectives {

struct Pairwise {
  int rank;
  int size;
  int sendPeer(int step) const { return (rank + step) % size; }
  int recvPeer(int step) const { return (rank - step % size + size) % size; }
};

// Offsets of blocks of the given counts laid out one after the other (n + 1 entries: the
// last is the total).
inline std::vector<std::size_t> blockOffsets(std::span<const std::size_t> counts) {
  std::vector<std::size_t> out{0};
  for (std::size_t c : counts)
    out.push_back(out.back() + c);
  return out;
}

}  // namespace skyring::collectives
