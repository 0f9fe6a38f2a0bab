// Running the tensors a cycle found ready everywhere (engine_impl.h): allreduces (grouped
// ones member by member) and broadcasts fused into batches, allgathers and reducescatters
// alone. Called on the engine thread, in the order every rank agreed on.
#include <cstdint>
#include <cstring>

#include "engine/engine_impl.h"
#include "engine/fusion.h"
#include "engine/gather.h"

namespace skyring {

std::size_t Engine::Impl::inPlaceBytesOf(const Communicator& c, std::uint32_t tag) {
  // On one node's shared memory a batch is reduced where its tensors are (no fusion copy
  // to save), so large tensors fuse like the others: fewer collectives.
  CollectiveOptions onTag;
  onTag.tag = tag;
  onTag.algorithm = c.config().allreduceAlgorithm;  // as collectiveOptions() passes it
  onTag.compression = "none";
  if (c.allreducesInPlace(c.config().fusionThreshold, onTag)) return SIZE_MAX;
  const Config& config = c.config();
  const topology::Topology* t = c.topology();
  const Config::LinkParameters& slowest = t == nullptr      ? config.intraCloudLink
                                          : t->clouds() > 1 ? config.crossCloudLink
                                          : t->nodes() > 1  ? config.intraCloudLink
                                                            : config.intraNodeLink;
  return engine::inPlaceBytes(slowest.latencyMs / 1e3, c.size());
}

using engine::Clock;
using engine::Part;
using engine::Pending;

bool Engine::Impl::refuseWhileJoined(std::uint32_t slot, const std::string* name) {
  std::string joined;
  for (std::size_t r = 0; r < joinedBefore.size(); ++r) {
    if (joinedBefore[r] != 0) joined += (joined.empty() ? "" : ", ") + std::to_string(r);
  }
  if (joined.empty()) return false;
  if (name == nullptr) return true;  // a joined rank: nothing of this name is here
  auto it = pending.find(*name);
  if (it->second.ghost) {
    pending.erase(it);
    return true;
  }
  const engine::Descriptor& d = cache.at(slot);
  const char* what = d.collective == engine::Collective::broadcast       ? "broadcast"
                     : d.collective == engine::Collective::allgather     ? "allgather"
                     : d.collective == engine::Collective::reducescatter ? "reducescatter"
                                                                         : "alltoall";
  finish(it->second,
         std::make_exception_ptr(InvalidArgument(
             "'" + d.name + "' (" + what + ") cannot run while rank" +
                 (joined.find(',') == std::string::npos ? " " : "s ") + joined +
                 " joined: join() stands in only for allreduces and grouped allreduces, as "
                 "Horovod's; call this collective before join() on every rank",
             context("engine join"))));
  pending.erase(it);
  return true;
}

void Engine::Impl::execute(const std::vector<std::uint32_t>& readySlots) {
  std::map<std::uint32_t, std::string> bySlot;
  for (auto& [name, p] : pending) {
    if (p.slot && !p.announced) bySlot.emplace(*p.slot, name);
  }
  std::vector<Part> parts;      // fused: allreduce (grouped ones member by member), broadcast
  std::vector<Pending*> fused;  // the owners of parts, each once
  std::vector<Pending*> alone;  // allgather and reducescatter: each alone
  std::vector<engine::FusionItem> plan;
  for (std::uint32_t slot : readySlots) {
    auto it = bySlot.find(slot);
    if (!joinable(cache.at(slot)) &&
        refuseWhileJoined(slot, it == bySlot.end() ? nullptr : &it->second)) {
      continue;
    }
    if (it == bySlot.end() && joinedHere && joinable(cache.at(slot)) &&
        pending.count(cache.at(slot).name) == 0) {
      // This rank has joined: it takes part with zeros (unless another thread of this rank
      // submitted the name itself meanwhile, differently: then it cannot).
      it = bySlot.emplace(slot, addGhost(cache.at(slot), slot).descriptor.name).first;
    }
    if (it == bySlot.end()) {
      // Every rank set this slot's bit, this one included: its tensor must be here.
      SKYRING_THROW(Aborted, context("engine cycle"), "slot ", slot, " ('", cache.at(slot).name,
                    "') is ready everywhere but not pending on this rank");
    }
    Pending& p = pending.at(it->second);
    steps.ran(slot, p.descriptor.collective == engine::Collective::allreduce && !p.ghost);
    timeline.span(p.descriptor.name, "negotiate", "negotiation", p.submittedAt, Clock::now());
    const engine::Collective c = p.descriptor.collective;
    if (c == engine::Collective::allgather || c == engine::Collective::reducescatter ||
        c == engine::Collective::alltoall) {
      alone.push_back(&p);
      continue;
    }
    fused.push_back(&p);
    const int group = c == engine::Collective::broadcast ? p.descriptor.root : -1;
    // A group's members go into the plan one after the other: they fuse with each other
    // (and with other tensors of their dtype and op) up to the threshold, as single tensors.
    const std::vector<Tensor> single{p.tensor};
    const bool grouped = c == engine::Collective::groupedAllreduce;
    int member = 0;
    for (const Tensor& t : grouped ? p.members : single) {
      parts.push_back({&p, t.buffer});
      chooseCodec(parts.back(), p.descriptor, grouped ? member++ : -1);
      plan.push_back(
          {p.descriptor.dtype, p.descriptor.op, t.buffer.bytes(), group, parts.back().codec});
    }
  }
  const CollectiveOptions o = collectiveOptions(false);
  for (const auto& batch : engine::planFusion(plan, comm.config().fusionThreshold, inPlaceBytes)) {
    std::vector<Part> members;
    for (std::size_t i : batch)
      members.push_back(parts[i]);
    runBatch(members, o);
  }
  // Every ready tensor is done, those of zero elements included.
  for (Pending* p : fused) {
    const std::string name = p->descriptor.name;
    finish(*p, nullptr);
    pending.erase(name);
  }
  for (Pending* p : alone) {
    const auto begin = Clock::now();
    engine::CallMeter meter(metrics, nullptr);
    const engine::Collective c = p->descriptor.collective;
    std::exception_ptr error;
    const char* what = "allgather";
    if (c == engine::Collective::allgather) {
      error = engine::runAllgather(comm, o, p->descriptor, p->tensor.buffer, p->firstDims,
                                   p->allocate, fusion);
    } else if (c == engine::Collective::reducescatter) {
      error = runReducescatter(*p, o);
      what = "reducescatter";
    } else {
      error = runAlltoall(*p, o);
      what = "alltoall";
    }
    if (!error) meter.done(what);
    timeline.span(p->descriptor.name, what, "collective", begin, Clock::now());
    countTraffic();
    const std::string name = p->descriptor.name;
    finish(*p, std::move(error));
    pending.erase(name);
  }
}

void Engine::Impl::runBatch(const std::vector<Part>& batch, const CollectiveOptions& o) {
  const engine::Descriptor& head = batch.front().owner->descriptor;
  const bool broadcast = head.collective == engine::Collective::broadcast;
  const char* what = broadcast ? "broadcast" : "allreduce";
  // The collective over one buffer (pre/post scales are 1 for broadcasts), on the
  // timeline: once on the engine's lane, and on the lane of every tensor it carries.
  // A compressed batch: one compressed allreduce in which every tensor is a segment with
  // its own codec state (by name) and shape (docs/engine.md, "Compression"). While the
  // timeline runs, it is told the allreduce's phases (levels, encode and decode).
  std::vector<TensorSegment> segments;
  CollectiveOptions data = o;
  if (!batch.front().codec.empty()) {
    std::size_t offset = 0;
    for (const Part& part : batch) {
      segments.push_back({part.name, offset, part.buffer.count, part.shape});
      offset += part.buffer.count;
    }
    data.compression = batch.front().codec;
    data.segments = segments;
  }
  auto run = [&](BufferView b) {
    metrics.batch(b.bytes());
    engine::CallMeter meter(metrics, timeline.active() ? &timeline : nullptr);
    data.observer = meter.observer();
    const auto begin = Clock::now();
    if (broadcast) {
      comm.broadcast(b, head.root, o);
    } else {
      comm.allreduce(b, head.op, data);
    }
    meter.done(what);
    if (!timeline.active()) return;
    countTraffic();
    const auto end = Clock::now();
    std::string args =
        "\"tensors\":" + std::to_string(batch.size()) + ",\"bytes\":" + std::to_string(b.bytes());
    if (!segments.empty()) args += ",\"codec\":\"" + batch.front().codec + "\"";
    timeline.span({}, what, "collective", begin, end, args);
    const Pending* last = nullptr;
    for (const Part& part : batch) {
      if (part.owner != last)
        timeline.span(part.owner->descriptor.name, what, "collective", begin, end);
      last = part.owner;
    }
  };
  std::size_t bytes = 0;
  for (const Part& part : batch)
    bytes += part.buffer.bytes();
  if (batch.size() > 1 && !broadcast && segments.empty() && comm.allreducesInPlace(bytes, data)) {
    // One node's shared memory reduces the tensors where they are (no fusion copies).
    std::vector<BufferView> pieces;
    for (const Part& part : batch) {
      engine::scaleInPlace(part.buffer, part.owner->spec.prescale);
      pieces.push_back(part.buffer);
    }
    metrics.batch(bytes);
    engine::CallMeter meter(metrics, timeline.active() ? &timeline : nullptr);
    data.observer = meter.observer();
    const auto begin = Clock::now();
    comm.allreduce(pieces, head.op, data);
    meter.done(what);
    for (const Part& part : batch)
      engine::scaleInPlace(part.buffer, part.owner->spec.postscale);
    if (timeline.active()) {
      countTraffic();
      const auto end = Clock::now();
      timeline.span({}, what, "collective", begin, end,
                    "\"tensors\":" + std::to_string(batch.size()) +
                        ",\"bytes\":" + std::to_string(bytes) + ",\"in_place\":true");
      const Pending* last = nullptr;
      for (const Part& part : batch) {
        if (part.owner != last)
          timeline.span(part.owner->descriptor.name, what, "collective", begin, end);
        last = part.owner;
      }
    }
    return;
  }
  if (batch.size() == 1) {
    const BufferView b = batch.front().buffer;
    engine::scaleInPlace(b, batch.front().owner->spec.prescale);
    run(b);
    engine::scaleInPlace(b, batch.front().owner->spec.postscale);
    return;
  }
  if (fusion.size() < bytes) fusion.resize(bytes);
  const DType dtype = head.dtype;
  // Only the root's bytes matter to a broadcast: the others skip copying in.
  const bool copyIn = !broadcast || head.root == comm.rank();
  const auto copyInBegin = Clock::now();
  std::size_t offset = 0;
  for (const Part& part : batch) {
    const BufferView b = part.buffer;
    if (copyIn) {
      std::memcpy(fusion.data() + offset, b.data, b.bytes());
      engine::scaleInPlace({fusion.data() + offset, b.count, dtype, MemoryKind::host},
                           part.owner->spec.prescale);
    }
    offset += b.bytes();
  }
  timeline.span({}, "copy in", "fusion", copyInBegin, Clock::now());
  run(BufferView{fusion.data(), bytes / dtypeSize(dtype), dtype, MemoryKind::host});
  const auto copyOutBegin = Clock::now();
  offset = 0;
  for (const Part& part : batch) {
    const BufferView b = part.buffer;
    engine::scaleInPlace({fusion.data() + offset, b.count, dtype, MemoryKind::host},
                         part.owner->spec.postscale);
    std::memcpy(b.data, fusion.data() + offset, b.bytes());
    offset += b.bytes();
  }
  timeline.span({}, "copy out", "fusion", copyOutBegin, Clock::now());
}

// Rows split as Horovod splits them: rows / n each, the first rows % n ranks one more.
// Communicator::reduceScatter takes equal blocks, so every rank's block is padded with
// zero rows to the largest (rows / n rounded up): at most one padding row per block, so
// the ring's bandwidth-optimal traffic grows by at most n rows, where an allreduce and a
// slice would send twice the data. The padding's reduction is never read, so zeros do
// for every op.
std::exception_ptr Engine::Impl::runReducescatter(Pending& p, const CollectiveOptions& o) {
  const engine::Descriptor& d = p.descriptor;
  const auto n = static_cast<std::size_t>(comm.size());
  const auto rank = static_cast<std::size_t>(comm.rank());
  const auto rows = static_cast<std::size_t>(d.shape.front());
  std::size_t rowElems = 1;
  for (std::size_t i = 1; i < d.shape.size(); ++i)
    rowElems *= static_cast<std::size_t>(d.shape[i]);
  const std::size_t elemBytes = dtypeSize(d.dtype);
  const std::size_t blockRows = (rows + n - 1) / n;
  const std::size_t block = blockRows * rowElems;  // elements
  auto rowsOf = [&](std::size_t r) { return rows / n + (r < rows % n ? 1 : 0); };
  auto firstRowOf = [&](std::size_t r) { return r * (rows / n) + std::min(r, rows % n); };

  // fusion: n padded input blocks, then this rank's output block.
  const std::size_t bytes = block * (n + 1) * elemBytes;
  if (fusion.size() < bytes) fusion.resize(bytes);
  std::memset(fusion.data(), 0, bytes);
  const auto* in = static_cast<const std::byte*>(p.tensor.buffer.data);
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t count = rowsOf(r) * rowElems * elemBytes;
    if (count > 0) {
      std::memcpy(fusion.data() + r * block * elemBytes, in + firstRowOf(r) * rowElems * elemBytes,
                  count);
    }
  }
  const BufferView input{fusion.data(), block * n, d.dtype, MemoryKind::host};
  const BufferView output{fusion.data() + block * n * elemBytes, block, d.dtype, MemoryKind::host};
  engine::scaleInPlace(input, p.spec.prescale);
  if (block > 0) comm.reduceScatter(input, output, d.op, o);
  engine::scaleInPlace(output, p.spec.postscale);

  const ErrorContext ctx{comm.rank(), -1, "reducescatterAsync"};
  try {
    const auto mine = static_cast<std::int64_t>(rowsOf(rank));
    const Tensor out = p.allocate(mine);
    const std::size_t want = rowsOf(rank) * rowElems;
    checkAllocated(out, d, want, ctx);
    if (want > 0) std::memcpy(out.buffer.data, output.data, want * elemBytes);
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

// The splits differ between ranks and may change from one submission to the next (the
// name is cached with any first dimension), so the ranks allgather them first: one small
// allgather of n x n counts, then the pairwise alltoall into scratch, then the copy into
// the allocator's tensor (so that an allocator that fails leaves this rank in the
// collective, which the others need).
std::exception_ptr Engine::Impl::runAlltoall(Pending& p, const CollectiveOptions& o) {
  const engine::Descriptor& d = p.descriptor;
  const auto n = static_cast<std::size_t>(comm.size());
  const auto me = static_cast<std::size_t>(comm.rank());
  std::vector<std::int64_t> matrix(n * n);
  comm.allgather(BufferView{p.splits.data(), n, DType::i64, MemoryKind::host},
                 BufferView{matrix.data(), matrix.size(), DType::i64, MemoryKind::host}, o);
  std::size_t rowElems = 1;
  for (std::size_t i = 1; i < d.shape.size(); ++i)
    rowElems *= static_cast<std::size_t>(d.shape[i]);
  std::vector<std::size_t> sendCounts;
  std::vector<std::size_t> recvCounts;
  std::vector<std::int64_t> received;
  std::int64_t rows = 0;
  for (std::size_t r = 0; r < n; ++r) {
    sendCounts.push_back(static_cast<std::size_t>(p.splits[r]) * rowElems);
    received.push_back(matrix[r * n + me]);
    recvCounts.push_back(static_cast<std::size_t>(received.back()) * rowElems);
    rows += received.back();
  }
  const std::size_t want = static_cast<std::size_t>(rows) * rowElems;
  const std::size_t bytes = want * dtypeSize(d.dtype);
  if (fusion.size() < bytes) fusion.resize(bytes);
  const BufferView scratch{fusion.data(), want, d.dtype, MemoryKind::host};
  comm.alltoall(p.tensor.buffer, sendCounts, scratch, recvCounts, o);

  const ErrorContext ctx{comm.rank(), -1, "alltoallAsync"};
  try {
    const Tensor out = p.allocateAlltoall(rows, received);
    checkAllocated(out, d, want, ctx);
    if (want > 0) std::memcpy(out.buffer.data, scratch.data, bytes);
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

}  // namespace skyring
