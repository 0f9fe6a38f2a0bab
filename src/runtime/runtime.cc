#include "skyring/runtime.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "bootstrap/out_of_band.h"
#include "skyring/inprocess_transport.h"
#include "skyring/metering_transport.h"
#include "skyring/topology.h"
#include "skyring/ucx_transport.h"
#include "transport/node_channel.h"

namespace skyring {

struct Runtime::Parts {
  std::unique_ptr<bootstrap::OutOfBand> oob;
  std::unique_ptr<transport::InProcessWorld> alone;  // the world of one
  std::shared_ptr<transport::Transport> transport;
  std::shared_ptr<transport::NodeChannel> node;
  std::shared_ptr<transport::MeteringTransport> meter;  // wraps transport
};

namespace {

std::string hostName() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

}  // namespace

Runtime::Runtime(Config config) : config_(std::move(config)), parts_(std::make_unique<Parts>()) {}

Runtime::~Runtime() {
  world_.reset();
  if (parts_->transport) parts_->transport->shutdown();
  parts_->transport.reset();
  parts_->node.reset();
  parts_->oob.reset();
}

std::unique_ptr<Runtime> Runtime::init(Config config) {
  std::unique_ptr<Runtime> rt(new Runtime(std::move(config)));
  Parts& parts = *rt->parts_;
  parts.oob = bootstrap::makeOutOfBand(rt->config_);
  rt->rank_ = parts.oob->rank();
  rt->size_ = parts.oob->size();

  // Where every rank is (node, cloud, region; SKYRING_NODE defaults to the hostname):
  // records gathered from all ranks. Node-mates share node and cloud.
  const auto& launch = rt->config_.launch;
  const auto gathered =
      parts.oob->allgather(topology::serialize(topology::localRecord(rt->config_, hostName())));
  std::vector<topology::RankRecord> records;
  records.reserve(gathered.size());
  for (const auto& bytes : gathered)
    records.push_back(topology::parse(bytes));
  rt->topology_ = std::make_shared<const topology::Topology>(std::move(records),
                                                             topology::CostModel(rt->config_));
  const std::vector<int> nodeRanks = rt->topology_->groupOf(topology::Level::node, rt->rank_);
  const int nodeIndex = rt->topology_->indexInGroup(topology::Level::node, rt->rank_);
  // Local rank and size: from the launcher where it says, else from the node names.
  if (launch.localRank >= 0 && launch.localSize > 0) {
    rt->localRank_ = launch.localRank;
    rt->localSize_ = launch.localSize;
  } else {
    rt->localRank_ = nodeIndex;
    rt->localSize_ = static_cast<int>(nodeRanks.size());
  }

  if (rt->size_ == 1 && launch.launcher == LaunchEnvironment::Launcher::none) {
    parts.alone = std::make_unique<transport::InProcessWorld>(1);
    parts.transport = parts.alone->transport(0);
  } else {
    bootstrap::OutOfBand* oob = parts.oob.get();
    transport::UcxOptions options;
    options.connectTimeout = rt->config_.timeout;
    options.eagerOnly = rt->topology_->clouds() > 1;  // no rendezvous round trips over a WAN
    parts.transport = transport::makeUcxTransport(
        rt->rank_, rt->size_,
        [oob](std::span<const std::byte> mine) { return oob->allgather(mine); }, options);
  }
  // Every byte the transport sends is attributed to its link class (stats()).
  parts.meter = std::make_shared<transport::MeteringTransport>(parts.transport, rt->topology_);
  parts.transport = parts.meter;

  // Shared memory among the ranks of this node. Every rank takes part in the setup (it is
  // two allgathers); if it fails, every rank learns so and all fall back to the transport.
  std::shared_ptr<transport::NodeChannel> node;
  if (rt->size_ > 1 && rt->config_.sharedMemory) {
    auto exchange = [&](std::span<const std::byte> mine) {
      auto everyone = parts.oob->allgather(mine);
      std::vector<std::vector<std::byte>> local;
      for (int r : nodeRanks)
        local.push_back(std::move(everyone[static_cast<std::size_t>(r)]));
      return local;
    };
    try {
      node = transport::NodeChannel::openShared(
          nodeIndex, nodeRanks, std::max(rt->config_.shmSlotBytes, rt->config_.shmRingBytes / 2),
          exchange);
      if (!node->singleCopy() && rt->config_.shmSingleCopyBytes != 0) {
        SKYRING_LOG(Logger(rt->config_.logLevel, rt->rank_), warn,
                    "cross-memory attach (process_vm_readv) is not permitted here: "
                    "SKYRING_SHM_SINGLE_COPY_BYTES has no effect");
      }
    } catch (const TransportError& e) {
      SKYRING_LOG(Logger(rt->config_.logLevel, rt->rank_), warn,
                  "no shared memory inside the node (", e.detail(), "); using the transport");
    }
  }
  parts.node = node;
  rt->world_ = std::make_unique<Communicator>(parts.transport, rt->config_, node, rt->topology_);
  return rt;
}

transport::TrafficStats Runtime::stats() const {
  return parts_->meter ? parts_->meter->stats() : transport::TrafficStats{};
}

}  // namespace skyring
