// Watching the phases of a collective (CollectiveOptions::observer): which level of a
// hierarchical or node-level allreduce took the time, and what the codec's encode and
// decode cost. The engine's timeline is one observer (docs/engine.md, "Timeline").
//
// Ownership: the caller of the collective owns the observer and keeps it alive for the
// call. Threads: phase() is called on the calling thread and, for a pipelined hierarchical
// allreduce, on the call's own helper threads, possibly at once; it must be thread-safe.
// Failure: phase() must not throw (it is noexcept); a collective never fails because of it.
// Without an observer (the default) a phase costs one null check.
#pragma once

#include <chrono>
#include <cstddef>
#include <string_view>

namespace skyring {

// One phase of one collective call, reported when it ends (also when it ended by throwing).
struct CollectivePhase {
  // What ran: "node reduce-scatter", "node allgather", "node allreduce", "cloud
  // reduce-scatter", "cloud allgather", "cloud allreduce", "cross-cloud allreduce", or the
  // codec's "encode" and "decode".
  std::string_view name;
  // The level it ran at: "node" (shared memory), "cloud" (the network inside a cloud),
  // "cross-cloud", or "world" (PowerSGD over a fused buffer, compressing every level).
  std::string_view level;
  // encode and decode: the codec's spec ("int8", "topk:0.01"); empty for the levels.
  std::string_view codec;
  std::size_t bytes = 0;    // the data the phase handled, at full precision
  std::size_t encoded = 0;  // encode and decode: their encoded bytes; 0 otherwise
  // 0: the thread that called the collective; k > 0: helper thread k of the call (the
  // pipelined hierarchical allreduce: 1 reduces inside the cloud, 2 gathers).
  int thread = 0;
  std::chrono::steady_clock::time_point begin;
  std::chrono::steady_clock::time_point end;
};

class CollectiveObserver {
 public:
  virtual ~CollectiveObserver() = default;
  virtual void phase(const CollectivePhase& phase) noexcept = 0;
};

}  // namespace skyring
