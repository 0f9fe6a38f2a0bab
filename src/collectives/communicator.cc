#include "skyring/communicator.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "collectives/algorithms.h"
#include "collectives/compression_cache.h"
#include "collectives/exchange.h"
#include "collectives/hierarchical.h"
#include "collectives/node_algorithms.h"
#include "collectives/node_level.h"
#include "skyring/compression.h"
#include "transport/subgroup_transport.h"

namespace skyring {

namespace {

using collectives::CallSignature;
using collectives::Opcode;

bool overlaps(const BufferView& a, const BufferView& b) {
  const auto* a0 = static_cast<const std::byte*>(a.data);
  const auto* b0 = static_cast<const std::byte*>(b.data);
  return a.bytes() > 0 && b.bytes() > 0 && a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

void checkBuffer(const BufferView& v, const ErrorContext& ctx, const char* what) {
  SKYRING_CHECK_ARG(v.memory == MemoryKind::host, ctx, what,
                    " is device memory: this communicator's transport moves host memory only");
  SKYRING_CHECK_ARG(v.count == 0 || v.data != nullptr, ctx, what, " is null with count ", v.count);
}

}  // namespace

Communicator::Communicator(std::shared_ptr<transport::Transport> transport, Config config,
                           std::shared_ptr<transport::NodeChannel> node,
                           std::shared_ptr<const topology::Topology> topology,
                           std::uint32_t primaryTag)
    : transport_(std::move(transport)),
      config_(std::move(config)),
      primaryTag_(primaryTag),
      topology_(std::move(topology)) {
  SKYRING_CHECK_ARG(transport_ != nullptr, {}, "Communicator needs a transport");
  rank_ = transport_->rank();
  size_ = transport_->size();
  logger_ = Logger(config_.logLevel, rank_);
  for (const auto& w : config_.warnings)
    SKYRING_LOG(logger_, warn, w);
  // The channel must join exactly this group's ranks, in the same order.
  bool same = node != nullptr && node->size() == size_ && node->rank() == rank_;
  for (int r = 0; same && r < size_; ++r)
    same = node->worldRank(r) == r;
  if (same && config_.sharedMemory && size_ > 1) node_ = std::move(node);
  // Or the ranks of this rank's node, in a job with several (node_level.h).
  if (node != nullptr && config_.sharedMemory && topology_ != nullptr &&
      topology_->size() == size_ && topology_->nodes() > 1 &&
      node->worldRanks() == topology_->groupOf(topology::Level::node, rank_) &&
      node->rank() == topology_->indexInGroup(topology::Level::node, rank_)) {
    nodeLevel_ = std::move(node);
  }
  SKYRING_CHECK_ARG(topology_ == nullptr || topology_->size() == size_,
                    (ErrorContext{rank_, -1, "communicator"}), "topology of ", topology_->size(),
                    " ranks for a group of ", size_);
  compression_ = std::make_unique<CompressionCache>();
  try {
    compression_->codecs.emplace(config_.compression,
                                 compression::makeCompressor(config_.compression));
  } catch (const InvalidArgument& e) {
    SKYRING_THROW(InvalidArgument, (ErrorContext{rank_, -1, "communicator"}),
                  "SKYRING_COMPRESSION: ", e.detail());
  }
  SKYRING_CHECK_ARG(
      !config_.compressionLevels.cloud ||
          compression_->codecs.begin()->second->codec() != compression::Codec::powersgd,
      (ErrorContext{rank_, -1, "communicator"}), "SKYRING_COMPRESSION=", config_.compression,
      " with SKYRING_COMPRESSION_LEVELS including cloud: PowerSGD compresses the "
      "cross_cloud level only");
}

bool Communicator::nodeLevelFor(const CollectiveOptions& options) const noexcept {
  // The same answer on every rank: from the topology, settings and options only (the
  // runtime drops shared memory on every rank when one node could not set it up).
  if (topology_ == nullptr || !config_.sharedMemory || topology_->nodes() < 2 ||
      topology_->nodes() == size_) {
    return false;
  }
  // The primary tag only: the channel runs one call at a time, and the engine runs calls
  // on other tags (given an algorithm) beside its primary-tag batches.
  if (options.tag != primaryTag_) return false;
  const AllreduceAlgorithm a = options.algorithm.value_or(config_.allreduceAlgorithm);
  if (a != AllreduceAlgorithm::automatic && a != AllreduceAlgorithm::hierarchical) return false;
  // Every rank has its node's channel (one of one rank alone on its node), or none has:
  // the runtime drops them all when one node failed, and a test gives all or none.
  return nodeLevel_ != nullptr;
}

AllreduceAlgorithm Communicator::algorithmFor(const CollectiveOptions& options) const noexcept {
  // Config::allreduceAlgorithm applies to the primary tag only, as the node channel: others keep
  // the flat ring (and so serve as the reference the others are checked against).
  if (topology_ == nullptr || size_ == 1) return AllreduceAlgorithm::ring;
  AllreduceAlgorithm a = config_.allreduceAlgorithm;
  if (options.algorithm) {
    a = *options.algorithm;
  } else if (options.tag != primaryTag_) {
    return AllreduceAlgorithm::ring;
  }
  if (a == AllreduceAlgorithm::automatic) {
    a = topology_->clouds() > 1 ? AllreduceAlgorithm::hierarchical : AllreduceAlgorithm::ring;
  }
  return a;
}

bool Communicator::onNode(const CollectiveOptions& options) const noexcept {
  // The primary tag only: the channel runs one call at a time, and calls on other tags may run
  // concurrently from other threads.
  return node_ != nullptr && options.tag == primaryTag_;
}

std::chrono::steady_clock::time_point Communicator::deadline(
    const CollectiveOptions& options) const {
  return std::chrono::steady_clock::now() +
         (options.timeout.count() > 0 ? options.timeout : config_.timeout);
}

template <typename Fn>
void Communicator::runOnNode(const char* op, Fn&& fn) {
  try {
    fn(++nodeSequence_);
  } catch (const Error& e) {
    const std::string reason = "rank " + std::to_string(rank_) + " in " + op + ": " + e.detail();
    SKYRING_LOG(logger_, error, reason);
    node_->abort(e.kind(), reason);
    transport_->abort(e.kind(), reason);
    throw;
  }
}

namespace {
// Whether the call running on this thread has taken its sequence number: from then on it
// is part of the group's sequence of calls, and its failure is the group's.
thread_local bool tSequenced = false;
}  // namespace

template <typename Fn>
void Communicator::guarded(const char* op, Fn&& fn) {
  if (failed()) {
    std::lock_guard lock(failureMutex_);
    SKYRING_THROW(Aborted, (ErrorContext{rank_, -1, op}), "the group failed earlier: ", failure_);
  }
  tSequenced = false;
  try {
    fn();
  } catch (const Error& e) {
    // A bad argument found before the call took its sequence number leaves the group as
    // it was. Anything later (a dead or disagreeing peer, or scratch this rank could not
    // allocate) fails the group, so that peers fail at once with this reason.
    if (e.kind() == ErrorKind::invalidArgument && !tSequenced) throw;
    const std::string reason =
        e.peer() < 0 && e.kind() != ErrorKind::invalidArgument
            ? e.detail()
            : "rank " + std::to_string(rank_) + " in " + op + ": " + e.detail();
    {
      std::lock_guard lock(failureMutex_);
      if (!failed_.load(std::memory_order_relaxed)) {
        failureKind_ = e.kind();
        failure_ = reason;
      }
      failed_.store(true, std::memory_order_release);
    }
    if (e.kind() == ErrorKind::invalidArgument) SKYRING_LOG(logger_, error, reason);
    // Every rank of the group must stop, on every path: the transport's abort reaches the
    // peers (the exchange has sent it already when a peer failed: the first reason wins),
    // and the node channel's reaches the local ranks whose next call would otherwise go
    // through shared memory only and succeed without the failed ones.
    if (node_) node_->abort(e.kind(), reason);
    if (nodeLevel_) nodeLevel_->abort(e.kind(), reason);
    transport_->abort(e.kind(), reason);
    throw;
  }
}

Communicator::~Communicator() = default;

namespace {

collectives::Exchange makeExchange(transport::Transport& transport, const Logger& logger,
                                   const Config& config, std::uint32_t sequence,
                                   const CallSignature& signature,
                                   const CollectiveOptions& options) {
  return collectives::Exchange(transport, logger, signature, options.tag, sequence,
                               options.timeout.count() > 0 ? options.timeout : config.timeout);
}

}  // namespace

std::uint32_t Communicator::sequenceFor(const CollectiveOptions& options, const char* op) {
  SKYRING_CHECK_ARG(options.tag <= collectives::kMaxUserTag, (ErrorContext{rank_, -1, op}), "tag ",
                    options.tag, " exceeds ", collectives::kMaxUserTag);
  SKYRING_CHECK_ARG(options.timeout.count() >= 0, (ErrorContext{rank_, -1, op}),
                    "negative timeout");
  std::lock_guard lock(sequenceMutex_);
  tSequenced = true;
  return sequences_[options.tag]++;
}

void Communicator::allreduce(BufferView input, BufferView output, ReduceOp op,
                             const CollectiveOptions& options) {
  // PowerSGD over a fused buffer's tensors is a composition of plain allreduces.
  if (!options.segments.empty() && powerSgdSegments(input, output, op, options)) return;
  guarded("allreduce", [&] {
    const ErrorContext ctx{rank_, -1, "allreduce"};
    checkBuffer(input, ctx, "input");
    checkBuffer(output, ctx, "output");
    SKYRING_CHECK_ARG(input.count == output.count && input.dtype == output.dtype, ctx, "input (",
                      input.count, " x ", dtypeName(input.dtype), ") and output (", output.count,
                      " x ", dtypeName(output.dtype), ") differ");
    SKYRING_CHECK_ARG(input.data == output.data || !overlaps(input, output), ctx,
                      "input and output overlap without being the same buffer");
    const std::uint32_t sequence = sequenceFor(options, ctx.op.c_str());
    auto ex =
        makeExchange(*transport_, logger_, config_, sequence,
                     CallSignature{Opcode::allreduce, input.dtype, op, input.count, -1}, options);
    if (input.count == 0) return;
    const collectives::RingParams ring{config_.ringChunkBytes, config_.ringPipelineDepth};
    const AllreduceAlgorithm algorithm = algorithmFor(options);
    const bool compressible =
        input.dtype == DType::f32 && (op == ReduceOp::sum || op == ReduceOp::avg);
    // Runs the call with its codec, if any: momentum compression around it (the codec sees
    // this rank's momentum, not its gradient).
    const auto compressed = [&](collectives::HierarchicalCall& call,
                                const collectives::SegmentLayout& layout, auto&& run) {
      const double beta = call.codec != nullptr ? call.codec->momentum() : 0.0;
      if (beta == 0) {
        run(input);
        return;
      }
      if (input.data != output.data) std::memcpy(output.data, input.data, input.bytes());
      auto* data = static_cast<float*>(output.data);
      const auto* segments = call.segments != nullptr ? &layout : nullptr;
      collectives::momentumBefore(data, output.count, beta, segments, call.codecState);
      run(output);
      collectives::momentumAfter(data, output.count, beta, segments, call.codecState);
    };
    // The node level carries codec calls too, compressing across clouds only: through the
    // hierarchical levels node-mates send each other their bytes over the transport (a
    // 4 MiB int8 allreduce on 2 clouds x 2 ranks: 4 MiB per rank, 0 through the node
    // level). A codec for the cloud level keeps the hierarchical levels, whose cloud ring
    // it compresses whole.
    const bool cloudCodec = compressible &&
                            options.compressionLevels.value_or(config_.compressionLevels).cloud &&
                            codecFor(options) != nullptr;
    if (nodeLevelFor(options) && !cloudCodec) {
      collectives::HierarchicalCall call{
          transport_,
          *topology_,
          logger_,
          ex.signature(),
          options.tag,
          sequence,
          options.timeout.count() > 0 ? options.timeout : config_.timeout};
      call.observer = options.observer;
      collectives::TensorCompressionState pieces;  // a fused buffer's, for this call only
      collectives::SegmentLayout layout;
      if (compressible) compressionFor(options, output, call, pieces, layout, true);
      SKYRING_LOG(logger_, debug, "allreduce #", sequence, " tag ", options.tag, ": ", input.count,
                  " x ", dtypeName(input.dtype), " ", reduceOpName(op), " via the node level",
                  call.codec != nullptr ? " (" + call.codec->spec() + " across clouds)" : "");
      std::lock_guard lock(nodeLevelMutex_);
      const std::uint64_t seq = nodeSequence_ + 1;
      if (nodeLevel_) nodeSequence_ += 2;
      compressed(call, layout, [&](BufferView from) {
        collectives::nodeLevelAllreduce(
            {call,
             nodeLevel_.get(),
             seq,
             deadline(options),
             {config_.shmChunkBytes, config_.shmSlotBytes, config_.shmSingleCopyBytes},
             &nodeScratch_},
            from, output, op, ring);
      });
      return;
    }
    SKYRING_LOG(logger_, debug, "allreduce #", sequence, " tag ", options.tag, ": ", input.count,
                " x ", dtypeName(input.dtype), " ", reduceOpName(op), " via ",
                algorithm == AllreduceAlgorithm::hierarchical ? "hierarchical"
                : onNode(options) && collectives::nodeAllreduceFits(*node_, input.bytes())
                    ? "the node channel"
                : algorithm == AllreduceAlgorithm::topologyRing ? "ring in topology order"
                                                                : "ring in rank order");
    if (algorithm == AllreduceAlgorithm::hierarchical) {
      collectives::HierarchicalCall call{
          transport_,
          *topology_,
          logger_,
          ex.signature(),
          options.tag,
          sequence,
          options.timeout.count() > 0 ? options.timeout : config_.timeout};
      call.observer = options.observer;
      collectives::TensorCompressionState pieces;  // a fused buffer's, for this call only
      collectives::SegmentLayout layout;
      if (compressible) compressionFor(options, output, call, pieces, layout, false);
      compressed(call, layout, [&](BufferView from) {
        collectives::hierarchicalAllreduce(call, from, output, op, ring);
      });
      return;
    }
    if (onNode(options) && collectives::nodeAllreduceFits(*node_, input.bytes())) {
      runOnNode("allreduce", [&](std::uint64_t seq) {
        const collectives::PhaseSpan phase({options.observer, "node", 0}, "node allreduce",
                                           input.bytes());
        collectives::nodeAllreduce(
            *node_, seq, input, output, op, deadline(options),
            {config_.shmChunkBytes, config_.shmSlotBytes, config_.shmSingleCopyBytes},
            nodeScratch_);
      });
      return;
    }
    if (algorithm == AllreduceAlgorithm::topologyRing) {
      // The flat ring, numbered in ring order (clouds and nodes contiguous); it uses the
      // cloud ring's level id, which no other group of this call uses.
      transport::SubgroupTransport ordered(
          transport_, topology_->ringOrder(),
          transport::SubgroupTransport::Scope::level(collectives::kCloudGroupId),
          "ring in topology order");
      auto orderedEx =
          collectives::Exchange(ordered, logger_, ex.signature(), options.tag, sequence,
                                options.timeout.count() > 0 ? options.timeout : config_.timeout);
      orderedEx.diagnoseOver(*transport_);
      collectives::ringAllreduce(orderedEx, input, output, op, ring);
      return;
    }
    collectives::ringAllreduce(ex, input, output, op, ring);
  });
}

bool Communicator::allreducesInPlace(std::size_t bytes, const CollectiveOptions& options) const {
  // Not the single-copy path: it reads a peer's input as one address range.
  const bool singleCopy = config_.shmSingleCopyBytes != 0 && bytes >= config_.shmSingleCopyBytes &&
                          node_ != nullptr && node_->singleCopy();
  const std::string_view spec =
      options.compression == kDefaultCompression ? config_.compression : options.compression;
  const bool codec = !spec.empty() && spec != "none";
  return onNode(options) && !nodeLevelFor(options) &&
         algorithmFor(options) != AllreduceAlgorithm::hierarchical && !codec && !singleCopy &&
         collectives::nodeAllreduceFits(*node_, bytes);
}

void Communicator::allreduce(std::span<const BufferView> buffers, ReduceOp op,
                             const CollectiveOptions& options) {
  const ErrorContext ctx{rank_, -1, "allreduce"};
  SKYRING_CHECK_ARG(!buffers.empty(), ctx, "no buffers");
  std::size_t bytes = 0;
  for (const BufferView& b : buffers) {
    checkBuffer(b, ctx, "buffer");
    SKYRING_CHECK_ARG(b.dtype == buffers.front().dtype, ctx, "buffers of ",
                      dtypeName(buffers.front().dtype), " and ", dtypeName(b.dtype));
    bytes += b.bytes();
  }
  const DType dtype = buffers.front().dtype;
  if (buffers.size() == 1 || !allreducesInPlace(bytes, options)) {
    if (buffers.size() == 1) return allreduce(buffers.front(), op, options);
    std::vector<std::byte> joined(bytes);
    std::size_t at = 0;
    for (const BufferView& b : buffers) {
      if (b.bytes() != 0) std::memcpy(joined.data() + at, b.data, b.bytes());
      at += b.bytes();
    }
    allreduce(BufferView{joined.data(), bytes / dtypeSize(dtype), dtype, MemoryKind::host}, op,
              options);
    at = 0;
    for (const BufferView& b : buffers) {
      if (b.bytes() != 0) std::memcpy(b.data, joined.data() + at, b.bytes());
      at += b.bytes();
    }
    return;
  }
  guarded("allreduce", [&] {
    const std::size_t count = bytes / dtypeSize(dtype);
    const std::uint32_t sequence = sequenceFor(options, ctx.op.c_str());
    if (count == 0) return;
    SKYRING_LOG(logger_, debug, "allreduce #", sequence, " tag ", options.tag, ": ", count, " x ",
                dtypeName(dtype), " ", reduceOpName(op), " in ", buffers.size(),
                " buffers via the node channel, in place");
    runOnNode("allreduce", [&](std::uint64_t seq) {
      const collectives::PhaseSpan phase({options.observer, "node", 0}, "node allreduce", bytes);
      collectives::nodeAllreducePieces(
          *node_, seq, buffers, op, deadline(options),
          {config_.shmChunkBytes, config_.shmSlotBytes, config_.shmSingleCopyBytes});
    });
  });
}

const compression::Compressor* Communicator::codecFor(const CollectiveOptions& options) {
  // Only where asked: empty means none, whatever SKYRING_COMPRESSION says (issue 12: a
  // metric summed across clouds came back wrong when the job's codec applied to it).
  const std::string_view spec =
      options.compression == kDefaultCompression ? config_.compression : options.compression;
  if (spec.empty()) return nullptr;
  std::lock_guard lock(compression_->mutex);
  auto it = compression_->codecs.find(spec);
  if (it == compression_->codecs.end()) {
    it = compression_->codecs.emplace(std::string(spec), compression::makeCompressor(spec)).first;
  }
  return it->second->codec() == compression::Codec::none ? nullptr : it->second.get();
}

void Communicator::compressionFor(const CollectiveOptions& options, const BufferView& output,
                                  collectives::HierarchicalCall& call,
                                  collectives::TensorCompressionState& pieces,
                                  collectives::SegmentLayout& layout, bool nodeLevel) {
  const compression::Compressor* codec = codecFor(options);
  const CompressionLevels levels = options.compressionLevels.value_or(config_.compressionLevels);
  if (codec == nullptr || (!levels.cloud && !levels.crossCloud)) return;
  // One cloud has no level across clouds: nothing to compress unless the cloud level is
  // (and no momentum to move into the codec either).
  if (topology_->clouds() < 2 && !levels.cloud) return;
  const ErrorContext ctx{rank_, -1, "allreduce"};
  const std::string spec = codec->spec();
  SKYRING_CHECK_ARG(!levels.cloud || codec->codec() != compression::Codec::powersgd, ctx,
                    "compression '", spec,
                    "' at the cloud level: PowerSGD compresses the cross_cloud level only");
  if (!options.segments.empty()) {
    // PowerSGD over segments ran in powerSgdSegments where a level across clouds exists;
    // where none does it has nothing to compress.
    if (codec->codec() == compression::Codec::powersgd) return;
    collectives::checkSegments(options.segments, output.count, ctx);
    std::lock_guard lock(compression_->mutex);
    std::uint64_t salt = 0xcbf29ce484222325ull;
    for (const TensorSegment& seg : options.segments) {
      auto& st = compression_->segments[{spec, std::string(seg.name)}];
      if (st.count != seg.count) {
        st = collectives::SegmentCodecState();
        st.count = seg.count;
      }
      salt = (salt ^ st.calls++) * 0x100000001b3ull;
      // Inside a cloud each piece's owner encodes it for its cloud-mates, and owners in
      // other clouds must send the same bytes, so they need the same residual. Where the
      // tensor moved in the buffer its elements have other owners, whose residuals differ
      // between clouds of different sizes: every rank drops it alike (the layout is the
      // same everywhere).
      if (st.lastOffset != seg.offset || st.lastBuffer != output.count) {
        st.residual[static_cast<std::size_t>(collectives::Residual::cloudGather)].clear();
        st.lastOffset = seg.offset;
        st.lastBuffer = output.count;
      }
      layout.tensors.push_back({seg.offset, seg.count, &st});
    }
    layout.salt = salt;
    call.codec = codec;
    call.compressCloud = levels.cloud;
    call.compressCrossCloud = levels.crossCloud;
    call.codecState = &pieces;
    call.segments = &layout;
    return;
  }
  const std::uint64_t key =
      options.tensorKey != 0
          ? options.tensorKey
          : static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(output.data));
  call.codec = codec;
  call.compressCloud = levels.cloud;
  call.compressCrossCloud = levels.crossCloud;
  std::lock_guard lock(compression_->mutex);
  // The node level cuts the buffer into other pieces than the hierarchical levels: a
  // tensor that goes both ways (other options) keeps a state for each.
  call.codecState =
      &(nodeLevel ? compression_->nodeTensors : compression_->tensors)[{spec, key, output.count}];
}

void Communicator::reduceScatter(BufferView input, BufferView output, ReduceOp op,
                                 const CollectiveOptions& options) {
  guarded("reduce_scatter", [&] {
    const ErrorContext ctx{rank_, -1, "reduce_scatter"};
    checkBuffer(input, ctx, "input");
    checkBuffer(output, ctx, "output");
    SKYRING_CHECK_ARG(input.dtype == output.dtype, ctx, "input dtype ", dtypeName(input.dtype),
                      " differs from output dtype ", dtypeName(output.dtype));
    SKYRING_CHECK_ARG(input.count == output.count * static_cast<std::size_t>(size_), ctx,
                      "input count ", input.count, " must be ", size_, " x output count ",
                      output.count);
    SKYRING_CHECK_ARG(!overlaps(input, output), ctx, "input and output overlap");
    auto ex = makeExchange(*transport_, logger_, config_, sequenceFor(options, ctx.op.c_str()),
                           CallSignature{Opcode::reduceScatter, input.dtype, op, output.count, -1},
                           options);
    if (output.count == 0) return;
    collectives::ringReduceScatter(ex, input, output, op,
                                   {config_.ringChunkBytes, config_.ringPipelineDepth});
  });
}

void Communicator::allgather(BufferView input, BufferView output,
                             const CollectiveOptions& options) {
  guarded("allgather", [&] {
    const ErrorContext ctx{rank_, -1, "allgather"};
    checkBuffer(input, ctx, "input");
    checkBuffer(output, ctx, "output");
    SKYRING_CHECK_ARG(input.dtype == output.dtype, ctx, "input dtype ", dtypeName(input.dtype),
                      " differs from output dtype ", dtypeName(output.dtype));
    SKYRING_CHECK_ARG(output.count == input.count * static_cast<std::size_t>(size_), ctx,
                      "output count ", output.count, " must be ", size_, " x input count ",
                      input.count);
    const BufferView own = output.slice(input.count * static_cast<std::size_t>(rank_), input.count);
    SKYRING_CHECK_ARG(input.data == own.data || !overlaps(input, output), ctx,
                      "input overlaps output other than as block ", rank_);
    auto ex = makeExchange(
        *transport_, logger_, config_, sequenceFor(options, ctx.op.c_str()),
        CallSignature{Opcode::allgather, input.dtype, ReduceOp::sum, input.count, -1}, options);
    if (input.count == 0) return;
    if (input.data != own.data) std::memcpy(own.data, input.data, input.bytes());
    collectives::ringAllgather(ex, output, {config_.ringChunkBytes, config_.ringPipelineDepth});
  });
}

void Communicator::alltoall(BufferView input, std::span<const std::size_t> sendCounts,
                            BufferView output, std::span<const std::size_t> recvCounts,
                            const CollectiveOptions& options) {
  guarded("alltoall", [&] {
    const ErrorContext ctx{rank_, -1, "alltoall"};
    checkBuffer(input, ctx, "input");
    checkBuffer(output, ctx, "output");
    SKYRING_CHECK_ARG(input.dtype == output.dtype, ctx, "input dtype ", dtypeName(input.dtype),
                      " differs from output dtype ", dtypeName(output.dtype));
    const auto n = static_cast<std::size_t>(size_);
    SKYRING_CHECK_ARG(sendCounts.size() == n && recvCounts.size() == n, ctx, sendCounts.size(),
                      " send and ", recvCounts.size(), " receive counts for ", n, " ranks");
    std::size_t sent = 0;
    std::size_t received = 0;
    for (std::size_t r = 0; r < n; ++r) {
      sent += sendCounts[r];
      received += recvCounts[r];
    }
    SKYRING_CHECK_ARG(sent == input.count && received == output.count, ctx, "counts add up to ",
                      sent, " sent and ", received, " received, the buffers hold ", input.count,
                      " and ", output.count);
    SKYRING_CHECK_ARG(!overlaps(input, output), ctx, "input and output overlap");
    // The counts differ between ranks: the signature carries the group's size instead.
    auto ex =
        makeExchange(*transport_, logger_, config_, sequenceFor(options, ctx.op.c_str()),
                     CallSignature{Opcode::alltoall, input.dtype, ReduceOp::sum, n, -1}, options);
    collectives::pairwiseAlltoall(ex, input, sendCounts, output, recvCounts);
  });
}

void Communicator::broadcast(BufferView buffer, int root, const CollectiveOptions& options) {
  guarded("broadcast", [&] {
    const ErrorContext ctx{rank_, -1, "broadcast"};
    checkBuffer(buffer, ctx, "buffer");
    SKYRING_CHECK_ARG(root >= 0 && root < size_, ctx, "root ", root,
                      " is not a rank of a group of ", size_);
    auto ex = makeExchange(
        *transport_, logger_, config_, sequenceFor(options, ctx.op.c_str()),
        CallSignature{Opcode::broadcast, buffer.dtype, ReduceOp::sum, buffer.count, root}, options);
    collectives::chainBroadcast(ex, buffer, root,
                                {config_.ringChunkBytes, config_.ringPipelineDepth});
  });
}

void Communicator::barrier(const CollectiveOptions& options) {
  guarded("barrier", [&] {
    const ErrorContext ctx{rank_, -1, "barrier"};
    auto ex =
        makeExchange(*transport_, logger_, config_, sequenceFor(options, ctx.op.c_str()),
                     CallSignature{Opcode::barrier, DType::u8, ReduceOp::sum, 0, -1}, options);
    if (onNode(options)) {
      runOnNode("barrier", [&](std::uint64_t seq) {
        collectives::nodeBarrier(*node_, seq, deadline(options));
      });
      return;
    }
    collectives::disseminationBarrier(ex);
  });
}

}  // namespace skyring
