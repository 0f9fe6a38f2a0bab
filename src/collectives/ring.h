// Pure rank and index arithmetic of the ring and chain patterns: no I/O, so every
// formula is unit tested on its own (tests/collectives/test_ring.cc).
#pragma once

#include <algorithm>
#include <cstddef>

namespace skyring::collectives {

// count elements split into `parts` contiguous blocks whose sizes differ by at most one
// (the first count % parts blocks get the extra element).
struct Partition {
  std::size_t count;
  int parts;
  std::size_t size(int i) const {
    const std::size_t base = count / static_cast<std::size_t>(parts);
    return base + (static_cast<std::size_t>(i) < count % static_cast<std::size_t>(parts) ? 1 : 0);
  }
  std::size_t offset(int i) const {
    const std::size_t base = count / static_cast<std::size_t>(parts);
    const std::size_t rem = count % static_cast<std::size_t>(parts);
    return static_cast<std::size_t>(i) * base +
           std::min<std::size_t>(static_cast<std::size_t>(i), rem);
  }
};

inline int mod(int a, int n) {
  return ((a % n) + n) % n;
}

struct Ring {
  int rank;
  int size;
  int next() const { return mod(rank + 1, size); }
  int prev() const { return mod(rank - 1, size); }
  // Reduce-scatter that leaves segment `rank` fully reduced on `rank` after size-1
  // steps: at step s a rank sends the segment it reduced at step s-1.
  int reduceScatterSendSegment(int step) const { return mod(rank - step - 1, size); }
  int reduceScatterRecvSegment(int step) const { return mod(rank - step - 2, size); }
  // Allgather starting from segment `rank` on `rank`.
  int allgatherSendSegment(int step) const { return mod(rank - step, size); }
  int allgatherRecvSegment(int step) const { return mod(rank - step - 1, size); }
};

// Chunks of at most chunkElems elements covering `count` elements.
struct Chunking {
  std::size_t count;
  std::size_t chunkElems;
  std::size_t chunks() const { return (count + chunkElems - 1) / chunkElems; }
  std::size_t offset(std::size_t c) const { return c * chunkElems; }
  std::size_t size(std::size_t c) const { return std::min(chunkElems, count - c * chunkElems); }
};

// Elements per chunk: the setting's chunkBytes (at least one element), but never more than
// `largest`, the longest run of elements the call moves at once. Settings are upper bounds,
// so a chunk, and the scratch sized by it, never outgrows the message.
inline std::size_t chunkElems(std::size_t chunkBytes, std::size_t elemBytes, std::size_t largest) {
  return std::max<std::size_t>(1, std::min(chunkBytes / elemBytes, largest));
}

// Position of a rank in a chain broadcast rooted at `root`.
inline int chainPosition(int rank, int root, int size) {
  return mod(rank - root, size);
}

}  // namespace skyring::collectives
