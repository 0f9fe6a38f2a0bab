// The Runtime owns everything skyring holds in a process: configuration, the
// out-of-band channel, the transport and the world communicator.
//
//   auto rt = skyring::Runtime::init();      // under mpirun, torchrun-style vars, or alone
//   rt->world().allreduce(view, skyring::ReduceOp::avg);
//
// At init every rank also shares where it is (SKYRING_NODE, SKYRING_CLOUD, SKYRING_REGION;
// see docs/topology.md): ranks of one node reduce through shared memory, and with more
// than one cloud allreduce runs hierarchically so each byte crosses clouds as few times
// as the math allows.
//
// init() finds how the process was launched (Config::launch): under mpirun it uses MPI
// only to exchange UCX worker addresses; under RANK / WORLD_SIZE / MASTER_ADDR /
// MASTER_PORT it uses a small TCP store hosted by rank 0 instead; alone it is a world of
// one. A bad or half-set environment is an InvalidArgument saying what is wrong.
//
// init() waits at most Config::initTimeout for the other ranks (SKYRING_INIT_TIMEOUT_MS),
// and fails on every rank, naming the variable and the ranks, when a setting that must be
// the same everywhere differs (docs/configuration.md).
//
// With SKYRING_METRICS_PORT set, init() also starts this rank's /metrics endpoint on
// that port plus the local rank (docs/observability.md); a port it cannot bind is a
// warning naming it, and the job goes on. The destructor stops it first.
//
// Thread-safety: see Communicator. Destroying the Runtime says goodbye to the other ranks
// (a barrier bounded by the start-up timeout; skipped after a failure, and a rank that
// died meanwhile is only warned about) and shuts the transport down.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "skyring/communicator.h"
#include "skyring/config.h"
#include "skyring/engine.h"
#include "skyring/metering_transport.h"
#include "skyring/metrics.h"
#include "skyring/process_set.h"

namespace skyring {

class ProcessSetTable;  // src/runtime/process_sets.h

class Runtime {
 public:
  static std::unique_ptr<Runtime> init(Config config = Config::fromEnvironment());
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  int localRank() const noexcept { return localRank_; }
  int localSize() const noexcept { return localSize_; }
  Communicator& world() noexcept { return *world_; }
  // Where every rank is (node, cloud, region), gathered at init. With more than one cloud
  // the world's allreduce is hierarchical (SKYRING_ALLREDUCE).
  const topology::Topology& topology() const noexcept { return *topology_; }
  // Bytes and messages this rank has sent per link class (intra-node, intra-cloud,
  // cross-cloud) and their egress price by the cost model. Counts what goes through the
  // transport; the node channel's shared memory is not a link and is not counted.
  transport::TrafficStats stats() const;
  const Config& config() const noexcept { return config_; }
  // The live metrics of this rank (docs/observability.md): what /metrics serves when
  // SKYRING_METRICS_PORT is set. Recorded whether or not it is served; a program may add
  // series of its own (its loss, its step time). Any thread.
  metrics::Registry& metrics() noexcept { return *metrics_; }
  // The port /metrics listens on; 0 when not served (no SKYRING_METRICS_PORT, or the port
  // could not be bound).
  int metricsPort() const noexcept;
  // The background engine (skyring/engine.h), started by the first call. It runs over a
  // communicator of its own on world()'s ranks, in a context of its own (its tags never meet
  // world()'s, so world() keeps every user tag but 4094, below), with a shared-memory node
  // channel of its own: the engine's fused buffers go through shared memory and the
  // hierarchy like world() calls on tag 0, while world() stays free for direct calls from
  // other threads.
  // Collective the first time: every rank calls it (skyring::init() does), as its first
  // cycle waits for the others' engines. Any thread. The destructor stops it (which waits
  // until every rank stops its own) before the goodbye.
  Engine& engine();
  // Process sets (skyring/process_set.h): a communicator and an engine over ranks (world
  // ranks, numbered in the order given), usable beside world() and engine(). Collective
  // over the world: every rank calls it with the same ranks, in the same order as the other
  // creations and removals; a mismatch throws InvalidArgument on every rank naming the
  // ranks that differ. The world's user tag 4094 carries this agreement: nothing else may
  // use it. One thread at a time.
  ProcessSet addProcessSet(std::vector<int> ranks);
  // Collective over the world: stops the set's engine and frees its id (InvalidArgument on
  // every rank when they name different sets). The destructor stops every set still live.
  void removeProcessSet(const ProcessSet& set);

  struct Parts;

 private:
  explicit Runtime(Config config);
  // The steps of init(): join, check settings, gather topology, connect, build the world.
  void start();
  void logSummary() const;
  // Registers the runtime's series and starts /metrics when SKYRING_METRICS_PORT is set.
  void startMetrics();

  Config config_;
  int rank_ = 0;
  int size_ = 1;
  int localRank_ = 0;
  int localSize_ = 1;
  std::unique_ptr<Parts> parts_;
  std::shared_ptr<const topology::Topology> topology_;
  std::shared_ptr<metrics::Registry> metrics_;
  std::unique_ptr<Communicator> world_;
  std::unique_ptr<ProcessSetTable> processSets_;  // after world_, which it borrows
  std::once_flag engineOnce_;
  std::unique_ptr<Communicator> engineComm_;  // the engine's: after world_, destroyed first
  std::unique_ptr<Engine> engine_;            // after engineComm_: destroyed first
};

}  // namespace skyring
