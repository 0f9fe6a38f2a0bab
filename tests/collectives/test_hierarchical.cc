// Hierarchical allreduce over topologies of even and uneven clouds (and nodes inside
// them), bit for bit against the exact expected values and against the flat ring (which
// the same communicator runs on tag 1), plus the cross-cloud bytes it saves.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <numeric>
#include <thread>
#include <tuple>

#include "collectives/hierarchical.h"
#include "common/allreduce_checks.h"
#include "common/cloud_world.h"
#include "common/exact_data.h"
#include "skyring/communicator.h"
#include "skyring/inprocess_transport.h"
#include "skyring/metering_transport.h"
#include "transport/subgroup_transport.h"

namespace skyring {
namespace {

using testing::expectedResult;
using testing::makeInput;
using testing::viewOf;
using topology::LinkClass;
using topology::RankRecord;
using topology::Topology;

const std::size_t kCounts[] = {0, 1, 2, 7, 13, 97, 1029, 20011};

struct Layout {
  const char* name;
  // One string per rank: "<cloud><node>", e.g. "A1" is node 1 of cloud A. Ranks of a cloud
  // are interleaved with other clouds' in some layouts, so ring order matters.
  std::vector<const char*> where;
  bool forced = false;  // run hierarchical even with one cloud
};

const Layout kLayouts[] = {
    {"c2x2", {"A0", "A1", "B0", "B1"}},
    {"c2x4", {"A0", "B0", "A1", "B1", "A2", "B2", "A3", "B3"}},
    {"c4x1", {"A0", "B0", "C0", "D0"}},
    {"c3_2", {"A0", "B0", "A1", "B1", "A2"}},
    {"c1_4", {"A0", "B0", "B1", "B2", "B3"}},
    // Cloud A: node 1 with ranks 0 and 3, node 2 with rank 2 alone; cloud B: node 1 alone,
    // node 2 with ranks 4 and 5; cloud C one rank.
    {"nodes", {"A1", "B1", "A2", "A1", "B2", "B2", "C1"}},
    {"c3_2_4", {"C0", "A0", "B0", "C1", "A1", "C2", "B1", "A2", "C3"}},
    // 16 cut pieces: the shard groups' tag ids (14 of them) wrap around.
    {"c5_7_4",
     {"A0", "A1", "A2", "A3", "A4", "B0", "B1", "B2", "B3", "B4", "B5", "B6", "C0", "C1", "C2",
      "C3"}},
    {"oneCloudForced", {"A1", "A2", "A1", "A3", "A2"}, true},
};

std::shared_ptr<const Topology> topologyOf(const Layout& layout) {
  return testing::topologyOf(layout.where);
}

Config testConfig(AllreduceAlgorithm algorithm) {
  Config c;
  c.timeout = std::chrono::milliseconds(20000);
  c.ringChunkBytes = 1024;  // several chunks per step at the larger counts
  c.ringPipelineDepth = 3;
  c.allreduceAlgorithm = algorithm;
  return c;
}

void runRanks(const std::shared_ptr<const Topology>& topo, const Config& config,
              const std::function<void(Communicator&)>& fn,
              const testing::WrapTransport& wrap = nullptr) {
  testing::runCloudRanks(topo, config, fn, wrap);
}

class Hierarchical : public ::testing::TestWithParam<Layout> {};

TEST_P(Hierarchical, AllreduceExactAndEqualToRing) {
  const Layout& layout = GetParam();
  auto topo = topologyOf(layout);
  const auto algorithm =
      layout.forced ? AllreduceAlgorithm::hierarchical : AllreduceAlgorithm::automatic;
  CollectiveOptions flat;
  flat.tag = 1;  // the communicator keeps the flat ring on other tags
  runRanks(topo, testConfig(algorithm), [&](Communicator& comm) {
    testing::expectAllreduceExact(
        comm, kCounts,
        [&](DType d, ReduceOp op, std::size_t count, const std::vector<std::byte>& input,
            const std::vector<std::byte>& output) {
          auto in = input;
          std::vector<std::byte> ring(input.size(), std::byte{0x33});
          comm.allreduce(viewOf(in, d), viewOf(ring, d), op, flat);
          ASSERT_TRUE(output == ring)
              << testing::where(comm.rank(), d, op, count, "differs from ring");
        });
  });
}

// The flat ring in topology order: exact, whatever the layout.
TEST_P(Hierarchical, TopologyRingExact) {
  auto topo = topologyOf(GetParam());
  runRanks(topo, testConfig(AllreduceAlgorithm::topologyRing),
           [&](Communicator& comm) { testing::expectAllreduceExact(comm, kCounts); });
}

INSTANTIATE_TEST_SUITE_P(Layouts, Hierarchical, ::testing::ValuesIn(kLayouts),
                         [](const auto& info) { return std::string(info.param.name); });

struct CrossCloud {
  std::vector<std::uint64_t> perRank;
  std::uint64_t total() const { return std::accumulate(perRank.begin(), perRank.end(), 0ull); }
  std::uint64_t max() const { return *std::max_element(perRank.begin(), perRank.end()); }
};

CrossCloud meterAllreduce(const std::shared_ptr<const Topology>& topo, AllreduceAlgorithm algo,
                          std::size_t count) {
  std::vector<std::shared_ptr<transport::MeteringTransport>> meters(
      static_cast<std::size_t>(topo->size()));
  runRanks(
      topo, testConfig(algo),
      [&](Communicator& comm) {
        auto data = makeInput(ReduceOp::sum, DType::f32, comm.rank(), count);
        comm.allreduce(viewOf(data, DType::f32), ReduceOp::sum);
        ASSERT_TRUE(data == expectedResult(ReduceOp::sum, DType::f32, comm.size(), count));
      },
      [&](int r, std::shared_ptr<transport::Transport> t) {
        auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
        meters[static_cast<std::size_t>(r)] = m;
        return m;
      });
  CrossCloud out;
  for (const auto& m : meters)
    out.perRank.push_back(m->stats().bytesOver(LinkClass::crossCloud));
  return out;
}

// Even layouts: each rank sends 2(G-1)/G of its 1/c of the buffer over the WAN, exactly
// (the count divides evenly; the meter counts payload bytes only).
TEST(HierarchicalTraffic, CrossCloudBytesPerRank) {
  for (const Layout& layout : {kLayouts[0], kLayouts[1], kLayouts[2]}) {
    auto topo = topologyOf(layout);
    const std::uint64_t g = static_cast<std::uint64_t>(topo->clouds());
    const std::uint64_t c = static_cast<std::uint64_t>(topo->size()) / g;
    const std::size_t count = 4800;  // divisible by every G * c here
    const std::uint64_t bytes = count * sizeof(float);
    const CrossCloud hier = meterAllreduce(topo, AllreduceAlgorithm::hierarchical, count);
    const CrossCloud ring = meterAllreduce(topo, AllreduceAlgorithm::ring, count);
    for (std::size_t r = 0; r < hier.perRank.size(); ++r) {
      EXPECT_EQ(hier.perRank[r], 2 * (g - 1) * bytes / (g * c)) << layout.name << " rank " << r;
    }
    if (c == 1) {  // one rank per cloud: the hierarchy is the flat ring
      EXPECT_EQ(hier.total(), ring.total()) << layout.name;
    } else {
      EXPECT_LT(hier.total(), ring.total()) << layout.name;
      EXPECT_LT(hier.max(), ring.max()) << layout.name;
    }
  }
}

// Large calls are pipelined in slices when the cost model's WAN latency is small against
// a slice's transfer time (here zero): three stages in three threads per rank, still
// bit for bit, for even and uneven clouds, with a codec too.
TEST(HierarchicalPipelined, ExactInSlices) {
  Config costs = Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "0"}});
  const std::size_t count = (std::size_t{13} << 20) / 4 + 3;  // 3 slices of kMinSliceBytes
  // Under a sanitizer (10-20x slower) one layout with nodes and three clouds covers the
  // pipeline's threads; the other two run in the plain build.
#ifdef SKYRING_TEST_SANITIZED
  for (const Layout& layout : {kLayouts[5]}) {
#else
  for (const Layout& layout : {kLayouts[1], kLayouts[3], kLayouts[5]}) {
#endif
    std::vector<topology::RankRecord> records;
    for (const char* w : layout.where)
      records.push_back({std::string("n") + w, std::string(1, w[0]), ""});
    auto topo = std::make_shared<const Topology>(std::move(records), topology::CostModel(costs));
    runRanks(topo, testConfig(AllreduceAlgorithm::hierarchical), [&](Communicator& comm) {
      for (auto [d, op] :
           {std::pair{DType::f32, ReduceOp::avg}, std::pair{DType::i32, ReduceOp::max},
            std::pair{DType::f16, ReduceOp::sum}}) {
        auto data = makeInput(op, d, comm.rank(), count);
        comm.allreduce(viewOf(data, d), op);
        ASSERT_TRUE(data == expectedResult(op, d, comm.size(), count))
            << layout.name << " " << dtypeName(d) << " " << reduceOpName(op);
      }
      // Compressed slices: identical bytes everywhere (checked by the sum of a digest).
      std::vector<float> grad(count, 0.5f + static_cast<float>(comm.rank()));
      CollectiveOptions options;
      options.compression = "fp16";
      comm.allreduce(view(std::span(grad)), ReduceOp::sum, options);
      const float want = 0.5f * static_cast<float>(comm.size()) +
                         static_cast<float>(comm.size() * (comm.size() - 1) / 2);
      for (float v : grad)
        ASSERT_EQ(v, want) << layout.name << " fp16";
      // And inside the clouds too (every value stays exact in fp16).
      std::fill(grad.begin(), grad.end(), 0.5f + static_cast<float>(comm.rank()));
      options.compressionLevels = CompressionLevels{true, true};
      comm.allreduce(view(std::span(grad)), ReduceOp::sum, options);
      for (float v : grad)
        ASSERT_EQ(v, want) << layout.name << " fp16 at every level";
    });
  }
}

// With clouds interleaved in rank order, the ring in rank order crosses the WAN at every
// hop; in topology order it crosses each cloud boundary once, as the hierarchy's bound
// for a flat ring says: 2(N-1)/N of the buffer over each of the G boundary hops.
TEST(HierarchicalTraffic, TopologyRingCrossesEachBoundaryOnce) {
  auto topo = topologyOf(kLayouts[1]);  // 2 x 4, interleaved
  const std::size_t count = 4800;
  const std::uint64_t n = 8;
  const CrossCloud ordered = meterAllreduce(topo, AllreduceAlgorithm::topologyRing, count);
  const CrossCloud rankOrder = meterAllreduce(topo, AllreduceAlgorithm::ring, count);
  EXPECT_EQ(ordered.total(), 2 * 2 * (n - 1) * count * sizeof(float) / n);
  EXPECT_EQ(rankOrder.total(), n * 2 * (n - 1) * count * sizeof(float) / n);
}

// Uneven clouds still cross the WAN with 2(G-1)/G of the buffer per cloud in total.
TEST(HierarchicalTraffic, UnevenCloudsSendTheMinimumPerCloud) {
  auto topo = topologyOf(kLayouts[3]);  // clouds of 3 and 2
  const std::size_t count = 6000;
  const CrossCloud hier = meterAllreduce(topo, AllreduceAlgorithm::hierarchical, count);
  std::uint64_t perCloud[2] = {0, 0};
  for (int r = 0; r < topo->size(); ++r)
    perCloud[topo->groupIndex(topology::Level::cloud, r)] +=
        hier.perRank[static_cast<std::size_t>(r)];
  EXPECT_EQ(perCloud[0], count * sizeof(float));  // 2(G-1)/G = 1 for G = 2
  EXPECT_EQ(perCloud[1], count * sizeof(float));
  for (auto b : hier.perRank)
    EXPECT_GT(b, 0u) << "every rank carries part of the buffer over the WAN";
}

// A rank that dies makes every rank of every cloud fail, not only its cloud-mates: the
// level that sees it aborts the world.
TEST(HierarchicalFailure, DeadRankFailsEveryCloud) {
  auto topo = topologyOf(kLayouts[3]);  // clouds of 3 and 2
  const int dead = 4;
  transport::InProcessWorld world(topo->size());
  Config config = testConfig(AllreduceAlgorithm::automatic);
  config.timeout = std::chrono::milliseconds(3000);
  world.kill(dead);
  std::vector<int> failed(static_cast<std::size_t>(topo->size()), 0);
  std::vector<std::thread> threads;
  const auto start = transport::Clock::now();
  for (int r = 0; r < topo->size(); ++r) {
    if (r == dead) continue;
    threads.emplace_back([&, r] {
      auto data = makeInput(ReduceOp::sum, DType::f32, r, 1000);
      try {
        Communicator comm(world.transport(r), config, nullptr, topo);
        comm.allreduce(viewOf(data, DType::f32), ReduceOp::sum);
      } catch (const Error&) {
        failed[static_cast<std::size_t>(r)] = 1;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  for (int r = 0; r < topo->size(); ++r) {
    if (r == dead) continue;
    EXPECT_EQ(failed[static_cast<std::size_t>(r)], 1) << "rank " << r;
  }
  EXPECT_LT(transport::Clock::now() - start, std::chrono::milliseconds(6000));
}

TEST(HierarchicalConfig, ReadsAllreduceVariable) {
  EXPECT_EQ(Config{}.allreduceAlgorithm, AllreduceAlgorithm::automatic);
  EXPECT_EQ(Config::fromMap({{"SKYRING_ALLREDUCE", "ring"}}).allreduceAlgorithm,
            AllreduceAlgorithm::ring);
  EXPECT_EQ(Config::fromMap({{"SKYRING_ALLREDUCE", "hierarchical"}}).allreduceAlgorithm,
            AllreduceAlgorithm::hierarchical);
  EXPECT_EQ(Config::fromMap({{"SKYRING_ALLREDUCE", "topology_ring"}}).allreduceAlgorithm,
            AllreduceAlgorithm::topologyRing);
  EXPECT_EQ(Config::fromMap({{"SKYRING_ALLREDUCE", "auto"}}).allreduceAlgorithm,
            AllreduceAlgorithm::automatic);
  EXPECT_THROW(Config::fromMap({{"SKYRING_ALLREDUCE", "tree"}}), InvalidArgument);
}

TEST(SubgroupTransport, MapsRanksAndKeepsTagSpacesApart) {
  transport::InProcessWorld world(4);
  auto p1 = world.transport(1);
  auto p3 = world.transport(3);
  using Scope = transport::SubgroupTransport::Scope;
  const auto bits = [](std::uint32_t id) { return Scope::level(id); };
  transport::SubgroupTransport a1(p1, {3, 1}, bits(1));
  transport::SubgroupTransport a3(p3, {3, 1}, bits(1));
  transport::SubgroupTransport b3(p3, {1, 3}, bits(2));
  EXPECT_EQ(a1.rank(), 1);
  EXPECT_EQ(a3.rank(), 0);
  EXPECT_EQ(b3.rank(), 1);
  EXPECT_EQ(a1.size(), 2);
  EXPECT_EQ(a1.parentRank(0), 3);

  // Same tag, two groups: each receive gets its own group's message.
  std::array<std::byte, 1> fromA{std::byte{1}}, fromB{std::byte{2}}, gotA{}, gotB{};
  auto rb = b3.irecv(0, 5, gotB);
  auto ra = a3.irecv(1, 5, gotA);
  transport::SubgroupTransport b1(p1, {1, 3}, bits(2));
  a1.isend(0, 5, fromA)->waitUntil(transport::Clock::now() + std::chrono::seconds(5));
  b1.isend(1, 5, fromB)->waitUntil(transport::Clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(ra->waitUntil(transport::Clock::now() + std::chrono::seconds(5)));
  ASSERT_TRUE(rb->waitUntil(transport::Clock::now() + std::chrono::seconds(5)));
  EXPECT_EQ(ra->peer(), 1);
  EXPECT_EQ(gotA[0], std::byte{1});
  EXPECT_EQ(gotB[0], std::byte{2});

  EXPECT_THROW(a1.isend(2, 0, fromA), InvalidArgument);  // not a group rank
  EXPECT_THROW(transport::SubgroupTransport(p1, {0, 2}, bits(1)), InvalidArgument);
  EXPECT_THROW(transport::SubgroupTransport(p1, {1, 1}, bits(1)), InvalidArgument);
  EXPECT_THROW(transport::SubgroupTransport(p1, {1, 3}, bits(0)), InvalidArgument);
  EXPECT_THROW(transport::SubgroupTransport(p1, {1, 3}, bits(tags::kMaxLevel + 1)),
               InvalidArgument);
  EXPECT_THROW(
      transport::SubgroupTransport(p1, {1, 3}, Scope::context(tags::kRuntimeEngineContext + 1)),
      InvalidArgument);

  // Shutting a subgroup down leaves the parent usable.
  a1.shutdown();
  EXPECT_THROW(a1.isend(0, 5, fromA), Aborted);
  std::array<std::byte, 1> got{};
  auto r = p3->irecv(1, 9, got);
  ASSERT_TRUE(p1->isend(3, 9, fromB)->waitUntil(transport::Clock::now() + std::chrono::seconds(5)));
  ASSERT_TRUE(r->waitUntil(transport::Clock::now() + std::chrono::seconds(5)));
}

// A failure inside one level's group aborts the whole world.
TEST(SubgroupTransport, AbortReachesTheParentGroup) {
  transport::InProcessWorld world(3);
  auto p0 = world.transport(0);
  auto p2 = world.transport(2);
  transport::SubgroupTransport g0(p0, {0, 1}, transport::SubgroupTransport::Scope::level(1));
  std::array<std::byte, 1> got{};
  auto r = p2->irecv(1, 1, got);
  g0.abort(ErrorKind::aborted, "level failed");
  EXPECT_THROW(r->waitUntil(transport::Clock::now() + std::chrono::seconds(5)), Aborted);
}

}  // namespace
}  // namespace skyring

namespace skyring {
namespace {

// Runs fn on every rank of the layout, each with its own Communicator over one in-process
// world; returns each rank's exception (null when it succeeded). The killer kills ranks.
std::vector<std::exception_ptr> runCollectClouds(
    const std::vector<const char*>& where, const Config& config,
    const std::function<void(Communicator&, transport::InProcessWorld&)>& fn) {
  const auto topo = testing::topologyOf(where);
  transport::InProcessWorld world(topo->size());
  std::vector<std::exception_ptr> errors(where.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < topo->size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        Communicator comm(world.transport(r), config, nullptr, topo);
        fn(comm, world);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  return errors;
}

std::string whatOf(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
  return {};
}

// Every level of the hierarchy renumbers ranks (a rank's place in its cloud's ring, in its
// shard's group across clouds); a failure must still name the rank the launcher gave.
// Layout: clouds A = {0, 2}, B = {1, 3}: rank 3 is position 1 in cloud B and in its shard
// group; ranks 0 and 1 are what a wrong numbering would blame.
TEST(HierarchicalFailures, StalledRankIsNamedByItsJobRank) {
  Config config;
  config.timeout = std::chrono::milliseconds(800);
  const auto errors =
      runCollectClouds({"A0", "B0", "A1", "B1"}, config, [](Communicator& comm, auto&) {
        if (comm.rank() == 3) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
        std::vector<float> data(4096, 1.0f);
        comm.allreduce(view(std::span(data)), ReduceOp::sum);
      });
  for (int r : {0, 1, 2}) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr) << "rank " << r;
    const std::string what = whatOf(errors[static_cast<std::size_t>(r)]);
    EXPECT_NE(what.find("rank 3 did not take part"), std::string::npos) << what;
    for (const char* wrong : {"rank 0 did not", "rank 1 did not", "rank 2 did not"})
      EXPECT_EQ(what.find(wrong), std::string::npos) << what;
  }
}

TEST(HierarchicalFailures, KilledRankIsNamedByItsJobRank) {
  Config config;
  config.timeout = std::chrono::milliseconds(5000);
  const auto errors = runCollectClouds({"A0", "B0", "A1", "B1"}, config,
                                       [](Communicator& comm, transport::InProcessWorld& world) {
                                         if (comm.rank() == 3) {
                                           world.kill(3);
                                           return;
                                         }
                                         std::vector<float> data(1 << 16, 1.0f);
                                         comm.allreduce(view(std::span(data)), ReduceOp::sum);
                                       });
  for (int r : {0, 1, 2}) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr) << "rank " << r;
    const std::string what = whatOf(errors[static_cast<std::size_t>(r)]);
    EXPECT_NE(what.find("rank 3"), std::string::npos) << what;
    EXPECT_EQ(what.find("rank 1 died"), std::string::npos) << what;
    // Each survivor signs with its own job rank, not its place inside a level.
    EXPECT_NE(what.find("[rank " + std::to_string(r) + ","), std::string::npos)
        << "rank " << r << ": " << what;
  }
}

// CollectiveOptions::observer: a pipelined call reports the cloud's stages from its helper
// threads (1 reduces, 2 gathers) and the WAN's from the caller, each slice's; a codec at
// both levels adds encode and decode at both, with the codec's name and encoded bytes
// under its full precision ones. Phases arrive from three threads at once (TSan watches).
TEST(HierarchicalPipelined, ObserverSeesEveryLevelAndCodec) {
  struct Recorder final : CollectiveObserver {
    std::mutex mutex;
    std::vector<std::tuple<std::string, std::string, std::string, int, std::size_t, std::size_t>>
        phases;  // name, level, codec, thread, bytes, encoded
    void phase(const CollectivePhase& p) noexcept override {
      std::lock_guard lock(mutex);
      EXPECT_LE(p.begin, p.end);
      phases.emplace_back(p.name, p.level, p.codec, p.thread, p.bytes, p.encoded);
    }
    std::size_t count(const std::string& name, const std::string& level, int thread) {
      std::lock_guard lock(mutex);
      return static_cast<std::size_t>(std::count_if(phases.begin(), phases.end(), [&](auto& e) {
        return std::get<0>(e) == name && std::get<1>(e) == level && std::get<3>(e) == thread;
      }));
    }
  };
  Config costs = Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "0"}});
  const std::size_t count = (std::size_t{8} << 20) / 4;  // 2 slices of kMinSliceBytes
  std::vector<topology::RankRecord> records;
  for (const char* w : kLayouts[0].where)
    records.push_back({std::string("n") + w, std::string(1, w[0]), ""});
  auto topo = std::make_shared<const Topology>(std::move(records), topology::CostModel(costs));
  runRanks(topo, testConfig(AllreduceAlgorithm::hierarchical), [&](Communicator& comm) {
    Recorder plain;
    std::vector<float> grad(count, 1.0f);
    CollectiveOptions options;
    options.observer = &plain;
    comm.allreduce(view(std::span(grad)), ReduceOp::sum, options);
    EXPECT_EQ(plain.count("cloud reduce-scatter", "cloud", 1), 2u);
    EXPECT_EQ(plain.count("cross-cloud allreduce", "cross-cloud", 0), 2u);
    EXPECT_EQ(plain.count("cloud allgather", "cloud", 2), 2u);
    EXPECT_EQ(plain.phases.size(), 6u);

    Recorder coded;
    options.observer = &coded;
    options.compression = "int8";
    options.compressionLevels = CompressionLevels{true, true};
    comm.allreduce(view(std::span(grad)), ReduceOp::sum, options);
    for (const char* what : {"encode", "decode"}) {
      EXPECT_GE(coded.count(what, "cloud", 1), 2u) << what;  // the reduce-scatter's
      EXPECT_GE(coded.count(what, "cloud", 2), 2u) << what;  // the allgather's
      EXPECT_GE(coded.count(what, "cross-cloud", 0), 2u) << what;
    }
    for (const auto& [name, level, codec, thread, bytes, encoded] : coded.phases) {
      if (name != "encode" && name != "decode") continue;
      EXPECT_EQ(codec.rfind("int8", 0), 0u) << name << ": " << codec;  // the full spec
      EXPECT_GT(bytes, 0u) << name << " at " << level;
      EXPECT_LT(encoded, bytes) << name << " at " << level;
    }
  });
}

}  // namespace
}  // namespace skyring
