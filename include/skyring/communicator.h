// The collectives of one group of ranks, run over a Transport.
//
// Calls are collective: every rank of the group makes the same calls in the same order
// (per options.tag) with matching counts, dtypes, ops and roots. Mismatches are detected
// and reported as errors rather than corrupting memory.
//
// Thread-safety: one Communicator is used by one thread at a time per tag; calls with
// different tags may run concurrently from different threads.
//
// Failure: a rank that dies, or does not arrive within the timeout, makes every other
// rank throw (TransportError or Timeout) with a message naming it; the group is then
// aborted and later calls fail at once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/collective_observer.h"
#include "skyring/config.h"
#include "skyring/reduce_op.h"
#include "skyring/topology.h"
#include "skyring/transport.h"

namespace skyring {

namespace transport {
class NodeChannel;
}
namespace collectives {
struct HierarchicalCall;
struct TensorCompressionState;
struct SegmentLayout;
}  // namespace collectives
namespace compression {
class Compressor;
}

// One tensor of a fused buffer (CollectiveOptions::segments).
struct TensorSegment {
  std::string_view name;                // keys its codec state
  std::size_t offset = 0;               // first element in the buffer
  std::size_t count = 0;                // elements
  std::span<const std::int64_t> shape;  // PowerSGD: rows = shape[0], cols = the rest
};

struct CollectiveOptions {
  // Longest wait without progress; zero means Config::timeout.
  std::chrono::milliseconds timeout{0};
  // Separates concurrent streams of collectives (e.g. two threads); 0..4095.
  std::uint32_t tag = 0;
  // allreduce only. The algorithm of this call, instead of Config::allreduceAlgorithm
  // (which applies on tag 0 only; this applies on any tag). Without a topology every
  // choice is the ring.
  std::optional<AllreduceAlgorithm> algorithm;
  // allreduce only. The codec of this call's compressed levels, as a compression spec
  // (skyring/compression.h). Compression applies only where a caller asks for it: empty
  // (the default) or "none" sends full precision whatever SKYRING_COMPRESSION says;
  // kDefaultCompression means the job's codec for gradients (Config::compression, i.e.
  // SKYRING_COMPRESSION); any other value is the codec itself. A metric (a vector of
  // counts) must never ask: a lossy codec would change its values.
  std::string_view compression;
  // allreduce only. The levels that codec compresses, instead of Config::compressionLevels.
  std::optional<CompressionLevels> compressionLevels;
  // allreduce with a codec only. Which tensor this call reduces: codecs keep state per
  // tensor (the error-feedback residual, PowerSGD's factors) from one call to the next.
  // 0: the output buffer's address and count name the tensor, which suits gradients that
  // stay in place from step to step; give distinct keys when buffers are reused.
  std::uint64_t tensorKey = 0;
  // allreduce with a codec only: the buffer is several tensors fused (the engine's fusion
  // buffer), listed in order and covering it exactly. Each keeps its own codec state,
  // keyed by its name (tensorKey is then unused), by element, whatever it is fused with;
  // PowerSGD compresses each as its own matrix (TensorSegment::shape). Borrowed for the
  // call.
  std::span<const TensorSegment> segments;
  // allreduce only. Told each phase of the call (its levels, its codec's encode and decode;
  // skyring/collective_observer.h says which and from which threads); null: none, at the
  // cost of one check per phase. Borrowed for the call.
  CollectiveObserver* observer = nullptr;
};

// What the job's gradients use: CollectiveOptions::compression (and the engine's
// AllreduceSpec::compression) of this value picks Config::compression (SKYRING_COMPRESSION).
inline constexpr std::string_view kDefaultCompression = "default";

class Communicator {
 public:
  // node, if given, joins the same ranks through shared memory (the Runtime makes one when
  // every rank is on one node); allreduce and barrier on tag 0 then use it (see
  // Config::sharedMemory).
  // topology, if given, says where this group's ranks are (same size as the transport):
  // allreduce on tag 0 then runs hierarchically across clouds as
  // Config::allreduceAlgorithm says (by default when there is more than one cloud).
  // primaryTag: the tag on which the node channel and Config::allreduceAlgorithm apply (0
  // by default). A second communicator over the same transport with a node channel of its
  // own serves another owner on another tag this way (the Runtime's engine, on 4095).
  Communicator(std::shared_ptr<transport::Transport> transport, Config config = {},
               std::shared_ptr<transport::NodeChannel> node = nullptr,
               std::shared_ptr<const topology::Topology> topology = nullptr,
               std::uint32_t primaryTag = 0);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  const Config& config() const noexcept { return config_; }
  const Logger& logger() const noexcept { return logger_; }
  // Where the group's ranks are; null when it was made without a topology.
  const topology::Topology* topology() const noexcept { return topology_.get(); }

  // output = op over ranks of input. input and output have the same count and dtype and
  // may be the same buffer (in place).
  void allreduce(BufferView input, BufferView output, ReduceOp op,
                 const CollectiveOptions& options = {});
  void allreduce(BufferView buffer, ReduceOp op, const CollectiveOptions& options = {}) {
    allreduce(buffer, buffer, op, options);
  }
  // buffers (one dtype) allreduced in place as if they were one: their concatenation, in
  // order. Where allreducesInPlace says so (the shared-memory node channel), each buffer is
  // read and written where it is; elsewhere they are copied into one buffer and back. Every
  // rank passes the same total count; the split into buffers may differ between ranks.
  void allreduce(std::span<const BufferView> buffers, ReduceOp op,
                 const CollectiveOptions& options = {});
  // True where allreduce(buffers, op, options) of `bytes` in all copies nothing (every
  // rank of the group on one node's channel; no codec). The same answer on every rank.
  bool allreducesInPlace(std::size_t bytes, const CollectiveOptions& options = {}) const;
  // input holds size() blocks of output.count elements; rank r receives block r reduced.
  void reduceScatter(BufferView input, BufferView output, ReduceOp op,
                     const CollectiveOptions& options = {});
  // output holds size() blocks of input.count elements; block r comes from rank r.
  // input may alias block rank() of output.
  void allgather(BufferView input, BufferView output, const CollectiveOptions& options = {});
  // sendCounts[p] elements of input (blocks in rank order) go to rank p; block p of output
  // (recvCounts[p] elements, blocks in rank order) comes from rank p. p's sendCounts[r]
  // must equal r's recvCounts[p] (the caller exchanges the counts first when they are not
  // known). Pairwise exchange: n-1 steps, one peer each way per step.
  void alltoall(BufferView input, std::span<const std::size_t> sendCounts, BufferView output,
                std::span<const std::size_t> recvCounts, const CollectiveOptions& options = {});
  // buffer of root is copied to every rank's buffer.
  void broadcast(BufferView buffer, int root, const CollectiveOptions& options = {});
  // Returns once every rank has entered the barrier.
  void barrier(const CollectiveOptions& options = {});

  // The codec state of the tensors options.segments names (under options' codec), copied
  // so that restoreCodecState can put it back when the caller drops the call's result (the
  // engine's replay drops a batch some rank did not have: docs/engine.md, "Replay"). Null
  // when options ask for no codec or name no segments. Not concurrent with a call that
  // compresses those tensors.
  struct CodecSnapshot;
  std::shared_ptr<CodecSnapshot> saveCodecState(const CollectiveOptions& options);
  void restoreCodecState(const std::shared_ptr<CodecSnapshot>& snapshot);

  // True once a collective of this group failed (a dead, stalled or disagreeing rank):
  // the group is aborted, and every later call throws Aborted with the first reason.
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }
  // What allreduce runs on tag 0 with this group's topology and settings, in words (for
  // the start-up summary).
  std::string describeAllreduce() const;
  // True when allreduce and barrier on tag 0 go through shared memory (every rank of the
  // group on one node, SKYRING_SHM=1).
  bool usesSharedMemory() const noexcept { return node_ != nullptr; }

 private:
  // Validates options and returns the next sequence number of options.tag.
  std::uint32_t sequenceFor(const CollectiveOptions& options, const char* op);
  // True when this call goes through the node channel.
  bool onNode(const CollectiveOptions& options) const noexcept;
  // True when this allreduce runs the node level (several nodes, one with several ranks,
  // shared memory on, the primary tag, ring/topologyRing not forced).
  bool nodeLevelFor(const CollectiveOptions& options) const noexcept;
  // The algorithm this allreduce runs: ring, topologyRing or hierarchical.
  AllreduceAlgorithm algorithmFor(const CollectiveOptions& options) const noexcept;
  // Sets call's codec and tensor state from options and the config (none: leaves them).
  // pieces and layout: storage for a fused buffer's call (options.segments). nodeLevel:
  // the call runs the node level (its tensor states are kept apart).
  void compressionFor(const CollectiveOptions& options, const BufferView& output,
                      collectives::HierarchicalCall& call,
                      collectives::TensorCompressionState& pieces,
                      collectives::SegmentLayout& layout, bool nodeLevel);
  // The codec options ask for (Config::compression for kDefaultCompression), or null when
  // they ask for none. Throws InvalidArgument for a bad spec.
  const compression::Compressor* codecFor(const CollectiveOptions& options);
  // PowerSGD over the tensors of a fused buffer (compressed_segments.cc): each its own
  // matrix, their factors in two plain allreduces for the whole batch. True when it ran.
  bool powerSgdSegments(BufferView input, BufferView output, ReduceOp op,
                        const CollectiveOptions& options);
  std::chrono::steady_clock::time_point deadline(const CollectiveOptions& options) const;
  // Runs fn; on failure aborts the node channel and the transport, so no rank waits on.
  template <typename Fn>
  void runOnNode(const char* op, Fn&& fn);
  // Runs a collective: fails at once if the group failed before, and marks the group
  // failed (aborting the node channel and the transport for every rank) when it fails.
  template <typename Fn>
  void guarded(const char* op, Fn&& fn);

  std::shared_ptr<transport::Transport> transport_;
  Config config_;
  int rank_;
  int size_;
  Logger logger_;
  std::mutex sequenceMutex_;
  std::map<std::uint32_t, std::uint32_t> sequences_;
  std::uint32_t primaryTag_ = 0;
  std::shared_ptr<transport::NodeChannel> node_;  // null: transport only
  // In a job of several nodes: this node's ranks (node_level.h), or null. One call at a
  // time (nodeLevelMutex_), on the primary tag; uses nodeSequence_.
  std::shared_ptr<transport::NodeChannel> nodeLevel_;
  std::mutex nodeLevelMutex_;
  std::shared_ptr<const topology::Topology> topology_;  // null: flat algorithms only
  std::uint64_t nodeSequence_ = 0;
  std::vector<std::byte> nodeScratch_;
  // Codecs by spec and their per-tensor state (communicator.cc).
  struct CompressionCache;
  std::unique_ptr<CompressionCache> compression_;
  std::atomic<bool> failed_{false};
  std::mutex failureMutex_;
  ErrorKind failureKind_ = ErrorKind::aborted;  // guarded by failureMutex_
  std::string failure_;                         // guarded by failureMutex_
};

}  // namespace skyring
