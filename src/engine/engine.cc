// The engine's background thread: one cycle every Config::cycleTime while any rank has
// work, each cycle one small allreduce that says what is ready everywhere.
//
// A cycle, on every rank alike (docs/engine.md):
//  1. Take the tensors submitted since the last cycle. Each pending tensor is either
//     cached (its descriptor has a slot in the response cache) or must be announced: not
//     cached, or its name is in the announcement table (some rank announced it, maybe
//     with another shape; announcing too lets the ranks compare).
//  2. Allreduce (min over u8) of [no-announcements, nothing-pending, shutting-down,
//     no-stall-check, no-shutdown-deadline, ready(slot 0), ready(slot 1), ...]: a min of 1
//     is an AND, a min of 0 an OR.
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
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

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

using Clock = std::chrono::steady_clock;

// Names the engine submits itself; users' names may not start with the prefix.
constexpr std::string_view kReservedPrefix = "__skyring.";
constexpr std::string_view kBarrierName = "__skyring.barrier";

struct Pending {
  engine::Descriptor descriptor;
  Tensor tensor;
  AllreduceSpec spec;
  std::shared_ptr<Handle::State> state;
  Clock::time_point submittedAt;
  Engine::Allocator allocate;  // allgather only
  // allgather only: every rank's first dimension, from the verdict (it may change from one
  // submission of the name to the next, so an allgather is announced every time).
  std::vector<std::int64_t> firstDims;
  std::optional<std::uint32_t> slot;  // in the response cache, once agreed
  bool announced = false;             // waiting for the announcement's verdict
};

}  // namespace

struct Engine::Impl {
  Impl(Communicator& c, EngineOptions o) : comm(c), options(o), announcements(c.size()) {}

  Handle submit(std::string name, Tensor tensor, AllreduceSpec spec, engine::Collective collective,
                int root, Allocator allocate = nullptr);
  void run() noexcept;
  // Runs one batch (items of one collective, dtype and op) as one collective.
  void runBatch(const std::vector<Pending*>& batch, const CollectiveOptions& o);
  void cycle(bool first, bool& idle, bool& stop);
  void negotiate(const std::vector<std::byte>& mine);
  // Every rank's bytes, in rank order (lengths, then the padded bytes: two allgathers).
  std::vector<std::vector<std::byte>> gather(const std::vector<std::byte>& mine);
  // True when this rank has waited stallWarning for a name and has not asked for a check
  // within stallWarning.
  bool wantsStallCheck(Clock::time_point now) const;
  // Exchanges what every rank has pending; warns of names some ranks have not submitted,
  // and past stallShutdown throws (every rank alike) to stop the engine.
  void inspectStalls(Clock::time_point now);
  // A rank asked to shut down longer ago than Config::initTimeout (the bound of Runtime's
  // goodbye) and some have not: every rank throws Timeout naming those, stopping its engine.
  [[noreturn]] void failShutdown();
  void execute(const std::vector<std::uint32_t>& readySlots);
  void finish(Pending& p, std::exception_ptr error);
  void failAll(const std::exception_ptr& error);
  CollectiveOptions collectiveOptions(bool first) const;
  ErrorContext context(const char* op) const { return {comm.rank(), -1, op}; }

  Communicator& comm;
  EngineOptions options;

  std::mutex mutex;
  std::condition_variable wake;      // a submission or shutdown
  std::condition_variable finished;  // the thread has left its loop
  std::vector<Pending> submitted;    // guarded by mutex
  std::set<std::string> names;       // pending on this rank; guarded by mutex
  bool shutdownRequested = false;    // guarded by mutex
  bool threadDone = false;           // guarded by mutex
  std::exception_ptr failure;        // guarded by mutex: why the engine stopped
  std::mutex joinMutex;
  std::thread thread;

  // The engine thread's own.
  std::map<std::string, Pending> pending;
  bool shutDownHere = false;
  Clock::time_point shutDownAt;
  Clock::time_point lastStallCheck = Clock::now();
  engine::ResponseCache cache;
  engine::Announcements announcements;
  std::vector<std::byte> fusion;
  engine::Timeline timeline;
};

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

Handle Engine::Impl::submit(std::string name, Tensor tensor, AllreduceSpec spec,
                            engine::Collective collective, int root, Allocator allocate) {
  const ErrorContext ctx =
      context(collective == engine::Collective::allreduce   ? "allreduceAsync"
              : collective == engine::Collective::broadcast ? "broadcastAsync"
                                                            : "allgatherAsync");
  SKYRING_CHECK_ARG(!name.empty(), ctx, "a tensor needs a name");
  SKYRING_CHECK_ARG(name.rfind(kReservedPrefix, 0) != 0 || name == kBarrierName, ctx, "'", name,
                    "': names starting with ", kReservedPrefix, " are reserved");
  SKYRING_CHECK_ARG(tensor.buffer.memory == MemoryKind::host, ctx, "'", name,
                    "': the engine takes host memory only for now");
  SKYRING_CHECK_ARG(tensor.buffer.data != nullptr || tensor.buffer.count == 0, ctx, "'", name,
                    "': null data");
  std::vector<std::int64_t> shape = tensor.shape;
  if (shape.empty()) shape.push_back(static_cast<std::int64_t>(tensor.buffer.count));
  std::int64_t elements = 1;
  for (std::int64_t d : shape) {
    SKYRING_CHECK_ARG(d >= 0, ctx, "'", name, "': negative dimension ", d);
    elements *= d;
  }
  SKYRING_CHECK_ARG(static_cast<std::size_t>(elements) == tensor.buffer.count, ctx, "'", name,
                    "': shape holds ", elements, " elements, the buffer ", tensor.buffer.count);

  auto state = std::make_shared<Handle::State>();
  engine::Descriptor d{name, tensor.buffer.dtype, spec.op, std::move(shape), collective, root};
  if (collective != engine::Collective::allreduce) d.op = ReduceOp::sum;
  Pending p{std::move(d), std::move(tensor), spec, state, Clock::now(), std::move(allocate),
            {},           std::nullopt,      false};
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
  submitted.push_back(std::move(p));
  wake.notify_all();
  return Handle(std::move(state));
}

void Engine::Impl::run() noexcept {
  bool idle = false;
  bool first = true;
  try {
    while (true) {
      bool stop = false;
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
}

CollectiveOptions Engine::Impl::collectiveOptions(bool first) const {
  CollectiveOptions o;
  o.tag = options.tag;
  // The communicator's choice of algorithm (hierarchical across clouds), which it makes on
  // tag 0 only unless asked. No codec: compression belongs to tensors that ask for it, and
  // codec state keyed by the fusion buffer would mix unrelated tensors (issue 12).
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
      wake.wait_for(lock, kIdleTick, [&] { return !submitted.empty() || shutdownRequested; });
    }
    for (auto& p : submitted) {
      std::string name = p.descriptor.name;
      pending.emplace(std::move(name), std::move(p));
    }
    submitted.clear();
    shutdownNow = shutdownRequested;
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

  // Step 1: what this rank has, as the cycle's vector.
  std::vector<std::byte> announce;
  std::vector<std::uint8_t> vec(kHeaderBytes + cache.size(), 0);
  for (auto& [name, p] : pending) {
    if (!p.slot) p.slot = cache.find(p.descriptor);
    if (p.announced) continue;
    if (!p.slot || announcements.contains(name)) {
      engine::appendDescriptor(announce, p.descriptor);
      p.announced = true;
    } else {
      vec[kHeaderBytes + *p.slot] = 1;
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
  for (std::size_t s = kHeaderBytes; s < vec.size(); ++s) {
    if (vec[s] == 1) ready.push_back(static_cast<std::uint32_t>(s - kHeaderBytes));
  }
  // Step 3 (changes the cache only after the ready slots were read off step 2).
  if (vec[kNoAnnouncements] == 0) negotiate(announce);
  // Step 4.
  if (!ready.empty()) execute(ready);
  if (vec[kNoStallCheck] == 0) inspectStalls(start);

  idle = vec[kNothingPending] == 1 && vec[kNoAnnouncements] == 1;
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
    for (auto& verdict : announcements.add(r, list)) {
      std::optional<std::uint32_t> slot;
      if (verdict.agreed) {
        // An allgather's slot stands for the name with any first dimension.
        engine::Descriptor key = verdict.descriptor;
        if (key.collective == engine::Collective::allgather) key.shape.front() = -1;
        slot = cache.insert(key);
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

void Engine::Impl::execute(const std::vector<std::uint32_t>& readySlots) {
  std::map<std::uint32_t, std::string> bySlot;
  for (auto& [name, p] : pending) {
    if (p.slot && !p.announced) bySlot.emplace(*p.slot, name);
  }
  std::vector<Pending*> items;    // fused: allreduce and broadcast
  std::vector<Pending*> gathers;  // each alone
  std::vector<engine::FusionItem> plan;
  for (std::uint32_t slot : readySlots) {
    auto it = bySlot.find(slot);
    if (it == bySlot.end()) {
      // Every rank set this slot's bit, this one included: its tensor must be here.
      SKYRING_THROW(Aborted, context("engine cycle"), "slot ", slot, " ('", cache.at(slot).name,
                    "') is ready everywhere but not pending on this rank");
    }
    Pending& p = pending.at(it->second);
    timeline.span(p.descriptor.name, "negotiate", "negotiation", p.submittedAt, Clock::now());
    if (p.descriptor.collective == engine::Collective::allgather) {
      gathers.push_back(&p);
      continue;
    }
    items.push_back(&p);
    plan.push_back(
        {p.descriptor.dtype, p.descriptor.op, p.tensor.buffer.bytes(),
         p.descriptor.collective == engine::Collective::broadcast ? p.descriptor.root : -1});
  }
  const CollectiveOptions o = collectiveOptions(false);
  for (const auto& batch : engine::planFusion(plan, comm.config().fusionThreshold)) {
    std::vector<Pending*> members;
    for (std::size_t i : batch)
      members.push_back(items[i]);
    runBatch(members, o);
  }
  // Every ready tensor is done, those of zero elements included.
  for (Pending* p : items) {
    const std::string name = p->descriptor.name;
    finish(*p, nullptr);
    pending.erase(name);
  }
  for (Pending* p : gathers) {
    const auto begin = Clock::now();
    std::exception_ptr error = engine::runAllgather(comm, o, p->descriptor, p->tensor.buffer,
                                                    p->firstDims, p->allocate, fusion);
    timeline.span(p->descriptor.name, "allgather", "collective", begin, Clock::now());
    const std::string name = p->descriptor.name;
    finish(*p, std::move(error));
    pending.erase(name);
  }
}

void Engine::Impl::runBatch(const std::vector<Pending*>& batch, const CollectiveOptions& o) {
  const engine::Descriptor& head = batch.front()->descriptor;
  const bool broadcast = head.collective == engine::Collective::broadcast;
  const char* what = broadcast ? "broadcast" : "allreduce";
  // The collective over one buffer (pre/post scales are 1 for broadcasts), on the
  // timeline: once on the engine's lane, and on the lane of every tensor it carries.
  auto run = [&](BufferView b) {
    const auto begin = Clock::now();
    if (broadcast) {
      comm.broadcast(b, head.root, o);
    } else {
      comm.allreduce(b, head.op, o);
    }
    if (!timeline.active()) return;
    const auto end = Clock::now();
    const std::string args =
        "\"tensors\":" + std::to_string(batch.size()) + ",\"bytes\":" + std::to_string(b.bytes());
    timeline.span({}, what, "collective", begin, end, args);
    for (const Pending* p : batch)
      timeline.span(p->descriptor.name, what, "collective", begin, end);
  };
  if (batch.size() == 1) {
    const BufferView b = batch.front()->tensor.buffer;
    engine::scaleInPlace(b, batch.front()->spec.prescale);
    run(b);
    engine::scaleInPlace(b, batch.front()->spec.postscale);
    return;
  }
  std::size_t bytes = 0;
  for (const Pending* p : batch)
    bytes += p->tensor.buffer.bytes();
  if (fusion.size() < bytes) fusion.resize(bytes);
  const DType dtype = head.dtype;
  // Only the root's bytes matter to a broadcast: the others skip copying in.
  const bool copyIn = !broadcast || head.root == comm.rank();
  const auto copyInBegin = Clock::now();
  std::size_t offset = 0;
  for (const Pending* p : batch) {
    const BufferView b = p->tensor.buffer;
    if (copyIn) {
      std::memcpy(fusion.data() + offset, b.data, b.bytes());
      engine::scaleInPlace({fusion.data() + offset, b.count, dtype, MemoryKind::host},
                           p->spec.prescale);
    }
    offset += b.bytes();
  }
  timeline.span({}, "copy in", "fusion", copyInBegin, Clock::now());
  run(BufferView{fusion.data(), bytes / dtypeSize(dtype), dtype, MemoryKind::host});
  const auto copyOutBegin = Clock::now();
  offset = 0;
  for (const Pending* p : batch) {
    const BufferView b = p->tensor.buffer;
    engine::scaleInPlace({fusion.data() + offset, b.count, dtype, MemoryKind::host},
                         p->spec.postscale);
    std::memcpy(b.data, fusion.data() + offset, b.bytes());
    offset += b.bytes();
  }
  timeline.span({}, "copy out", "fusion", copyOutBegin, Clock::now());
}

void Engine::Impl::finish(Pending& p, std::exception_ptr error) {
  {
    std::lock_guard lock(mutex);
    names.erase(p.descriptor.name);
  }
  p.tensor.keepAlive.reset();
  p.state->complete(std::move(error));
}

void Engine::Impl::failAll(const std::exception_ptr& error) {
  std::vector<Pending> late;
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
