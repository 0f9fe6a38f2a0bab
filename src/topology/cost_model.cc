// The link cost model: the Config values converted to SI units.
#include "skyring/link_cost.h"

namespace skyring::topology {
namespace {

LinkCost fromParameters(const Config::LinkParameters& p) {
  // Gbit/s -> bytes/s; ms -> s.
  return LinkCost{p.gbitPerSec * 1e9 / 8, p.latencyMs * 1e-3, p.dollarsPerGB};
}

}  // namespace

std::string_view linkClassName(LinkClass c) noexcept {
  switch (c) {
    case LinkClass::self:
      return "self";
    case LinkClass::intraNode:
      return "intra-node";
    case LinkClass::intraCloud:
      return "intra-cloud";
    case LinkClass::crossCloud:
      return "cross-cloud";
  }
  return "unknown";
}

double LinkCost::transferSeconds(std::size_t bytes) const noexcept {
  return latencySec + static_cast<double>(bytes) / bandwidthBytesPerSec;
}

double LinkCost::egressDollars(std::size_t bytes) const noexcept {
  return static_cast<double>(bytes) * 1e-9 * egressDollarsPerGB;
}

CostModel::CostModel() : CostModel(Config{}) {}

CostModel::CostModel(const Config& config) {
  const LinkCost node = fromParameters(config.intraNodeLink);
  costs_[index(LinkClass::self)] = LinkCost{node.bandwidthBytesPerSec, 0, 0};
  costs_[index(LinkClass::intraNode)] = node;
  costs_[index(LinkClass::intraCloud)] = fromParameters(config.intraCloudLink);
  costs_[index(LinkClass::crossCloud)] = fromParameters(config.crossCloudLink);
}

}  // namespace skyring::topology
