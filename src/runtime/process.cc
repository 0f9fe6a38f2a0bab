// The process-wide API (skyring/skyring.h): one default Runtime. This file holds the one
// mutable global of the library, as DESIGN.md allows for the default runtime of a process;
// everything else is owned by that Runtime.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>

#include "skyring/skyring.h"

namespace skyring {

namespace {

struct DefaultRuntime {
  std::mutex mutex;
  std::unique_ptr<Runtime> runtime;  // guarded by mutex
};

DefaultRuntime& defaultRuntime() {
  static DefaultRuntime d;
  return d;
}

}  // namespace

void init(Config config) {
  DefaultRuntime& d = defaultRuntime();
  std::lock_guard lock(d.mutex);
  if (d.runtime) return;
  auto rt = Runtime::init(std::move(config));
  rt->engine();
  d.runtime = std::move(rt);
}

void shutdown() {
  std::unique_ptr<Runtime> rt;
  {
    DefaultRuntime& d = defaultRuntime();
    std::lock_guard lock(d.mutex);
    rt = std::move(d.runtime);
  }
  rt.reset();  // stops the engine, then says goodbye
}

bool isInitialized() {
  DefaultRuntime& d = defaultRuntime();
  std::lock_guard lock(d.mutex);
  return d.runtime != nullptr;
}

Runtime& runtime() {
  DefaultRuntime& d = defaultRuntime();
  std::lock_guard lock(d.mutex);
  SKYRING_CHECK_ARG(d.runtime != nullptr, {}, "skyring::init() has not been called");
  return *d.runtime;
}

int rank() {
  return runtime().rank();
}
int size() {
  return runtime().size();
}
int localRank() {
  return runtime().localRank();
}
int localSize() {
  return runtime().localSize();
}

int crossRank() {
  Runtime& rt = runtime();
  const auto& nodes = rt.topology().groups(topology::Level::node);
  const auto& mine = rt.topology().groupOf(topology::Level::node, rt.rank());
  return static_cast<int>(std::find(nodes.begin(), nodes.end(), mine) - nodes.begin());
}
int crossSize() {
  return runtime().topology().nodes();
}

ProcessSet addProcessSet(std::vector<int> ranks) {
  return runtime().addProcessSet(std::move(ranks));
}

void removeProcessSet(const ProcessSet& processSet) {
  runtime().removeProcessSet(processSet);
}

namespace {

// The engine of processSet, or the default runtime's for an empty handle (the world).
Engine& engineOf(const ProcessSet& processSet) {
  return processSet.valid() ? processSet.engine() : runtime().engine();
}

}  // namespace

Handle allreduceAsync(std::string name, Tensor tensor, AllreduceSpec spec,
                      const ProcessSet& processSet) {
  return engineOf(processSet).allreduceAsync(std::move(name), std::move(tensor), spec);
}

Handle groupedAllreduceAsync(std::string name, std::vector<Tensor> tensors, AllreduceSpec spec,
                             const ProcessSet& processSet) {
  return engineOf(processSet).groupedAllreduceAsync(std::move(name), std::move(tensors), spec);
}

Handle reducescatterAsync(std::string name, Tensor tensor, Engine::Allocator allocate,
                          AllreduceSpec spec, const ProcessSet& processSet) {
  return engineOf(processSet)
      .reducescatterAsync(std::move(name), std::move(tensor), std::move(allocate), spec);
}

Handle alltoallAsync(std::string name, Tensor tensor, std::vector<std::int64_t> splits,
                     Engine::AlltoallAllocator allocate, const ProcessSet& processSet) {
  return engineOf(processSet)
      .alltoallAsync(std::move(name), std::move(tensor), std::move(splits), std::move(allocate));
}

Handle broadcastAsync(std::string name, Tensor tensor, int root, const ProcessSet& processSet) {
  return engineOf(processSet).broadcastAsync(std::move(name), std::move(tensor), root);
}

Handle allgatherAsync(std::string name, Tensor tensor, Engine::Allocator allocate,
                      const ProcessSet& processSet) {
  return engineOf(processSet)
      .allgatherAsync(std::move(name), std::move(tensor), std::move(allocate));
}

int join() {
  return runtime().engine().join();
}

void barrier(const ProcessSet& processSet) {
  engineOf(processSet).barrier();
}

void startTimeline(const std::string& path) {
  runtime().engine().startTimeline(path);
}

void stopTimeline() {
  runtime().engine().stopTimeline();
}

}  // namespace skyring
