// Topology: groups per level computed once at construction.
#include "skyring/topology.h"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "skyring/error.h"

namespace skyring::topology {
namespace {

// Splits ranks 0..n-1 by key as MPI_Comm_split does (ranks in rank order inside a group);
// groups come out ordered by lowest rank because ranks are visited in order.
template <typename Key>
void split(int n, const std::vector<Key>& keys, std::vector<std::vector<int>>& groups,
           std::vector<int>& groupOfRank, std::vector<int>& indexOfRank) {
  std::map<Key, int> groupOfKey;
  groupOfRank.assign(static_cast<std::size_t>(n), 0);
  indexOfRank.assign(static_cast<std::size_t>(n), 0);
  for (int r = 0; r < n; ++r) {
    const auto [it, added] =
        groupOfKey.try_emplace(keys[static_cast<std::size_t>(r)], static_cast<int>(groups.size()));
    if (added) groups.emplace_back();
    auto& group = groups[static_cast<std::size_t>(it->second)];
    groupOfRank[static_cast<std::size_t>(r)] = it->second;
    indexOfRank[static_cast<std::size_t>(r)] = static_cast<int>(group.size());
    group.push_back(r);
  }
}

}  // namespace

Topology::Topology(std::vector<RankRecord> records, CostModel costs)
    : records_(std::move(records)), costs_(costs) {
  SKYRING_CHECK_ARG(!records_.empty(), {}, "a topology needs at least one rank record");
  const int n = size();
  std::vector<std::pair<std::string, std::string>> nodeKeys;
  std::vector<std::string> cloudKeys;
  std::vector<int> worldKeys(static_cast<std::size_t>(n), 0);
  for (int r = 0; r < n; ++r) {
    const RankRecord& rec = records_[static_cast<std::size_t>(r)];
    validate(rec, r);
    nodeKeys.emplace_back(rec.cloud, rec.node);
    cloudKeys.push_back(rec.cloud);
  }
  auto fill = [&](Level l, const auto& keys) {
    LevelData& d = levels_[static_cast<std::size_t>(l)];
    split(n, keys, d.groups, d.groupOfRank, d.indexOfRank);
  };
  fill(Level::node, nodeKeys);
  fill(Level::cloud, cloudKeys);
  fill(Level::world, worldKeys);
}

void Topology::checkRank(int rank) const {
  SKYRING_CHECK_ARG(rank >= 0 && rank < size(), (ErrorContext{-1, rank, "topology"}), "rank ", rank,
                    " out of range for a topology of ", size(), " ranks");
}

const RankRecord& Topology::record(int rank) const {
  checkRank(rank);
  return records_[static_cast<std::size_t>(rank)];
}

int Topology::groupIndex(Level l, int rank) const {
  checkRank(rank);
  return level(l).groupOfRank[static_cast<std::size_t>(rank)];
}

int Topology::indexInGroup(Level l, int rank) const {
  checkRank(rank);
  return level(l).indexOfRank[static_cast<std::size_t>(rank)];
}

const std::vector<int>& Topology::groupOf(Level l, int rank) const {
  return level(l).groups[static_cast<std::size_t>(groupIndex(l, rank))];
}

LinkClass Topology::linkClass(int a, int b) const {
  checkRank(a);
  checkRank(b);
  if (a == b) return LinkClass::self;
  const auto& node = level(Level::node).groupOfRank;
  if (node[static_cast<std::size_t>(a)] == node[static_cast<std::size_t>(b)]) {
    return LinkClass::intraNode;
  }
  const auto& cloud = level(Level::cloud).groupOfRank;
  if (cloud[static_cast<std::size_t>(a)] == cloud[static_cast<std::size_t>(b)]) {
    return LinkClass::intraCloud;
  }
  return LinkClass::crossCloud;
}

std::vector<int> Topology::ringOrder(std::span<const int> ranks) const {
  std::vector<int> out(ranks.begin(), ranks.end());
  for (int r : out)
    checkRank(r);
  // Group indices are ordered by lowest rank, so the key is the same on every rank.
  auto key = [this](int r) {
    return std::make_tuple(groupIndex(Level::cloud, r), groupIndex(Level::node, r), r);
  };
  std::sort(out.begin(), out.end(), [&](int a, int b) { return key(a) < key(b); });
  const auto repeated = std::adjacent_find(out.begin(), out.end());
  SKYRING_CHECK_ARG(repeated == out.end(), (ErrorContext{-1, -1, "topology"}), "rank ",
                    repeated == out.end() ? -1 : *repeated,
                    " appears twice in the ranks to order for a ring");
  return out;
}

std::vector<int> Topology::ringOrder() const {
  return ringOrder(groups(Level::world).front());
}

}  // namespace skyring::topology
