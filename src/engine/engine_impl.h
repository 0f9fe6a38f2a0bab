// The engine's state, shared by its source files (engine.cc: submission, cycles and
// negotiation; execute.cc: running the ready tensors). Internal: see skyring/engine.h.
//
// Threads: members guarded by mutex are shared with submitting threads; the rest belong to
// the engine thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine_metrics.h"
#include "engine/handle_state.h"
#include "engine/negotiation.h"
#include "engine/replay.h"
#include "engine/timeline.h"
#include "skyring/communicator.h"
#include "skyring/compression.h"
#include "skyring/engine.h"
#include "skyring/error.h"

namespace skyring {

namespace engine {

using Clock = std::chrono::steady_clock;

struct Pending {
  Descriptor descriptor;
  Tensor tensor;
  AllreduceSpec spec;
  std::shared_ptr<Handle::State> state;
  Clock::time_point submittedAt;
  Engine::Allocator allocate;                  // allgather and reducescatter only
  std::vector<Tensor> members;                 // grouped allreduce only (then tensor is empty)
  std::vector<std::int64_t> splits;            // alltoall only: rows per destination
  Engine::AlltoallAllocator allocateAlltoall;  // alltoall only
  // allgather only: every rank's first dimension, from the verdict (it may change from one
  // submission of the name to the next, so an allgather is announced every time).
  std::vector<std::int64_t> firstDims;
  std::optional<std::uint32_t> slot;  // in the response cache, once agreed
  bool announced = false;             // waiting for the announcement's verdict
  // Made by a joined rank's engine for the others' allreduces: zeros, no caller waits.
  bool ghost = false;
};

// One buffer of a ready tensor in a fusion batch: the tensor itself, or one member of a
// grouped allreduce.
struct Part {
  Pending* owner;
  BufferView buffer;
  // Compressed parts (docs/engine.md, "Compression"): the codec's spec (empty: none), the
  // tensor's name (a group's member: the group's name and "[i]") and shape.
  std::string codec{};
  std::string name{};
  std::vector<std::int64_t> shape{};
};

}  // namespace engine

// Replays dropped before the engine stops replaying for good (each costs a batch's data).
inline constexpr int kMaxReplayFailures = 8;

struct Engine::Impl {
  Impl(Communicator& c, EngineOptions o)
      : comm(c),
        options(o),
        announcements(c.size()),
        inPlaceBytes(inPlaceBytesOf(c, o.tag)),
        metrics(options.metrics, c.config().fusionThreshold) {}
  // engine::inPlaceBytes for this communicator's slowest link (by its topology's cost
  // model; without a topology, the configured intra-cloud link); unlimited where batches
  // on the engine's tag run in place anyway (Communicator::allreducesInPlace).
  static std::size_t inPlaceBytesOf(const Communicator& c, std::uint32_t tag);

  // members: a grouped allreduce's tensors (then tensor is an empty one of their dtype).
  Handle submit(std::string name, Tensor tensor, AllreduceSpec spec, engine::Collective collective,
                int root, Allocator allocate = nullptr, std::vector<Tensor> members = {},
                std::vector<std::int64_t> splits = {},
                AlltoallAllocator allocateAlltoall = nullptr);
  void run() noexcept;
  // Runs one batch (items of one collective, dtype and op) as one collective.
  void runBatch(const std::vector<engine::Part>& batch, const CollectiveOptions& o);
  // Runs a reducescatter (alone, never fused); returns the error of this rank's allocator.
  std::exception_ptr runReducescatter(engine::Pending& p, const CollectiveOptions& o);
  // Runs an alltoall (alone): the splits, then the data; returns the allocator's error.
  std::exception_ptr runAlltoall(engine::Pending& p, const CollectiveOptions& o);
  void cycle(bool first, bool& idle, bool& stop);
  void negotiate(const std::vector<std::byte>& mine);
  // Every rank's bytes, in rank order (lengths, then the padded bytes: two allgathers).
  std::vector<std::vector<std::byte>> gather(const std::vector<std::byte>& mine);
  // True when this rank has waited stallWarning for a name and has not asked for a check
  // within stallWarning.
  bool wantsStallCheck(engine::Clock::time_point now) const;
  // Exchanges what every rank has pending; warns of names some ranks have not submitted,
  // and past stallShutdown throws (every rank alike) to stop the engine.
  void inspectStalls(engine::Clock::time_point now);
  // A rank asked to shut down longer ago than Config::initTimeout (the bound of Runtime's
  // goodbye) and some have not: every rank throws Timeout naming those, stopping its engine.
  [[noreturn]] void failShutdown();
  void execute(const std::vector<std::uint32_t>& readySlots);
  // replay_step.cc (engine/replay.h). Runs one replayed step, batch by batch; on a batch
  // some rank did not have, drops its result and leaves replay (replayPlan empty).
  // An uncompressed batch that runs in place (one tensor of at least inPlaceBytes, or any
  // batch where Communicator::allreducesInPlace): the flag first, then (when every rank
  // had it) the tensors in place as one allreduce; owners: this rank's tensors, in the
  // batch's order (null where it lacks one).
  bool runReplayedInPlace(const engine::ReplayBatch& batch,
                          const std::vector<engine::Pending*>& owners, bool mine,
                          engine::Clock::time_point begin);
  // Completes a batch every rank had: owners (this rank's tensors) and its zero-element
  // tensors, each with its span on the timeline.
  void finishReplayed(const engine::ReplayBatch& batch, const std::vector<engine::Pending*>& owners,
                      engine::Clock::time_point begin, engine::Clock::time_point end);
  void replayStep();
  // Waits until this rank has every tensor of batch (true), or will not have it soon: a
  // name outside the plan, a shutdown or join, a caller waiting on a handle, no submission
  // for a while (false).
  bool awaitBatch(const engine::ReplayBatch& batch);
  // Runs batch's data beside the one-byte flag (mine: this rank has the batch); true when
  // every rank had it (the tensors are then done), false when the result was dropped.
  bool runReplayed(const engine::ReplayBatch& batch, bool mine);
  // join.cc. Whether slot is an allreduce a joined rank takes part in (with zeros).
  bool joinable(const engine::Descriptor& d) const;
  // execute.cc. A slot of a collective join() does not stand in for (joinable is false),
  // ready while some rank has joined: fails this rank's tensor of name (InvalidArgument
  // naming the joined ranks), or drops it when it is a joined rank's placeholder (name null:
  // nothing here), and returns true; false when no rank has joined (it runs as usual).
  bool refuseWhileJoined(std::uint32_t slot, const std::string* name);
  // A pending allreduce of zeros under d (with slot, when cached), for a joined rank; for
  // the other collectives a placeholder without data (refuseWhileJoined drops it).
  engine::Pending& addGhost(const engine::Descriptor& d, std::optional<std::uint32_t> slot);
  // After a cycle's allreduce: reads which ranks have joined (notJoined: one byte per rank,
  // 0 when joined); once every rank has, completes join() and drops the ghosts. Returns
  // true when it did (the cycle runs no slots then).
  bool settleJoin(const std::uint8_t* notJoined);
  void finish(engine::Pending& p, std::exception_ptr error);
  void failAll(const std::exception_ptr& error);
  CollectiveOptions collectiveOptions(bool first) const;
  // While a timeline runs: the bytes sent per link class so far, as a counter event.
  void countTraffic();
  // The canonical spec d's tensor asked for (spec.compression; kDefaultCompression is the
  // job's), empty for none or where it never applies (not f32 sum or avg). Any thread.
  std::string resolveCompression(const AllreduceSpec& spec, const engine::Descriptor& d,
                                 const ErrorContext& ctx) const;
  // Sets part's codec, name and shape when d asked for a codec and the size rule finds
  // the part worth it (compression.h). member: its index in a group, or -1.
  void chooseCodec(engine::Part& part, const engine::Descriptor& d, int member);
  // The codec d's tensor (member of a group, or -1) is compressed with: d's, when the
  // size rule finds it worth it; else empty. Engine thread.
  std::string codecOf(const engine::Descriptor& d, int member);
  ErrorContext context(const char* op) const { return {comm.rank(), -1, op}; }

  Communicator& comm;
  EngineOptions options;

  std::mutex mutex;
  std::condition_variable wake;            // a submission or shutdown
  std::condition_variable finished;        // the thread has left its loop
  std::vector<engine::Pending> submitted;  // guarded by mutex
  std::set<std::string> names;             // pending on this rank; guarded by mutex
  bool shutdownRequested = false;          // guarded by mutex
  bool joinRequested = false;              // guarded by mutex: join() waits
  std::optional<int> joinResult;           // guarded by mutex: the last rank to join
  std::condition_variable joinDone;        // joinResult set, or the thread stopped
  bool threadDone = false;                 // guarded by mutex
  std::exception_ptr failure;              // guarded by mutex: why the engine stopped
  std::mutex joinMutex;
  std::thread thread;

  // The engine thread's own.
  std::map<std::string, engine::Pending> pending;
  bool shutDownHere = false;
  bool joinedHere = false;                 // this rank's join() is in progress (seen by a cycle)
  std::vector<std::uint8_t> joinedBefore;  // per rank: joined as of the last cycle
  engine::Clock::time_point shutDownAt;
  engine::Clock::time_point lastStallCheck = engine::Clock::now();
  engine::ResponseCache cache;
  engine::Announcements announcements;
  std::vector<std::byte> fusion;
  const std::size_t inPlaceBytes;  // tensors this large run alone, in place (fusion.h)
  engine::Timeline timeline;
  // Replay (engine/replay.h): the steps recorded while negotiating, and the plan while
  // replaying (empty: negotiating).
  engine::StepRecorder steps;
  std::vector<engine::ReplayBatch> replayPlan;
  std::set<std::string> replayNames;                                // every name of replayPlan
  int replayFailures = 0;                                           // replays dropped so far
  engine::Clock::time_point lastSubmission = engine::Clock::now();  // guarded by mutex
  // Codecs by canonical spec, for the size rule (chooseCodec).
  std::map<std::string, std::unique_ptr<compression::Compressor>> codecs;
  engine::EngineMetrics metrics;  // after options, whose registry it keeps
};

}  // namespace skyring
