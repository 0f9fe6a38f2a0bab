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
#include "transport/node_channel.h"

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
// shmSlotBytes > 0: the ranks of each node also share a node channel of that slot size,
// as the Runtime gives processes of one node (the node level of allreduce).
inline void runCloudRanks(const std::shared_ptr<const topology::Topology>& topo,
                          const Config& config, const std::function<void(Communicator&)>& fn,
                          const WrapTransport& wrap = nullptr, std::size_t shmSlotBytes = 0) {
  transport::InProcessWorld world(topo->size());
  std::vector<std::unique_ptr<transport::NodeChannel::Local>> nodes;
  if (shmSlotBytes > 0) {
    for (const auto& ranks : topo->groups(topology::Level::node))
      nodes.push_back(std::make_unique<transport::NodeChannel::Local>(
          static_cast<int>(ranks.size()), shmSlotBytes, ranks));
  }
  runRanks(topo->size(), [&](int r) {
    std::shared_ptr<transport::Transport> t = world.transport(r);
    if (wrap) t = wrap(r, t);
    std::shared_ptr<transport::NodeChannel> node;
    if (!nodes.empty()) {
      node = nodes[static_cast<std::size_t>(topo->groupIndex(topology::Level::node, r))]->channel(
          topo->indexInGroup(topology::Level::node, r));
    }
    try {
      Communicator comm(t, config, node, topo);
      fn(comm);
    } catch (const std::exception& e) {
      t->abort(ErrorKind::aborted, "rank " + std::to_string(r) + " failed: " + e.what());
      if (node) node->abort(ErrorKind::aborted, "rank " + std::to_string(r) + " failed");
      throw;
    }
  });
}

}  // namespace skyring::testing
