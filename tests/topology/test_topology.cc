#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "skyring/topology.h"

namespace skyring::topology {
namespace {

using Groups = std::vector<std::vector<int>>;

RankRecord at(std::string node, std::string cloud) {
  return RankRecord{std::move(node), std::move(cloud), ""};
}

// Cloud A: ranks 0, 2 on node a1 and rank 4 on a2; cloud B: ranks 1, 3 on b1. Ranks of one
// cloud interleaved with the other's, as a hostfile listing clouds alternately gives.
std::vector<RankRecord> unevenTwoClouds() {
  return {at("a1", "A"), at("b1", "B"), at("a1", "A"), at("b1", "B"), at("a2", "A")};
}

TEST(Topology, UnevenCloudsGroupsAndIndices) {
  const Topology t(unevenTwoClouds());
  EXPECT_EQ(t.size(), 5);
  EXPECT_EQ(t.clouds(), 2);
  EXPECT_EQ(t.nodes(), 3);
  EXPECT_EQ(t.groups(Level::node), (Groups{{0, 2}, {1, 3}, {4}}));
  EXPECT_EQ(t.groups(Level::cloud), (Groups{{0, 2, 4}, {1, 3}}));
  EXPECT_EQ(t.groups(Level::world), (Groups{{0, 1, 2, 3, 4}}));

  EXPECT_EQ(t.groupIndex(Level::node, 4), 2);
  EXPECT_EQ(t.indexInGroup(Level::node, 4), 0);  // a node of one
  EXPECT_EQ(t.groupIndex(Level::cloud, 4), 0);
  EXPECT_EQ(t.indexInGroup(Level::cloud, 4), 2);
  EXPECT_EQ(t.groupIndex(Level::cloud, 3), 1);
  EXPECT_EQ(t.indexInGroup(Level::cloud, 3), 1);
  EXPECT_EQ(t.indexInGroup(Level::world, 3), 3);
  EXPECT_EQ(t.groupOf(Level::node, 2), (std::vector<int>{0, 2}));
  EXPECT_EQ(t.groupOf(Level::cloud, 1), (std::vector<int>{1, 3}));

  // Every rank is in exactly one group per level, at the index the accessors report.
  for (std::size_t l = 0; l < kLevelCount; ++l) {
    const auto level = static_cast<Level>(l);
    for (int r = 0; r < t.size(); ++r) {
      const auto& g = t.groups(level)[static_cast<std::size_t>(t.groupIndex(level, r))];
      EXPECT_EQ(g[static_cast<std::size_t>(t.indexInGroup(level, r))], r);
    }
  }
}

TEST(Topology, LinkClasses) {
  const Topology t(unevenTwoClouds());
  EXPECT_EQ(t.linkClass(2, 2), LinkClass::self);
  EXPECT_EQ(t.linkClass(0, 2), LinkClass::intraNode);
  EXPECT_EQ(t.linkClass(3, 1), LinkClass::intraNode);
  EXPECT_EQ(t.linkClass(0, 4), LinkClass::intraCloud);
  EXPECT_EQ(t.linkClass(4, 2), LinkClass::intraCloud);
  EXPECT_EQ(t.linkClass(0, 1), LinkClass::crossCloud);
  EXPECT_EQ(t.linkClass(4, 3), LinkClass::crossCloud);
  EXPECT_EQ(linkClassName(LinkClass::crossCloud), "cross-cloud");
  EXPECT_THROW(t.linkClass(0, 5), InvalidArgument);
  EXPECT_THROW(t.groupIndex(Level::node, -1), InvalidArgument);
}

TEST(Topology, NodeNamesAreScopedByCloud) {
  // Two Kubernetes clusters both name a pod "worker-0": two nodes, not one.
  const Topology t({at("worker-0", "aws"), at("worker-0", "gcp"), at("worker-0", "aws")});
  EXPECT_EQ(t.nodes(), 2);
  EXPECT_EQ(t.linkClass(0, 1), LinkClass::crossCloud);
  EXPECT_EQ(t.linkClass(0, 2), LinkClass::intraNode);
}

TEST(Topology, SingleCloudAndSingleRank) {
  const Topology one({at("h", "default")});
  EXPECT_EQ(one.clouds(), 1);
  EXPECT_EQ(one.nodes(), 1);
  EXPECT_EQ(one.ringOrder(), (std::vector<int>{0}));

  const Topology t({at("n0", "c"), at("n1", "c"), at("n0", "c"), at("n2", "c")});
  EXPECT_EQ(t.clouds(), 1);
  EXPECT_EQ(t.groups(Level::cloud), (Groups{{0, 1, 2, 3}}));
  EXPECT_EQ(t.groups(Level::node), (Groups{{0, 2}, {1}, {3}}));
  for (int a = 0; a < 4; ++a) {
    for (int b = 0; b < 4; ++b)
      EXPECT_NE(t.linkClass(a, b), LinkClass::crossCloud);
  }
}

TEST(Topology, RegionDoesNotSplitGroups) {
  const Topology t({{"n0", "aws", "us-east-1"}, {"n1", "aws", "us-west-2"}});
  EXPECT_EQ(t.clouds(), 1);
  EXPECT_EQ(t.linkClass(0, 1), LinkClass::intraCloud);
  EXPECT_EQ(t.record(1).region, "us-west-2");
}

TEST(Topology, RejectsEmptyOrInvalidRecords) {
  EXPECT_THROW(Topology({}), InvalidArgument);
  EXPECT_THROW(Topology({at("n", "c"), at("", "c")}), InvalidArgument);
  EXPECT_THROW(Topology({at("n", "")}), InvalidArgument);
}

// Counts the ring edges (including the closing one) that cross a node or a cloud.
std::pair<int, int> boundaries(const Topology& t, const std::vector<int>& ring) {
  int nodeEdges = 0, cloudEdges = 0;
  for (std::size_t i = 0; i < ring.size() && ring.size() > 1; ++i) {
    const auto c = t.linkClass(ring[i], ring[(i + 1) % ring.size()]);
    nodeEdges += c == LinkClass::intraCloud || c == LinkClass::crossCloud;
    cloudEdges += c == LinkClass::crossCloud;
  }
  return {nodeEdges, cloudEdges};
}

TEST(Topology, RingOrderKeepsNodeMatesAdjacent) {
  const Topology t(unevenTwoClouds());
  const auto ring = t.ringOrder();
  EXPECT_EQ(ring, (std::vector<int>{0, 2, 4, 1, 3}));
  // Rank order (0,1,2,3,4) would cross clouds 4 times; the ring order crosses twice (the
  // minimum for two clouds) and leaves each node once.
  EXPECT_EQ(boundaries(t, {0, 1, 2, 3, 4}), std::make_pair(5, 4));
  EXPECT_EQ(boundaries(t, ring), std::make_pair(3, 2));

  // A subset keeps the same rule; duplicates and bad ranks are refused.
  const std::vector<int> some{4, 3, 0};
  EXPECT_EQ(t.ringOrder(some), (std::vector<int>{0, 4, 3}));
  const std::vector<int> twice{1, 1};
  EXPECT_THROW(t.ringOrder(twice), InvalidArgument);
  const std::vector<int> bad{7};
  EXPECT_THROW(t.ringOrder(bad), InvalidArgument);
}

TEST(Topology, RingOrderThreeClouds) {
  // Round-robin placement over three clouds of sizes 3, 2 and 1 (nodes of 1 and 2 ranks).
  const Topology t({at("a1", "aws"), at("g1", "gcp"), at("z1", "azure"), at("a1", "aws"),
                    at("g2", "gcp"), at("a2", "aws")});
  EXPECT_EQ(t.clouds(), 3);
  const auto ring = t.ringOrder();
  EXPECT_EQ(ring, (std::vector<int>{0, 3, 5, 1, 4, 2}));
  EXPECT_EQ(boundaries(t, ring).second, 3);
}

TEST(CostModel, DefaultsAndConfigOverrides) {
  const CostModel d;
  EXPECT_DOUBLE_EQ(d[LinkClass::intraNode].bandwidthBytesPerSec, 100e9);
  EXPECT_DOUBLE_EQ(d[LinkClass::intraNode].latencySec, 1e-6);
  EXPECT_DOUBLE_EQ(d[LinkClass::intraCloud].bandwidthBytesPerSec, 25e9);
  EXPECT_DOUBLE_EQ(d[LinkClass::intraCloud].latencySec, 5e-6);
  EXPECT_DOUBLE_EQ(d[LinkClass::crossCloud].bandwidthBytesPerSec, 1.25e9);
  EXPECT_DOUBLE_EQ(d[LinkClass::crossCloud].latencySec, 0.030);
  EXPECT_DOUBLE_EQ(d[LinkClass::crossCloud].egressDollarsPerGB, 0.08);
  EXPECT_DOUBLE_EQ(d[LinkClass::intraCloud].egressDollarsPerGB, 0);
  EXPECT_DOUBLE_EQ(d[LinkClass::self].latencySec, 0);
  // 1 GB over the default WAN: 0.8 s on the wire plus 30 ms, and 8 cents.
  EXPECT_NEAR(d[LinkClass::crossCloud].transferSeconds(1'000'000'000), 0.830, 1e-9);
  EXPECT_NEAR(d[LinkClass::crossCloud].egressDollars(1'000'000'000), 0.08, 1e-12);

  const Config c = Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_GBPS", "2.5"},
                                    {"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "75"},
                                    {"SKYRING_LINK_CROSS_CLOUD_DOLLARS_PER_GB", "0.12"},
                                    {"SKYRING_LINK_INTRA_CLOUD_DOLLARS_PER_GB", "0.01"},
                                    {"SKYRING_LINK_INTRA_NODE_GBPS", "7200"}});
  EXPECT_TRUE(c.warnings.empty());
  const CostModel m(c);
  EXPECT_DOUBLE_EQ(m[LinkClass::crossCloud].bandwidthBytesPerSec, 2.5e9 / 8);
  EXPECT_DOUBLE_EQ(m[LinkClass::crossCloud].latencySec, 0.075);
  EXPECT_DOUBLE_EQ(m[LinkClass::crossCloud].egressDollarsPerGB, 0.12);
  EXPECT_DOUBLE_EQ(m[LinkClass::intraCloud].egressDollarsPerGB, 0.01);
  EXPECT_DOUBLE_EQ(m[LinkClass::intraNode].bandwidthBytesPerSec, 900e9);

  const Topology t({at("a", "x"), at("b", "y")}, m);
  EXPECT_DOUBLE_EQ(t.linkCost(0, 1).latencySec, 0.075);

  EXPECT_THROW(Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_GBPS", "0"}}), InvalidArgument);
  EXPECT_THROW(Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "-1"}}), InvalidArgument);
  EXPECT_THROW(Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_DOLLARS_PER_GB", "cheap"}}),
               InvalidArgument);
  EXPECT_THROW(Config::fromMap({{"SKYRING_LINK_INTRA_CLOUD_GBPS", "nan"}}), InvalidArgument);
}

TEST(RankRecord, LocalRecordDefaultsAndOverrides) {
  EXPECT_EQ(localRecord(Config{}, "host-7"), (RankRecord{"host-7", "default", ""}));
  const Config c = Config::fromMap({{"SKYRING_NODE", "gpu-node-3"},
                                    {"SKYRING_CLOUD", "gcp"},
                                    {"SKYRING_REGION", "us-central1"}});
  EXPECT_TRUE(c.warnings.empty());
  EXPECT_EQ(localRecord(c, "ignored"), (RankRecord{"gpu-node-3", "gcp", "us-central1"}));
  // SKYRING_NODE set but empty falls back to the hostname.
  EXPECT_EQ(localRecord(Config::fromMap({{"SKYRING_NODE", ""}}), "h").node, "h");
  EXPECT_THROW(Config::fromMap({{"SKYRING_CLOUD", ""}}), InvalidArgument);
  EXPECT_THROW(localRecord(Config{}, ""), InvalidArgument);
  EXPECT_THROW(localRecord(Config{}, "bad\nname"), InvalidArgument);
  EXPECT_THROW(localRecord(Config{}, std::string(kMaxRecordField + 1, 'x')), InvalidArgument);
}

TEST(RankRecord, SerializeRoundTrip) {
  for (const RankRecord& r :
       {RankRecord{"n", "c", ""}, RankRecord{"ip-10-0-0-1", "aws", "us-east-1"},
        RankRecord{std::string(kMaxRecordField, 'n'), "gcp", "é-ünïcode"}}) {
    const auto bytes = serialize(r);
    EXPECT_EQ(parse(bytes), r);
  }
}

TEST(RankRecord, ParseRejectsGarbage) {
  const auto good = serialize(RankRecord{"node", "cloud", "region"});
  EXPECT_THROW(parse({}), InvalidArgument);
  for (std::size_t n = 0; n < good.size(); ++n) {  // every truncation
    EXPECT_THROW(parse(std::span(good).first(n)), InvalidArgument) << n;
  }
  auto longer = good;
  longer.push_back(std::byte{0});
  EXPECT_THROW(parse(longer), InvalidArgument);
  auto badMagic = good;
  badMagic[0] = std::byte{'X'};
  EXPECT_THROW(parse(badMagic), InvalidArgument);
  auto badVersion = good;
  badVersion[4] = std::byte{2};
  EXPECT_THROW(parse(badVersion), InvalidArgument);
  auto hugeLength = good;
  hugeLength[6] = std::byte{0xff};  // node length high byte
  EXPECT_THROW(parse(hugeLength), InvalidArgument);
  auto emptyNode = serialize(RankRecord{"n", "c", ""});
  emptyNode[5] = std::byte{0};  // node length 0, then "n" is read as the cloud's length
  EXPECT_THROW(parse(emptyNode), InvalidArgument);
  auto control = good;
  control[7] = std::byte{0x01};  // first byte of the node name
  EXPECT_THROW(parse(control), InvalidArgument);
  try {
    parse(badVersion);
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("version 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace skyring::topology
