// The background engine: asynchronous, named collectives over one Communicator.
//
//   skyring::Engine engine(runtime->world());
//   auto h = engine.allreduceAsync("layer1.weight.grad", skyring::Tensor::of(grad), ReduceOp::avg);
//   ...
//   h.wait();  // grad now holds the average over ranks; throws if the call failed
//
// Framework threads submit tensors by name, in any order on any rank; one background thread
// per engine agrees with the other ranks on which names are ready everywhere, fuses small
// tensors of one dtype and op (or broadcast root) into one buffer, runs the allreduces,
// broadcasts, allgathers, reducescatters and alltoalls and completes the handles. docs/engine.md
// explains the negotiation, the response cache and fusion.
//
// Collective use: every rank of the communicator makes an Engine over it (engines meet on
// EngineOptions::tag, which nothing else may use), and every rank submits each name; a name
// submitted with different shapes, dtypes or ops on different ranks fails on every rank with
// a TransportError naming the ranks and the name.
//
// Ownership: the engine borrows the Communicator, which must outlive it. A submitted Tensor
// is held (with its keep-alive) until its handle completes; the caller must not touch the
// memory meanwhile. Results are written in place.
//
// Threads: every public call may be made from any thread. Handles may be shared and waited
// on from several threads.
//
// Failure: a failed collective (dead or stalled peer), or a name that some ranks never
// submit past SKYRING_STALL_SHUTDOWN_S, fails every pending handle with that error and stops
// the engine; later submissions return handles failed with the same error. No exception
// leaves the background thread: errors are stored on handles.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/reduce_op.h"

namespace skyring {

class Communicator;
namespace metrics {
class Registry;
}

// An owned view of a tensor: where it is, its shape, and something that keeps the memory
// alive until the engine is done with it (a DLPack capsule, an at::Tensor, a vector).
struct Tensor {
  BufferView buffer;                // host memory only, for now
  std::vector<std::int64_t> shape;  // empty: one dimension of buffer.count elements
  std::shared_ptr<void> keepAlive;  // may be null when the caller keeps the memory alive

  // A view of a contiguous host container the caller keeps alive.
  template <typename T>
  static Tensor of(std::span<T> s) {
    return {view(s), {}, nullptr};
  }
  template <typename C>
  static Tensor of(C& c) {
    return of(std::span(c));
  }
};

// Completion of one asynchronous call. Copyable: copies share one completion.
class Handle {
 public:
  struct State;
  Handle() = default;
  explicit Handle(std::shared_ptr<State> state) : state_(std::move(state)) {}

  // True once the call finished, successfully or not. Never blocks.
  bool poll() const;
  // Waits until the call finished; rethrows its error (a skyring::Error) if it failed.
  void wait() const;
  // Waits at most timeout; true when finished (then wait() returns or throws at once).
  bool waitFor(std::chrono::milliseconds timeout) const;
  // The call's error once it failed; null while pending or after success.
  std::exception_ptr error() const;
  bool valid() const noexcept { return state_ != nullptr; }

 private:
  std::shared_ptr<State> state_;
};

struct EngineOptions {
  // Tag of the engine's collectives on the communicator (Communicator's tag space,
  // 0..4095). Nothing else may use it while the engine runs.
  std::uint32_t tag = 4095;
  // Tag of the one-byte flag that runs beside each batch of a replayed step (docs/engine.md,
  // "Replay"); nothing else may use it either. Must differ from tag.
  std::uint32_t replayTag = 4094;
  // Replay carries its flag as one more element of each batch where the batch's reduction
  // keeps it exact; true: always as an allreduce of its own beside the data (what the
  // other batches do; for tests and measurement).
  bool replayFlagBeside = false;
  // Bytes this rank has sent so far per link class (self, intra-node, intra-cloud,
  // cross-cloud; a MeteringTransport's counts), for the timeline's counter tracks; null:
  // none. Called on the engine thread after each collective while a timeline runs.
  std::function<std::array<std::uint64_t, 4>()> linkBytes;
  // How long the first cycle waits for the other ranks' engines to start; zero: the
  // communicator's Config::initTimeout.
  std::chrono::milliseconds startTimeout{0};
  // Where the engine records its live metrics (skyring/metrics.h, docs/observability.md:
  // queue depth, stalls, failed handles, fusion fill, collective and phase latencies,
  // codec bytes); null: none. The Runtime passes its own, which /metrics serves.
  std::shared_ptr<metrics::Registry> metrics;
};

struct AllreduceSpec {
  ReduceOp op = ReduceOp::sum;
  // Floating-point tensors only: input multiplied by prescale before the reduction, result
  // by postscale after it (1 leaves the bytes alone).
  double prescale = 1;
  double postscale = 1;
  // The tensor's codec (allreduceAsync and groupedAllreduceAsync only), as
  // CollectiveOptions::compression: empty or "none" (the default) sends it in full
  // precision whatever SKYRING_COMPRESSION says; kDefaultCompression ("default") is the
  // job's codec for gradients (SKYRING_COMPRESSION), what frontends pass for gradients;
  // any other value is a spec (skyring/compression.h). Applies to f32 sum and avg only,
  // to tensors the size rule finds worth it (compression.h's worthCompressing), and to
  // the levels of SKYRING_COMPRESSION_LEVELS; the others travel exact. Every rank must
  // ask for the same codec (it is part of the name's descriptor). Codec state is kept by
  // name; see "Compression" in docs/engine.md.
  std::string compression{};
};

class Engine {
 public:
  // Starts the background thread. Cycle time and fusion threshold come from comm.config()
  // (SKYRING_CYCLE_TIME_MS, SKYRING_FUSION_THRESHOLD).
  explicit Engine(Communicator& comm, EngineOptions options = {});
  // shutdown(), then joins the thread. noexcept.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Submits tensor for an in-place allreduce under name. Throws InvalidArgument at once for
  // what can never work (empty name, device memory, scaling an integer tensor, a name that
  // is already pending on this rank); everything else is reported through the handle.
  Handle allreduceAsync(std::string name, Tensor tensor, AllreduceSpec spec = {});
  // Submits tensor to be overwritten with root's tensor of that name (root's own is left
  // as it is). Every rank must give the same root; the InvalidArgument cases as above,
  // and a root outside the communicator.
  Handle broadcastAsync(std::string name, Tensor tensor, int root);

  // Returns once every rank has called barrier (or throws what failed the engine). It is a
  // zero-element allreduce under the reserved name "__skyring.barrier" (names starting with
  // "__skyring." are reserved): it does not wait for tensors submitted before it.
  void barrier();

  // Where an allgather's result goes: called once on the engine thread, when every rank
  // has submitted the name, with the sum of every rank's first dimension; returns a host
  // tensor of that many rows of the input's row shape (and its dtype) to write into. It
  // must not wait on handles (the engine thread would wait on itself).
  using Allocator = std::function<Tensor(std::int64_t firstDim)>;
  // Submits tensor to be gathered from every rank, in rank order, along the first dimension
  // (which may differ between ranks; the other dimensions, the dtype and the name must
  // agree). An allocator that throws, or returns a tensor that does not fit, fails this
  // rank's handle only. The InvalidArgument cases as above.
  Handle allgatherAsync(std::string name, Tensor tensor, Allocator allocate);

  // Submits tensors for in-place allreduces as one unit under one name: negotiated together
  // (every rank must give the same tensors, in order, of one dtype, with the same op), run
  // in one cycle (fused with each other and with other ready tensors of their dtype and op,
  // up to the fusion threshold) and completed through one handle: all or nothing. The
  // InvalidArgument cases as allreduceAsync, and an empty group or mixed dtypes.
  Handle groupedAllreduceAsync(std::string name, std::vector<Tensor> tensors,
                               AllreduceSpec spec = {});

  // Submits tensor to be reduced over ranks (spec.op, scales as allreduceAsync) and
  // scattered along its first dimension: of its R rows every rank gets R / n, the first
  // R % n ranks one more (as Horovod), rank r the r-th slice in row order. Every rank gives
  // the same shape, dtype and op. allocate is called once on the engine thread with this
  // rank's number of rows and returns the tensor to write them into (as for allgatherAsync:
  // an allocator that throws or does not fit fails this rank's handle only).
  Handle reducescatterAsync(std::string name, Tensor tensor, Allocator allocate,
                            AllreduceSpec spec = {});

  // Says this rank has run out of data, and returns once every rank has called join (the
  // number of the last rank to join). Meanwhile this rank's engine takes part in every
  // allreduce and grouped allreduce the other ranks run with zeros (sum and avg: avg still
  // divides by the full size, as in Horovod; min, max and prod see the zeros too). Other
  // collectives wait until this rank submits them. Call it from one thread at a time; it
  // throws what failed the engine.
  int join();

  // Where an alltoall's result goes: called once on the engine thread with the number of
  // rows this rank receives and how many came from each rank (in rank order); returns a host
  // tensor of that many rows of the input's row shape and dtype. Must not wait on handles.
  using AlltoallAllocator =
      std::function<Tensor(std::int64_t rows, const std::vector<std::int64_t>& receivedSplits)>;
  // Submits tensor to be scattered along its first dimension: its first splits[p] rows go to
  // rank 0, ... (splits[p] rows to rank p, in row order; empty splits: the rows split evenly,
  // which they must), and this rank receives from every rank the rows that rank sent it, in
  // rank order, into the tensor allocate returns. Splits may differ between ranks; the name,
  // dtype and the other dimensions must agree. InvalidArgument at once for splits that are
  // not one per rank, negative, or do not add up to the rows, and the cases above.
  Handle alltoallAsync(std::string name, Tensor tensor, std::vector<std::int64_t> splits,
                       AlltoallAllocator allocate);

  // Writes a Chrome trace of this rank's engine to path (chrome://tracing, Perfetto) from
  // now on, replacing a trace already running: per tensor its negotiation and collective,
  // per fused batch the copies and the collective (docs/engine.md). SKYRING_TIMELINE starts
  // one at construction. Throws InvalidArgument when path cannot be written. Any thread.
  void startTimeline(const std::string& path);
  // Completes the trace's JSON and closes it. Any thread; nothing when none runs.
  void stopTimeline() noexcept;

  // Stops the engine collectively: this rank's pending handles fail with Aborted at once,
  // and the background thread keeps taking part in cycles (so no other rank hangs) until
  // every rank has called shutdown, then exits. Returns when it has, or at most
  // Config::initTimeout after this call (the bound of Runtime's goodbye): then every
  // rank's engine stops, its handles failing with Timeout naming the ranks that did not
  // shut down. Idempotent.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace skyring
