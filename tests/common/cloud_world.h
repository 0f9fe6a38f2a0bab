// Ranks placed in clouds and nodes, as threads of this process: a topology from a compact
// layout ("A1" = node 1 of cloud A, one string per rank) and a runner that gives every
// rank a Communicator knowing that topology.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/run_ranks.h"
#include "skyring/communicator.h"
#include "skyring/inprocess_transport.h"
#include "skyring/topology.h"

namespace skyring::testing {

inline std::shared_ptr<const topology::Topology> topologyOf(const std::vector<const char*>& where) {
  std::vector<topology::RankRecord> records;
  for (const char* w : where)
    records.push_back({std::string("n") + w, std::string(1, w[0]), ""});
  return std::make_shared<const topology::Topology>(std::move(records));
}

// Wraps a rank's transport (a meter, a shaper) before its Communicator is made.
using WrapTransport = std::function<std::shared_ptr<transport::Transport>(
    int rank, std::shared_ptr<transport::Transport>)>;

// One thread per rank, each with a Communicator that knows the topology; rethrows the
// first failure after aborting the group so no rank waits for its timeout.
inline void runCloudRanks(const std::shared_ptr<const topology::Topology>& topo,
                          const Config& config, const std::function<void(Communicator&)>& fn,
                          const WrapTransport& wrap = nullptr) {
  transport::InProcessWorld world(topo->size());
  runRanks(topo->size(), [&](int r) {
    std::shared_ptr<transport::Transport> t = world.transport(r);
    if (wrap) t = wrap(r, t);
    try {
      Communicator comm(t, config, nullptr, topo);
      fn(comm);
    } catch (const std::exception& e) {
      t->abort(ErrorKind::aborted, "rank " + std::to_string(r) + " failed: " + e.what());
      throw;
    }
  });
}

}  // namespace skyring::testing
