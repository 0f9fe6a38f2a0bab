// Topology: a pure description of where the ranks of a job are. No I/O.
//
// Built from one RankRecord per rank (index = rank), as gathered at start-up, so every
// rank that builds it from the same records sees the same groups in the same order.
//
// Levels, from the innermost: node -> cloud -> world. At each level the ranks are split
// into groups as MPI_Comm_split would with the key (cloud, node) for nodes and cloud for
// clouds: each group lists its ranks in rank order, and the groups are ordered by their
// lowest rank. The world level has one group holding every rank. Groups may be uneven (a
// cloud of 3 ranks beside a cloud of 2, a node of 1).
//
// A node is the pair (cloud, node name): it always lies inside one cloud, so the levels
// nest. Regions are informational (see rank_record.h).
//
// Ownership and thread-safety: immutable after construction; share it as
// std::shared_ptr<const Topology> and read it from any thread.
//
// Failure: the constructor throws InvalidArgument for no records or an invalid record;
// accessors throw InvalidArgument for a rank out of range.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "skyring/link_cost.h"
#include "skyring/rank_record.h"

namespace skyring::topology {

enum class Level : std::uint8_t { node, cloud, world };
inline constexpr std::size_t kLevelCount = 3;

class Topology {
 public:
  explicit Topology(std::vector<RankRecord> records, CostModel costs = CostModel());

  int size() const noexcept { return static_cast<int>(records_.size()); }
  const RankRecord& record(int rank) const;
  const CostModel& costs() const noexcept { return costs_; }

  // Number of distinct clouds and nodes.
  int clouds() const noexcept { return static_cast<int>(groups(Level::cloud).size()); }
  int nodes() const noexcept { return static_cast<int>(groups(Level::node).size()); }

  // Every group of a level: sorted rank lists, ordered by lowest rank.
  const std::vector<std::vector<int>>& groups(Level level) const noexcept {
    return levels_[static_cast<std::size_t>(level)].groups;
  }
  // Which group of `level` holds rank, and rank's position in that group.
  int groupIndex(Level level, int rank) const;
  int indexInGroup(Level level, int rank) const;
  // The group of `level` that holds rank.
  const std::vector<int>& groupOf(Level level, int rank) const;

  LinkClass linkClass(int a, int b) const;
  const LinkCost& linkCost(int a, int b) const { return costs_[linkClass(a, b)]; }

  // `ranks` reordered for a ring: grouped by cloud, then by node (clouds and nodes in
  // order of their lowest rank, ranks in rank order inside a node), so node-mates are
  // adjacent and a ring over the result crosses each cloud boundary once. Every rank
  // computes the same order. Throws InvalidArgument for a rank out of range or repeated.
  std::vector<int> ringOrder(std::span<const int> ranks) const;
  // ringOrder of every rank.
  std::vector<int> ringOrder() const;

 private:
  struct LevelData {
    std::vector<std::vector<int>> groups;
    std::vector<int> groupOfRank;  // rank -> index into groups
    std::vector<int> indexOfRank;  // rank -> position inside its group
  };

  void checkRank(int rank) const;
  const LevelData& level(Level l) const noexcept { return levels_[static_cast<std::size_t>(l)]; }

  std::vector<RankRecord> records_;
  CostModel costs_;
  std::array<LevelData, kLevelCount> levels_;
};

}  // namespace skyring::topology
