// Link classes and the cost model that algorithm selection reads.
//
// Every pair of ranks is joined by one of four classes of link (see Topology::linkClass);
// each class has a bandwidth, a one-way latency and a price per byte leaving the sender.
// The defaults are deliberately round, order-of-magnitude figures for a current GPU
// cluster (docs/topology.md gives their sources); override them with the
// SKYRING_LINK_* variables (Config) when a job knows its links better.
//
// Thread-safety: plain values; const use from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "skyring/config.h"

namespace skyring::topology {

enum class LinkClass : std::uint8_t { self, intraNode, intraCloud, crossCloud };
inline constexpr std::size_t kLinkClassCount = 4;

// "self", "intra-node", "intra-cloud", "cross-cloud".
std::string_view linkClassName(LinkClass c) noexcept;

// Array index of a class (self = 0 ... crossCloud = 3).
constexpr std::size_t index(LinkClass c) noexcept {
  return static_cast<std::size_t>(c);
}

struct LinkCost {
  double bandwidthBytesPerSec = 0;
  double latencySec = 0;
  // Price of egress, per decimal gigabyte (1e9 bytes) sent over the link.
  double egressDollarsPerGB = 0;

  // latency + bytes / bandwidth: the alpha-beta time of one message.
  double transferSeconds(std::size_t bytes) const noexcept;
  double egressDollars(std::size_t bytes) const noexcept;
};

class CostModel {
 public:
  // The documented defaults (those of a default Config).
  CostModel();
  // Intra-node, intra-cloud and cross-cloud from config's SKYRING_LINK_* values. The self
  // class is a local copy: the intra-node bandwidth, no latency, free.
  explicit CostModel(const Config& config);

  const LinkCost& operator[](LinkClass c) const noexcept { return costs_[index(c)]; }
  // Replaces one class's cost (tests, benchmarks that model a specific link).
  void set(LinkClass c, const LinkCost& cost) noexcept { costs_[index(c)] = cost; }

 private:
  std::array<LinkCost, kLinkClassCount> costs_{};
};

}  // namespace skyring::topology
