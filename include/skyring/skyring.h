// Umbrella header of the skyring C++ API, and the process-wide API: one default Runtime
// (skyring/runtime.h) and its Engine (skyring/engine.h), as Horovod's hvd.* calls.
//
//   skyring::init();                      // every rank; under mpirun, torchrun-style vars or alone
//   auto h = skyring::allreduceAsync("grad.fc1", skyring::Tensor::of(grad),
//                                    {skyring::ReduceOp::avg});
//   h.wait();
//   skyring::shutdown();                  // every rank
//
// Threads: init() and shutdown() are made once each by one thread; the other calls may be
// made from any thread between them. Failure: calls other than init() and isInitialized()
// throw InvalidArgument before init() or after shutdown().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "skyring/buffer_view.h"
#include "skyring/communicator.h"
#include "skyring/config.h"
#include "skyring/dtype.h"
#include "skyring/engine.h"
#include "skyring/error.h"
#include "skyring/inprocess_transport.h"
#include "skyring/logging.h"
#include "skyring/process_set.h"
#include "skyring/reduce_op.h"
#include "skyring/runtime.h"
#include "skyring/transport.h"
#include "skyring/version.h"

namespace skyring {

// Joins the job (Runtime::init) and starts the engine. Collective. A second call while
// initialised does nothing (as Horovod's init).
void init(Config config = Config::fromEnvironment());
// Stops the engine (pending handles of names the other ranks never submitted fail with
// Aborted) and leaves the job (Runtime's goodbye). Collective; nothing when not initialised.
void shutdown();
bool isInitialized();
int rank();
int size();
int localRank();
int localSize();
// As Horovod's cross_rank and cross_size: the index of this rank's node among the job's
// nodes (in the topology's order: by cloud, then node, as skyring/topology.h), and how many
// nodes there are.
int crossRank();
int crossSize();
// The default runtime, for what the process-wide calls do not cover (world(), stats()).
Runtime& runtime();
// Runtime::addProcessSet / removeProcessSet on the default runtime (skyring/process_set.h):
// collective over the world.
ProcessSet addProcessSet(std::vector<int> ranks);
void removeProcessSet(const ProcessSet& processSet);

// The asynchronous operations below run on the default runtime's engine, or with a process
// set (as Horovod's process_set= argument) on that set's engine; an empty ProcessSet is the
// world. A rank outside the set gets InvalidArgument (ProcessSet::engine()). Ranks, roots
// and split positions are then numbered in the set.

// Engine::allreduceAsync.
Handle allreduceAsync(std::string name, Tensor tensor, AllreduceSpec spec = {},
                      const ProcessSet& processSet = {});
// Engine::groupedAllreduceAsync.
Handle groupedAllreduceAsync(std::string name, std::vector<Tensor> tensors, AllreduceSpec spec = {},
                             const ProcessSet& processSet = {});
// Engine::reducescatterAsync.
Handle reducescatterAsync(std::string name, Tensor tensor, Engine::Allocator allocate,
                          AllreduceSpec spec = {}, const ProcessSet& processSet = {});
// Engine::alltoallAsync.
Handle alltoallAsync(std::string name, Tensor tensor, std::vector<std::int64_t> splits,
                     Engine::AlltoallAllocator allocate, const ProcessSet& processSet = {});
// Engine::broadcastAsync.
Handle broadcastAsync(std::string name, Tensor tensor, int root, const ProcessSet& processSet = {});
// Engine::allgatherAsync.
Handle allgatherAsync(std::string name, Tensor tensor, Engine::Allocator allocate,
                      const ProcessSet& processSet = {});
// Engine::join on the default runtime's engine: the last rank to join.
int join();
// Engine::barrier on the default runtime's engine, or on the set's.
void barrier(const ProcessSet& processSet = {});
// Engine::startTimeline / stopTimeline on the default runtime's engine.
void startTimeline(const std::string& path);
void stopTimeline();

}  // namespace skyring
