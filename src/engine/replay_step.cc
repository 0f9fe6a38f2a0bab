// Running a replayed step (engine/replay.h): per batch, wait until this rank has it, then
// run its data through the fusion buffer beside the one-byte flag, and keep the result only
// when every rank had the batch. Called on the engine thread.
#include <cstdint>
#include <cstring>
#include <future>

#include "engine/engine_impl.h"
#include "engine/fusion.h"
#include "skyring/logging.h"

namespace skyring {

using engine::Clock;
using engine::Pending;

namespace {

// How long a rank with none of the step's tensors waits before it joins the batch without
// them (a forward pass, an evaluation): the ranks that have it wait that long inside the
// batch's collectives, so it stays well inside their timeout.
std::chrono::milliseconds idlePatience(const Config& c) {
  return std::min<std::chrono::milliseconds>(c.timeout / 4, std::chrono::seconds(10));
}

// How long a rank that has part of a batch waits for the next submission before it joins
// without the rest (a tensor this step does not submit): longer than the gaps between
// gradients of one backward pass.
constexpr std::chrono::milliseconds kQuietPatience{1000};

// How often a rank with part of a batch checks whether its caller waits on a handle.
constexpr std::chrono::milliseconds kWaiterPoll{1};

}  // namespace

void Engine::Impl::replayStep() {
  for (const auto& batch : replayPlan) {
    const bool mine = awaitBatch(batch);
    if (runReplayed(batch, mine)) continue;
    ++replayFailures;
    replayPlan.clear();
    replayNames.clear();
    steps.reset();
    SKYRING_LOG(comm.logger(), debug, "engine: a rank did not have a replayed batch; negotiating (",
                replayFailures, " of ", kMaxReplayFailures, " replays dropped)");
    if (replayFailures == kMaxReplayFailures) {
      SKYRING_LOG(comm.logger(), info, "engine: ", kMaxReplayFailures,
                  " replayed batches were dropped, so this job's steps differ too often to "
                  "replay: the engine negotiates every cycle from now on");
    }
    return;
  }
}

bool Engine::Impl::awaitBatch(const engine::ReplayBatch& batch) {
  const std::size_t want = batch.slots.size() + batch.empty.size();
  const auto patience = idlePatience(comm.config());
  std::unique_lock lock(mutex);
  const auto entered = Clock::now();
  while (true) {
    for (auto& p : submitted) {
      std::string name = p.descriptor.name;
      pending.emplace(std::move(name), std::move(p));
    }
    submitted.clear();
    if (shutdownRequested || joinRequested) return false;
    std::size_t have = 0;
    for (const auto* list : {&batch.slots, &batch.empty}) {
      for (std::uint32_t s : *list) {
        const engine::Descriptor& d = cache.at(s);
        auto it = pending.find(d.name);
        if (it == pending.end()) continue;
        if (it->second.descriptor != d) return false;  // submitted differently this time
        ++have;
      }
    }
    if (have == want) return true;
    for (const auto& [name, p] : pending) {
      if (replayNames.count(name) == 0) return false;  // a name the plan does not run
      // The caller waits for a tensor before it submits the rest of the batch.
      if (p.state->waiters.load(std::memory_order_relaxed) > 0) return false;
    }
    const auto now = Clock::now();
    const auto deadline =
        pending.empty() ? entered + patience : std::max(entered, lastSubmission) + kQuietPatience;
    if (now >= deadline) return false;
    wake.wait_until(lock, pending.empty() ? deadline : std::min(deadline, now + kWaiterPoll));
  }
}

bool Engine::Impl::runReplayed(const engine::ReplayBatch& batch, bool mine) {
  const auto begin = Clock::now();
  const CollectiveOptions o = collectiveOptions(false);
  const int n = comm.size();
  std::vector<Pending*> owners;  // per slot: this rank's tensor, or null when it lacks it
  std::size_t bytes = 0;
  for (std::uint32_t s : batch.slots) {
    const engine::Descriptor& d = cache.at(s);
    auto it = pending.find(d.name);
    owners.push_back(it != pending.end() && it->second.descriptor == d ? &it->second : nullptr);
    bytes += engine::descriptorBytes(d);
  }
  const engine::Descriptor* head = batch.slots.empty() ? nullptr : &cache.at(batch.slots.front());
  // The flag rides in the data as one more element where the reduction keeps it exact;
  // otherwise it is an allreduce of its own, beside the data on another thread. Never in
  // a compressed batch: a lossy codec would not keep it exact.
  const std::string codec = head != nullptr ? codecOf(*head, -1) : std::string();
  // A batch of one uncompressed tensor (decided alike on every rank) is reduced out of
  // place, from the tensor into the fusion buffer, which saves copying it in; its flag then
  // cannot ride in the data, so it runs beside it.
  const bool alone = head != nullptr && batch.slots.size() == 1 && codec.empty();
  // One large enough to run alone when negotiated (fusion.h, inPlaceBytes: where one more
  // collective costs less than copying it) runs in place with no copy at all: its flag goes
  // first, and the data only when every rank had it.
  // On one node's shared memory any uncompressed batch runs in place: the pieces are
  // reduced where they are (Communicator::allreducesInPlace), so the flag goes first too.
  if ((alone && batch.empty.empty() && bytes >= inPlaceBytes) ||
      (head != nullptr && codec.empty() && comm.allreducesInPlace(bytes, o)))
    return runReplayedInPlace(batch, owners, mine, begin);
  const bool inBand = head == nullptr || (codec.empty() && !alone && !options.replayFlagBeside &&
                                          engine::flagInBand(head->dtype, head->op, n));
  const std::size_t extra = head != nullptr && inBand ? dtypeSize(head->dtype) : 0;
  std::uint8_t flag = mine ? 1 : 0;
  CollectiveOptions flagOptions = o;  // outlives the thread that uses it (joined below)
  flagOptions.tag = options.replayTag;
  std::future<void> flagDone;
  if (head == nullptr) {
    comm.allreduce(BufferView{&flag, 1, DType::u8, MemoryKind::host}, ReduceOp::min, o);
  } else if (!inBand) {
    flagDone = std::async(std::launch::async, [&] {
      comm.allreduce(BufferView{&flag, 1, DType::u8, MemoryKind::host}, ReduceOp::min, flagOptions);
    });
  }

  // The data, always through the fusion buffer (the tensors stay untouched until the flag
  // says every rank had them); zeros for what this rank lacks.
  std::shared_ptr<Communicator::CodecSnapshot> snapshot;
  try {
    if (head != nullptr) {
      if (fusion.size() < bytes + extra) fusion.resize(bytes + extra);
      // Out of place: this rank's tensor as it is (no prescale to apply) is the input.
      const bool fromTensor =
          alone && owners.front() != nullptr && owners.front()->spec.prescale == 1;
      std::size_t offset = 0;
      for (std::size_t i = 0; i < owners.size() && !fromTensor; ++i) {
        const std::size_t size = engine::descriptorBytes(cache.at(batch.slots[i]));
        if (owners[i] != nullptr) {
          std::memcpy(fusion.data() + offset, owners[i]->tensor.buffer.data, size);
          engine::scaleInPlace({fusion.data() + offset, size / dtypeSize(head->dtype), head->dtype,
                                MemoryKind::host},
                               owners[i]->spec.prescale);
        } else {
          std::memset(fusion.data() + offset, 0, size);
        }
        offset += size;
      }
      if (inBand) engine::writeFlag(fusion.data() + bytes, head->dtype, head->op, mine);
      // A batch of compressed tensors (one codec: planReplay fused them so) is one
      // compressed allreduce whose segments keep each tensor's codec state, as runBatch.
      std::vector<TensorSegment> segments;
      CollectiveOptions data = o;
      engine::CallMeter meter(metrics, timeline.active() ? &timeline : nullptr);
      data.observer = meter.observer();  // its levels, encode and decode
      if (!codec.empty()) {
        std::size_t at = 0;
        for (std::uint32_t s : batch.slots) {
          const engine::Descriptor& d = cache.at(s);
          const std::size_t count = engine::descriptorBytes(d) / dtypeSize(d.dtype);
          segments.push_back({d.name, at, count, d.shape});
          at += count;
        }
        data.compression = codec;
        data.segments = segments;
        // If the batch is dropped, the tensors run again through negotiation: their codec
        // state (error feedback, PowerSGD's factors) must not have counted this call.
        snapshot = comm.saveCodecState(data);
      }
      const BufferView out{fusion.data(), (bytes + extra) / dtypeSize(head->dtype), head->dtype,
                           MemoryKind::host};
      metrics.batch(bytes);
      comm.allreduce(fromTensor ? owners.front()->tensor.buffer : out, out, head->op, data);
      meter.done("allreduce");
      if (inBand) {
        flag = engine::readFlag(fusion.data() + bytes, head->dtype, head->op, n) ? 1 : 0;
      }
    }
  } catch (...) {
    // The flag's allreduce fails too once the communicator has (it aborts every tag).
    if (flagDone.valid()) {
      try {
        flagDone.get();
      } catch (...) {  // NOLINT(bugprone-empty-catch): the data's error is the one to report
      }
    }
    throw;
  }
  if (flagDone.valid()) flagDone.get();
  const auto end = Clock::now();
  if (timeline.active()) {
    countTraffic();
    timeline.span({}, flag == 1 ? "replayed batch" : "replayed batch (dropped)", "replay", begin,
                  end,
                  "\"tensors\":" + std::to_string(owners.size() + batch.empty.size()) +
                      ",\"bytes\":" + std::to_string(bytes));
  }
  if (flag == 0) {
    comm.restoreCodecState(snapshot);
    return false;
  }

  std::size_t offset = 0;
  for (std::size_t i = 0; i < owners.size(); ++i) {
    Pending& p = *owners[i];  // every rank had the batch, this one included
    const BufferView b = p.tensor.buffer;
    engine::scaleInPlace({fusion.data() + offset, b.count, b.dtype, MemoryKind::host},
                         p.spec.postscale);
    std::memcpy(b.data, fusion.data() + offset, b.bytes());
    offset += b.bytes();
  }
  finishReplayed(batch, owners, begin, end);
  return true;
}

bool Engine::Impl::runReplayedInPlace(const engine::ReplayBatch& batch,
                                      const std::vector<Pending*>& owners, bool mine,
                                      Clock::time_point begin) {
  const CollectiveOptions o = collectiveOptions(false);
  std::uint8_t flag = mine ? 1 : 0;
  comm.allreduce(BufferView{&flag, 1, DType::u8, MemoryKind::host}, ReduceOp::min, o);
  const engine::Descriptor& d = cache.at(batch.slots.front());
  std::size_t bytes = 0;
  if (flag == 1) {  // every rank had the batch, this one included: owners has no null
    std::vector<BufferView> pieces;
    for (Pending* p : owners) {
      engine::scaleInPlace(p->tensor.buffer, p->spec.prescale);
      pieces.push_back(p->tensor.buffer);
      bytes += p->tensor.buffer.bytes();
    }
    CollectiveOptions data = o;
    engine::CallMeter meter(metrics, timeline.active() ? &timeline : nullptr);
    data.observer = meter.observer();  // its levels
    metrics.batch(bytes);
    comm.allreduce(pieces, d.op, data);
    meter.done("allreduce");
    for (Pending* p : owners)
      engine::scaleInPlace(p->tensor.buffer, p->spec.postscale);
  }
  const auto end = Clock::now();
  if (timeline.active()) {
    countTraffic();
    timeline.span({}, flag == 1 ? "replayed batch (in place)" : "replayed batch (dropped)",
                  "replay", begin, end,
                  "\"tensors\":" + std::to_string(owners.size() + batch.empty.size()) +
                      ",\"bytes\":" + std::to_string(bytes));
  }
  if (flag == 0) return false;
  finishReplayed(batch, owners, begin, end);
  return true;
}

void Engine::Impl::finishReplayed(const engine::ReplayBatch& batch,
                                  const std::vector<Pending*>& owners, Clock::time_point begin,
                                  Clock::time_point end) {
  auto done = [&](Pending& p) {
    timeline.span(p.descriptor.name, "allreduce (replayed)", "collective", begin, end);
    const std::string name = p.descriptor.name;
    finish(p, nullptr);
    pending.erase(name);
  };
  for (Pending* p : owners)
    done(*p);
  for (std::uint32_t s : batch.empty)
    done(pending.at(cache.at(s).name));
}

}  // namespace skyring
