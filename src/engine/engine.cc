// The engine's background thread: one cycle every Config::cycleTime while any rank has
// work, each cycle one small allreduce that says what is ready everywhere.
//
// A cycle, on every rank alike (docs/engine.md):
//  1. Take the tensors submitted since the last cycle. Each pending tensor is either
//     cached (its descriptor has a slot in the response cache) or must be announced: not
//     cached, or its name is in the announcement table (some rank announced it, maybe
//     with another shape; announcing too lets the ranks compare).
//  2. Allreduce (min over u8) of [no-announcements, nothing-pending, shutting-down,
//     no-stall-check, no-shutdown-deadline, not-joined(rank 0..n-1), ready(slot 0),
//     ready(slot 1), ...]: a min of 1 is an AND, a min of 0 an OR (join.cc).
//  3. If any rank announces: allgather the announcement lists (lengths, then the padded
//     lists). Every rank feeds them to the announcement table in rank order and gets the
//     same verdicts: agreed names get a cache slot (the same slot on every rank), others
//     fail on every rank with an error naming the ranks.
//  4. The slots ready everywhere run in slot order, fused by planFusion.
//  5. If any rank asks for a stall check: allgather what every rank has pending (stall.h).
// Every decision depends only on the results of the cycle's collectives, which are the
// same on every rank, so every rank runs the same collectives in the same order: tensors
// submitted in any order cannot deadlock. In steady state (every name cached) a cycle is
// step 2 and the data, with no other round trip.
//
// Sleep: when step 2 says nothing is pending anywhere, the thread sleeps on its condition
// variable until a tensor is submitted here or kIdleTick passes, then runs a cycle again;
// the other ranks, woken by their own submissions or their tick, meet it there, so a rank
// waits in that collective at most kIdleTick longer than it would have.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "engine/engine_impl.h"
#include "engine/fusion.h"
#include "engine/gather.h"
#include "engine/handle_state.h"
#include "engine/negotiation.h"
#include "engine/stall.h"
#include "engine/timeline.h"
#include "skyring/communicator.h"
#include "skyring/engine.h"
#include "skyring/error.h"

namespace skyring {

namespace {

// How long an idle engine sleeps between cycles when no tensor is submitted on its rank:
// what a rank whose peers are all idle waits at most for them. 50 ms costs nothing next
// to a training step and keeps an idle job at 20 tiny allreduces per second.
constexpr std::chrono::milliseconds kIdleTick{50};

enum Header : std::size_t {
  kNoAnnouncements,
  kNothingPending,
  kShuttingDown,
  kNoStallCheck,
  kNoShutdownDeadline,
  kHeaderBytes
};

using engine::Clock;
using engine::Pending;

// Names the engine submits itself; users' names may not start with the prefix.
constexpr std::string_view kReservedPrefix = "__skyring.";
constexpr std::string_view kBarrierName = "__skyring.barrier";

}  // namespace

Engine::Engine(Communicator& comm, EngineOptions options)
    : impl_(std::make_unique<Impl>(comm, options)) {
  // SKYRING_TIMELINE: rank 0 writes the path, every rank when it holds "{rank}".
  std::string path = comm.config().timeline;
  const auto mark = path.find("{rank}");
  if (mark != std::string::npos) path.replace(mark, 6, std::to_string(comm.rank()));
  if (!path.empty() && (mark != std::string::npos || comm.rank() == 0)) {
    // A diagnostic never stops training (nor this rank's engine, which the others need).
    try {
      startTimeline(path);
    } catch (const InvalidArgument& e) {
      SKYRING_LOG(comm.logger(), warn, "SKYRING_TIMELINE: ", e.detail(), "; no timeline");
    }
  }
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
}

Engine::~Engine() {
  shutdown();
}

void Engine::shutdown() {
  Impl& s = *impl_;
  {
    std::unique_lock lock(s.mutex);
    s.shutdownRequested = true;
    s.wake.notify_all();
    s.finished.wait(lock, [&] { return s.threadDone; });
  }
  std::lock_guard join(s.joinMutex);
  if (s.thread.joinable()) s.thread.join();
}

void Engine::startTimeline(const std::string& path) {
  impl_->timeline.start(path, impl_->comm.rank());
}

void Engine::stopTimeline() noexcept {
  impl_->timeline.stop();
}

Handle Engine::allreduceAsync(std::string name, Tensor tensor, AllreduceSpec spec) {
  SKYRING_CHECK_ARG(
      isFloatingPoint(tensor.buffer.dtype) || (spec.prescale == 1 && spec.postscale == 1),
      impl_->context("allreduceAsync"), "'", name,
      "': pre/post scaling needs a floating-point tensor, not ", dtypeName(tensor.buffer.dtype));
  return impl_->submit(std::move(name), std::move(tensor), spec, engine::Collective::allreduce, 0);
}

Handle Engine::broadcastAsync(std::string name, Tensor tensor, int root) {
  SKYRING_CHECK_ARG(root >= 0 && root < impl_->comm.size(), impl_->context("broadcastAsync"), "'",
                    name, "': root ", root, " is not a rank of ", impl_->comm.size());
  return impl_->submit(std::move(name), std::move(tensor), {}, engine::Collective::broadcast, root);
}

void Engine::barrier() {
  impl_
      ->submit(std::string(kBarrierName), Tensor{BufferView{nullptr, 0, DType::u8}, {0}, nullptr},
               {}, engine::Collective::allreduce, 0)
      .wait();
}

Handle Engine::allgatherAsync(std::string name, Tensor tensor, Allocator allocate) {
  SKYRING_CHECK_ARG(allocate != nullptr, impl_->context("allgatherAsync"), "'", name,
                    "': no allocator");
  return impl_->submit(std::move(name), std::move(tensor), {}, engine::Collective::allgather, 0,
                       std::move(allocate));
}

Handle Engine::groupedAllreduceAsync(std::string name, std::vector<Tensor> tensors,
                                     AllreduceSpec spec) {
  SKYRING_CHECK_ARG(!tensors.empty(), impl_->context("groupedAllreduceAsync"), "'", name,
                    "': an empty group");
  const DType dtype = tensors.front().buffer.dtype;
  return impl_->submit(std::move(name), Tensor{BufferView{nullptr, 0, dtype}, {0}, nullptr}, spec,
                       engine::Collective::groupedAllreduce, 0, nullptr, std::move(tensors));
}

Handle Engine::reducescatterAsync(std::string name, Tensor tensor, Allocator allocate,
                                  AllreduceSpec spec) {
  SKYRING_CHECK_ARG(allocate != nullptr, impl_->context("reducescatterAsync"), "'", name,
                    "': no allocator");
  return impl_->submit(std::move(name), std::move(tensor), spec, engine::Collective::reducescatter,
                       0, std::move(allocate));
}

Handle Engine::alltoallAsync(std::string name, Tensor tensor, std::vector<std::int64_t> splits,
                             AlltoallAllocator allocate) {
  const ErrorContext ctx = impl_->context("alltoallAsync");
  SKYRING_CHECK_ARG(allocate != nullptr, ctx, "'", name, "': no allocator");
  const int n = impl_->comm.size();
  const auto rows =
      tensor.shape.empty() ? static_cast<std::int64_t>(tensor.buffer.count) : tensor.shape.front();
  if (splits.empty()) {
    SKYRING_CHECK_ARG(rows % n == 0, ctx, "'", name, "': ", rows, " rows do not split evenly over ",
                      n, " ranks; give splits");
    splits.assign(static_cast<std::size_t>(n), rows / n);
  }
  SKYRING_CHECK_ARG(splits.size() == static_cast<std::size_t>(n), ctx, "'", name,
                    "': ", splits.size(), " splits for ", n, " ranks");
  std::int64_t total = 0;
  for (std::int64_t s : splits) {
    SKYRING_CHECK_ARG(s >= 0, ctx, "'", name, "': negative split ", s);
    total += s;
  }
  SKYRING_CHECK_ARG(total == rows, ctx, "'", name, "': splits add up to ", total, " rows, not ",
                    rows);
  return impl_->submit(std::move(name), std::move(tensor), {}, engine::Collective::alltoall, 0,
                       nullptr, {}, std::move(splits), std::move(allocate));
}

int Engine::join() {
  Impl& s = *impl_;
  std::unique_lock lock(s.mutex);
  if (s.failure) std::rethrow_exception(s.failure);
  SKYRING_CHECK_ARG(!s.joinRequested, s.context("join"), "join() is already in progress");
  s.joinRequested = true;
  s.joinResult.reset();
  s.wake.notify_all();
  s.joinDone.wait(lock, [&] { return s.joinResult.has_value() || s.threadDone; });
  if (s.joinResult) return *s.joinResult;
  if (s.failure) std::rethrow_exception(s.failure);
  SKYRING_THROW(Aborted, s.context("join"), "the engine was shut down during join()");
}

Handle Engine::Impl::submit(std::string name, Tensor tensor, AllreduceSpec spec,
                            engine::Collective collective, int root, Allocator allocate,
                            std::vector<Tensor> members, std::vector<std::int64_t> splits,
                            AlltoallAllocator allocateAlltoall) {
  using C = engine::Collective;
  const ErrorContext ctx = context(collective == C::allreduce          ? "allreduceAsync"
                                   : collective == C::broadcast        ? "broadcastAsync"
                                   : collective == C::allgather        ? "allgatherAsync"
                                   : collective == C::groupedAllreduce ? "groupedAllreduceAsync"
                                   : collective == C::alltoall         ? "alltoallAsync"
                                                                       : "reducescatterAsync");
  SKYRING_CHECK_ARG(!name.empty(), ctx, "a tensor needs a name");
  SKYRING_CHECK_ARG(name.rfind(kReservedPrefix, 0) != 0 || name == kBarrierName, ctx, "'", name,
                    "': names starting with ", kReservedPrefix, " are reserved");
  SKYRING_CHECK_ARG(
      isFloatingPoint(tensor.buffer.dtype) || (spec.prescale == 1 && spec.postscale == 1), ctx, "'",
      name, "': pre/post scaling needs a floating-point tensor, not ",
      dtypeName(tensor.buffer.dtype));
  // The shape of t (one dimension when it gives none), checked against its buffer.
  auto shapeOf = [&](const Tensor& t) {
    SKYRING_CHECK_ARG(t.buffer.memory == MemoryKind::host, ctx, "'", name,
                      "': the engine takes host memory only for now");
    SKYRING_CHECK_ARG(t.buffer.data != nullptr || t.buffer.count == 0, ctx, "'", name,
                      "': null data");
    std::vector<std::int64_t> shape = t.shape;
    if (shape.empty()) shape.push_back(static_cast<std::int64_t>(t.buffer.count));
    std::int64_t elements = 1;
    for (std::int64_t d : shape) {
      SKYRING_CHECK_ARG(d >= 0, ctx, "'", name, "': negative dimension ", d);
      elements *= d;
    }
    SKYRING_CHECK_ARG(static_cast<std::size_t>(elements) == t.buffer.count, ctx, "'", name,
                      "': shape holds ", elements, " elements, the buffer ", t.buffer.count);
    return shape;
  };
  std::vector<std::int64_t> shape;
  if (collective == C::groupedAllreduce) {
    // [count, per member its number of dimensions and its dimensions]: members must agree
    // in order, shape and dtype, as one descriptor.
    shape.push_back(static_cast<std::int64_t>(members.size()));
    for (const Tensor& m : members) {
      SKYRING_CHECK_ARG(m.buffer.dtype == tensor.buffer.dtype, ctx, "'", name,
                        "': a group's tensors must share one dtype (", dtypeName(m.buffer.dtype),
                        " beside ", dtypeName(tensor.buffer.dtype), ")");
      const auto dims = shapeOf(m);
      shape.push_back(static_cast<std::int64_t>(dims.size()));
      shape.insert(shape.end(), dims.begin(), dims.end());
    }
  } else {
    shape = shapeOf(tensor);
  }

  auto state = std::make_shared<Handle::State>();
  engine::Descriptor d{name, tensor.buffer.dtype, spec.op, std::move(shape), collective, root};
  if (collective == C::broadcast || collective == C::allgather || collective == C::alltoall) {
    d.op = ReduceOp::sum;
  }
  if (collective == C::allreduce || collective == C::groupedAllreduce) {
    d.compression = resolveCompression(spec, d, ctx);
  }
  Pending p{std::move(d),
            std::move(tensor),
            spec,
            state,
            Clock::now(),
            std::move(allocate),
            std::move(members),
            std::move(splits),
            std::move(allocateAlltoall),
            {},
            std::nullopt,
            false,
            false};
  std::lock_guard lock(mutex);
  if (shutdownRequested || failure) {
    std::exception_ptr why = failure;
    if (!why) {
      why = std::make_exception_ptr(
          Aborted("'" + name + "' submitted after the engine was shut down", ctx));
    }
    state->complete(why);
    return Handle(state);
  }
  SKYRING_CHECK_ARG(names.insert(name).second, ctx, "'", name,
                    "' is already pending on this rank (wait for its handle first)");
  metrics.queueDepth(names.size());
  submitted.push_back(std::move(p));
  lastSubmission = Clock::now();
  wake.notify_all();
  return Handle(std::move(state));
}

void Engine::Impl::run() noexcept {
  bool idle = false;
  bool first = true;
  try {
    while (true) {
      bool stop = false;
      if (!replayPlan.empty()) {
        replayStep();
        idle = false;  // a dropped batch's tensors are pending: negotiate at once
        continue;
      }
      cycle(first, idle, stop);
      first = false;
      if (stop) break;
    }
  } catch (...) {
    failAll(std::current_exception());
  }
  std::lock_guard lock(mutex);
  threadDone = true;
  finished.notify_all();
  joinDone.notify_all();
}

void Engine::Impl::countTraffic() {
  if (!timeline.active() || !options.linkBytes) return;
  const auto bytes = options.linkBytes();
  timeline.counter("bytes sent", Clock::now(),
                   "\"intra_node\":" + std::to_string(bytes[1]) + ",\"intra_cloud\":" +
                       std::to_string(bytes[2]) + ",\"cross_cloud\":" + std::to_string(bytes[3]));
}

CollectiveOptions Engine::Impl::collectiveOptions(bool first) const {
  CollectiveOptions o;
  o.tag = options.tag;
  // The communicator's choice of algorithm (hierarchical across clouds), which it makes on
  // tag 0 only unless asked. No codec here: compression belongs to tensors that ask for it
  // (AllreduceSpec::compression), and runBatch passes it with the batch's segments.
  o.algorithm = comm.config().allreduceAlgorithm;
  o.compression = "none";
  // Peers' engines may start late (start-up), or sleep up to kIdleTick before they meet
  // this rank's cycle.
  o.timeout =
      first ? (options.startTimeout.count() > 0 ? options.startTimeout : comm.config().initTimeout)
            : comm.config().timeout + kIdleTick;
  return o;
}

void Engine::Impl::cycle(bool first, bool& idle, bool& stop) {
  const auto start = Clock::now();
  bool shutdownNow = false;
  {
    std::unique_lock lock(mutex);
    if (idle) {
      wake.wait_for(lock, kIdleTick, [&] {
        return !submitted.empty() || shutdownRequested || (joinRequested && !joinedHere);
      });
    }
    for (auto& p : submitted) {
      std::string name = p.descriptor.name;
      pending.emplace(std::move(name), std::move(p));
    }
    submitted.clear();
    shutdownNow = shutdownRequested;
    joinedHere = joinRequested;
  }
  if (shutdownNow && !shutDownHere) {
    shutDownHere = true;
    shutDownAt = start;
    for (auto& [name, p] : pending) {
      finish(p, std::make_exception_ptr(
                    Aborted("the engine was shut down before every rank submitted '" + name + "'",
                            context("shutdown"))));
    }
    pending.clear();
  }

  // A joined rank announces, as zeros, the allreduces others announced before it joined
  // (and the other collectives as placeholders, so that they fail on the others' ranks
  // instead of waiting for it: refuseWhileJoined).
  if (joinedHere) {
    for (const auto& d : announcements.missing(comm.rank())) {
      if (pending.count(d.name) == 0) addGhost(d, std::nullopt);
    }
  }
  // Step 1: what this rank has, as the cycle's vector.
  std::vector<std::byte> announce;
  // After the header, one byte per rank (0: that rank has joined), then one per cache slot.
  const auto n = static_cast<std::size_t>(comm.size());
  const std::size_t base = kHeaderBytes + n;
  std::vector<std::uint8_t> vec(base + cache.size(), 0);
  for (std::size_t r = 0; r < n; ++r)
    vec[kHeaderBytes + r] = joinedHere && r == static_cast<std::size_t>(comm.rank()) ? 0 : 1;
  // A joined rank is ready for every cached slot (allreduces with zeros; the others only to
  // be refused): a slot is ready once every rank that has not joined has it.
  if (joinedHere) {
    for (std::uint32_t s = 0; s < cache.size(); ++s)
      vec[base + s] = 1;
  }
  for (auto& [name, p] : pending) {
    // An allgather is announced every time (the verdict carries every rank's first
    // dimension); an alltoall is cached with any first dimension (it exchanges its splits
    // when it runs).
    if (!p.slot) {
      p.slot = cache.find(p.descriptor.collective == engine::Collective::alltoall
                              ? engine::cacheKey(p.descriptor)
                              : p.descriptor);
    }
    if (p.announced) continue;
    if (!p.slot || announcements.contains(name)) {
      engine::appendDescriptor(announce, p.descriptor);
      p.announced = true;
    } else {
      vec[base + *p.slot] = 1;
    }
  }
  vec[kNoAnnouncements] = announce.empty() ? 1 : 0;
  vec[kNothingPending] = pending.empty() ? 1 : 0;
  vec[kShuttingDown] = shutDownHere ? 1 : 0;
  vec[kNoStallCheck] = wantsStallCheck(start) ? 0 : 1;
  vec[kNoShutdownDeadline] = shutDownHere && start - shutDownAt > comm.config().initTimeout ? 0 : 1;

  // Step 2.
  comm.allreduce(BufferView{vec.data(), vec.size(), DType::u8, MemoryKind::host}, ReduceOp::min,
                 collectiveOptions(first));
  if (vec[kShuttingDown] == 1) {
    stop = true;
    return;
  }
  if (vec[kNoShutdownDeadline] == 0) failShutdown();
  std::vector<std::uint32_t> ready;
  const bool joinSettled = settleJoin(vec.data() + kHeaderBytes);
  for (std::size_t s = base; s < vec.size() && !joinSettled; ++s) {
    if (vec[s] == 1) ready.push_back(static_cast<std::uint32_t>(s - base));
  }
  // Step 3 (changes the cache only after the ready slots were read off step 2).
  if (vec[kNoAnnouncements] == 0) negotiate(announce);
  // Step 4.
  if (!ready.empty()) execute(ready);
  if (vec[kNoStallCheck] == 0) inspectStalls(start);

  idle = vec[kNothingPending] == 1 && vec[kNoAnnouncements] == 1;
  for (std::size_t r = 0; r < n; ++r) {
    if (vec[kHeaderBytes + r] == 0) steps.spoil();  // a joined rank runs zeros: no replay
  }
  // A step that repeated the one before (every rank sees the same): replay from now on. (A
  // step ends where a slot runs again, not at idle cycles: a backward pass may pause
  // longer than a cycle between two gradients.)
  if (auto slots = steps.repeated();
      slots && comm.config().engineReplay && replayFailures < kMaxReplayFailures) {
    {
      replayPlan = engine::planReplay(
          *slots, cache, comm.config().fusionThreshold,
          [&](const engine::Descriptor& d) { return codecOf(d, -1); }, inPlaceBytes);
      replayNames.clear();
      for (std::uint32_t s : *slots)
        replayNames.insert(cache.at(s).name);
      SKYRING_LOG(comm.logger(), debug, "engine: replaying a step of ", slots->size(),
                  " tensors in ", replayPlan.size(), " batches");
    }
  }
  if (!idle) {
    const auto cycleTime = comm.config().cycleTime;
    std::unique_lock lock(mutex);
    wake.wait_until(lock, start + cycleTime, [&] { return false; });
  }
}

std::vector<std::vector<std::byte>> Engine::Impl::gather(const std::vector<std::byte>& mine) {
  const int n = comm.size();
  const CollectiveOptions o = collectiveOptions(false);
  std::uint64_t length = mine.size();
  std::vector<std::uint64_t> lengths(static_cast<std::size_t>(n));
  comm.allgather(BufferView{&length, 1, DType::i64, MemoryKind::host},
                 BufferView{lengths.data(), lengths.size(), DType::i64, MemoryKind::host}, o);
  const std::uint64_t longest = *std::max_element(lengths.begin(), lengths.end());
  std::vector<std::byte> padded(longest);
  std::copy(mine.begin(), mine.end(), padded.begin());
  std::vector<std::byte> all(longest * static_cast<std::size_t>(n));
  comm.allgather(BufferView{padded.data(), padded.size(), DType::u8, MemoryKind::host},
                 BufferView{all.data(), all.size(), DType::u8, MemoryKind::host}, o);
  std::vector<std::vector<std::byte>> out;
  for (std::size_t r = 0; r < lengths.size(); ++r) {
    const auto* first = all.data() + r * longest;
    out.emplace_back(first, first + lengths[r]);  // lengths[r] <= longest, their maximum
  }
  return out;
}

void Engine::Impl::negotiate(const std::vector<std::byte>& mine) {
  const auto everyone = gather(mine);
  for (int r = 0; r < comm.size(); ++r) {
    const auto list =
        engine::parseDescriptors(everyone[static_cast<std::size_t>(r)], r, comm.rank());
    // A joined rank announces the others' new names too (next cycle): allreduces as zeros,
    // the other collectives as placeholders.
    for (const auto& d : list) {
      if (joinedHere && r != comm.rank() && pending.count(d.name) == 0) {
        addGhost(d, std::nullopt);
      }
    }
    for (auto& verdict : announcements.add(r, list)) {
      std::optional<std::uint32_t> slot;
      if (verdict.agreed) {
        // An allgather's or alltoall's slot stands for the name with any first dimension.
        slot = cache.insert(engine::cacheKey(verdict.descriptor));
      }
      auto it = pending.find(verdict.name);
      if (it == pending.end() || !it->second.announced) continue;
      if (slot) {
        it->second.slot = slot;
        it->second.firstDims = std::move(verdict.firstDims);
        it->second.announced = false;
      } else {
        finish(it->second, std::make_exception_ptr(
                               TransportError(verdict.error, context("engine negotiation"))));
        pending.erase(it);
      }
    }
  }
}

bool Engine::Impl::wantsStallCheck(Clock::time_point now) const {
  const auto warning = comm.config().stallWarning;
  if (now - lastStallCheck < warning) return false;
  for (const auto& [name, p] : pending) {
    if (now - p.submittedAt >= warning) return true;
  }
  return false;
}

void Engine::Impl::inspectStalls(Clock::time_point now) {
  lastStallCheck = now;
  std::vector<std::byte> mine;
  for (const auto& [name, p] : pending) {
    const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(now - p.submittedAt);
    engine::appendReport(mine, {name, static_cast<std::uint64_t>(age.count())});
  }
  const auto everyone = gather(mine);
  std::vector<std::vector<engine::PendingReport>> reports;
  for (int r = 0; r < comm.size(); ++r)
    reports.push_back(engine::parseReports(everyone[static_cast<std::size_t>(r)], r, comm.rank()));
  const Config& c = comm.config();
  const auto stalls =
      engine::findStalls(reports, static_cast<std::uint64_t>(c.stallWarning.count()));
  if (stalls.empty()) return;
  metrics.stalls(stalls.size());
  // Every rank has the same reports, so every rank reaches the same verdict here.
  if (c.stallShutdown.count() > 0 &&
      stalls.front().ageMs >= static_cast<std::uint64_t>(c.stallShutdown.count())) {
    SKYRING_THROW(Timeout, context("engine"), "the engine stopped after SKYRING_STALL_SHUTDOWN_S=",
                  c.stallShutdown.count() / 1000.0, ": ", engine::describeStalls(stalls));
  }
  SKYRING_LOG(comm.logger(), warn,
              "names submitted on some ranks only: ", engine::describeStalls(stalls));
}

void Engine::Impl::failShutdown() {
  const auto everyone = gather({std::byte{shutDownHere ? std::uint8_t{1} : std::uint8_t{0}}});
  std::string late;
  for (std::size_t r = 0; r < everyone.size(); ++r) {
    if (everyone[r].empty() || everyone[r][0] == std::byte{0}) {
      late += (late.empty() ? "" : ",") + std::to_string(r);
    }
  }
  SKYRING_THROW(Timeout, context("engine shutdown"), "rank(s) ", late,
                " did not shut down their engines within SKYRING_INIT_TIMEOUT_MS=",
                comm.config().initTimeout.count(), " of the others");
}

void Engine::Impl::finish(Pending& p, std::exception_ptr error) {
  {
    std::lock_guard lock(mutex);
    names.erase(p.descriptor.name);
    metrics.queueDepth(names.size());
  }
  if (error && !p.ghost) metrics.failedHandle();
  p.tensor.keepAlive.reset();
  p.state->complete(std::move(error));
}

void Engine::Impl::failAll(const std::exception_ptr& error) {
  std::vector<Pending> late;
  metrics.engineFailed();
  {
    std::lock_guard lock(mutex);
    failure = error;
    late = std::move(submitted);
    submitted.clear();
  }
  for (auto& p : late)
    finish(p, error);
  for (auto& [name, p] : pending)
    finish(p, error);
  pending.clear();
}

}  // namespace skyring
