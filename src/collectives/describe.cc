// Communicator::describeAllreduce: what allreduce runs on tag 0, in words (the start-up
// summary). Apart from communicator.cc only to keep that file short.
#include <string>

#include "skyring/communicator.h"

namespace skyring {

std::string Communicator::describeAllreduce() const {
  if (size_ == 1) return "nothing to do (one rank)";
  const AllreduceAlgorithm a = algorithmFor(CollectiveOptions{});
  if (nodeLevelFor(CollectiveOptions{})) {
    const int nodes = topology_->nodes();
    const int clouds = topology_->clouds();
    return "node level (shared-memory reduce-scatter inside each node, each local rank's "
           "shard allreduced with its peers of the other " +
           std::to_string(nodes - 1) + " node" + (nodes == 2 ? "" : "s") + " by " +
           (clouds > 1
                ? "the cloud and cross-cloud levels over " + std::to_string(clouds) + " clouds"
                : std::string("a ring")) +
           ", shared-memory allgather inside each node; a codec compresses the cross-cloud "
           "level only, one for the cloud level keeps the hierarchical levels)";
  }
  if (a == AllreduceAlgorithm::hierarchical) {
    return "hierarchical (ring reduce-scatter inside each cloud, ring allreduce of each shard "
           "across " +
           std::to_string(topology_->clouds()) + " clouds, ring allgather inside each cloud)";
  }
  std::string ring =
      a == AllreduceAlgorithm::topologyRing ? "ring in topology order" : "ring in rank order";
  if (node_ != nullptr) return "shared memory inside the node (" + ring + " on other tags)";
  return ring;
}

}  // namespace skyring
