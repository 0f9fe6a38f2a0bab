// The node level of allreduce (collectives/node_level.h) in jobs of several nodes, as
// threads with one node channel per node: exact for every dtype and op, bit for bit the
// flat ring's result (tag 1), no byte between node-mates over the transport on the
// primary tag (other tags, even given an algorithm, keep the transport: they may run
// concurrently), and a dead rank named.
#include <gtest/gtest.h>

#include <thread>

#include "common/allreduce_checks.h"
#include "common/cloud_world.h"
#include "common/exact_data.h"
#include "skyring/communicator.h"
#include "skyring/metering_transport.h"

namespace skyring {
namespace {

using testing::makeInput;
using testing::viewOf;
using topology::LinkClass;

const std::size_t kCounts[] = {0, 1, 2, 3, 7, 97, 1029, 20011};
constexpr std::size_t kSlotBytes = 4096;  // small: the staged pipeline runs many rounds

struct Layout {
  const char* name;
  std::vector<const char*> where;  // "<cloud><node>" per rank
};

const Layout kLayouts[] = {
    {"n2x2", {"A1", "A1", "A2", "A2"}},
    {"n2x2interleaved", {"A1", "A2", "A1", "A2"}},
    {"n2_1_3", {"A1", "A1", "A2", "A3", "A3", "A3"}},
    {"c2n2x2", {"A1", "A1", "A2", "A2", "B1", "B1", "B2", "B2"}},
    {"c2uneven", {"A1", "B1", "A2", "A1", "B2", "B2", "C1"}},
    {"c2n1_3", {"B1", "A1", "A1", "B1", "B1"}},
};

Config testConfig() {
  Config c;
  c.timeout = std::chrono::milliseconds(20000);
  c.ringChunkBytes = 1024;
  c.ringPipelineDepth = 3;
  c.shmChunkBytes = 256;  // several chunks per segment in the node pipeline
  return c;
}

class NodeLevel : public ::testing::TestWithParam<Layout> {};

TEST_P(NodeLevel, ExactEqualToRingAndNothingBetweenNodeMates) {
  auto topo = testing::topologyOf(GetParam().where);
  std::vector<std::shared_ptr<transport::MeteringTransport>> meters(
      static_cast<std::size_t>(topo->size()));
  CollectiveOptions flat;
  flat.tag = 1;  // the flat ring: the reference
  CollectiveOptions engineLike;
  engineLike.tag = 7;
  engineLike.algorithm = AllreduceAlgorithm::automatic;
  testing::runCloudRanks(
      topo, testConfig(),
      [&](Communicator& comm) {
        EXPECT_NE(comm.describeAllreduce().find("node level"), std::string::npos)
            << comm.describeAllreduce();
        auto& meter = *meters[static_cast<std::size_t>(comm.rank())];
        std::uint64_t otherTags = 0;  // node-mates' bytes of the calls on tags 1 and 7
        testing::expectAllreduceExact(
            comm, kCounts,
            [&](DType d, ReduceOp op, std::size_t count, const std::vector<std::byte>& input,
                const std::vector<std::byte>& output) {
              auto in = input;
              std::vector<std::byte> ring(input.size(), std::byte{0x33});
              const auto before = meter.stats().bytesOver(LinkClass::intraNode);
              comm.allreduce(viewOf(in, d), viewOf(ring, d), op, flat);
              ASSERT_TRUE(output == ring)
                  << testing::where(comm.rank(), d, op, count, "differs from ring");
              std::vector<std::byte> tagged(input.size(), std::byte{0x44});
              comm.allreduce(viewOf(in, d), viewOf(tagged, d), op, engineLike);
              otherTags += meter.stats().bytesOver(LinkClass::intraNode) - before;
              ASSERT_TRUE(tagged == ring)
                  << testing::where(comm.rank(), d, op, count, "tag 7 differs from ring");
            });
        // Only the calls on other tags sent node-mates bytes over the transport.
        EXPECT_EQ(meter.stats().bytesOver(LinkClass::intraNode), otherTags)
            << "rank " << comm.rank();
      },
      [&](int r, std::shared_ptr<transport::Transport> t) -> std::shared_ptr<transport::Transport> {
        auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
        meters[static_cast<std::size_t>(r)] = m;
        return m;
      },
      kSlotBytes);
}

INSTANTIATE_TEST_SUITE_P(Layouts, NodeLevel, ::testing::ValuesIn(kLayouts),
                         [](const auto& info) { return std::string(info.param.name); });

// The single-copy node phases (SKYRING_SHM_SINGLE_COPY_BYTES; memcpy between threads).
TEST(NodeLevelSingleCopy, ExactOnUnevenNodesAndClouds) {
  Config config = testConfig();
  config.shmSingleCopyBytes = 1;
  for (const auto& where : {std::vector<const char*>{"A1", "A1", "A2", "A3", "A3", "A3"},
                            std::vector<const char*>{"A1", "B1", "A2", "A1", "B2", "B2", "C1"}}) {
    testing::runCloudRanks(
        testing::topologyOf(where), config,
        [](Communicator& comm) { testing::expectAllreduceExact(comm, kCounts); }, nullptr,
        kSlotBytes);
  }
}

// Forcing the flat ring (SKYRING_ALLREDUCE=ring) keeps it, node level or not.
TEST(NodeLevelChoice, RingWhenForcedAndNoneWithoutChannels) {
  auto topo = testing::topologyOf({"A1", "A1", "A2", "A2"});
  Config ring = testConfig();
  ring.allreduceAlgorithm = AllreduceAlgorithm::ring;
  testing::runCloudRanks(
      topo, ring,
      [](Communicator& comm) {
        EXPECT_EQ(comm.describeAllreduce().find("node level"), std::string::npos);
      },
      nullptr, kSlotBytes);
  testing::runCloudRanks(topo, testConfig(), [](Communicator& comm) {
    EXPECT_EQ(comm.describeAllreduce().find("node level"), std::string::npos);
  });
}

// Compressed across clouds with even nodes: the codec runs on each rank's shard, and every
// rank ends with the same bytes (sign-free, exact codec: fp16 of small integers).
TEST(NodeLevelCompressed, EvenNodesAgreeOnEveryRank) {
  auto topo = testing::topologyOf({"A1", "A1", "A2", "A2", "B1", "B1", "B2", "B2"});
  Config config = testConfig();
  config.allreduceAlgorithm = AllreduceAlgorithm::hierarchical;
  config.compression = "fp16";
  const std::size_t count = 5003;
  testing::runCloudRanks(
      topo, config,
      [&](Communicator& comm) {
        auto data = makeInput(ReduceOp::sum, DType::f32, comm.rank(), count);
        comm.allreduce(viewOf(data, DType::f32), ReduceOp::sum);
        EXPECT_TRUE(data == testing::expectedResult(ReduceOp::sum, DType::f32, comm.size(), count))
            << "rank " << comm.rank();
      },
      nullptr, kSlotBytes);
}

std::string whatOf(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
  return {};
}

// A rank that died: every other rank fails, within the timeout, naming it by job rank.
TEST(NodeLevelFailure, DeadRankIsNamed) {
  auto topo = testing::topologyOf({"A1", "A1", "A2", "A2"});
  const int dead = 3;
  transport::InProcessWorld world(topo->size());
  std::vector<std::unique_ptr<transport::NodeChannel::Local>> nodes;
  for (const auto& ranks : topo->groups(topology::Level::node))
    nodes.push_back(std::make_unique<transport::NodeChannel::Local>(static_cast<int>(ranks.size()),
                                                                    kSlotBytes, ranks));
  Config config = testConfig();
  config.timeout = std::chrono::milliseconds(3000);
  world.kill(dead);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(topo->size()));
  std::vector<std::thread> threads;
  const auto start = transport::Clock::now();
  for (int r = 0; r < topo->size(); ++r) {
    if (r == dead) continue;
    threads.emplace_back([&, r] {
      auto data = makeInput(ReduceOp::sum, DType::f32, r, 100000);
      std::shared_ptr<transport::NodeChannel> node =
          nodes[static_cast<std::size_t>(topo->groupIndex(topology::Level::node, r))]->channel(
              topo->indexInGroup(topology::Level::node, r));
      try {
        Communicator comm(world.transport(r), config, node, topo);
        comm.allreduce(viewOf(data, DType::f32), ReduceOp::sum);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  for (int r = 0; r < topo->size(); ++r) {
    if (r == dead) continue;
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr) << "rank " << r;
    const std::string what = whatOf(errors[static_cast<std::size_t>(r)]);
    EXPECT_NE(what.find("rank 3"), std::string::npos) << "rank " << r << ": " << what;
  }
  EXPECT_LT(transport::Clock::now() - start, std::chrono::milliseconds(8000));
}

}  // namespace
}  // namespace skyring
