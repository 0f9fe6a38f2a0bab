// The engine's operations beyond allreduce (broadcast, allgather), its stall inspector and
// its timeline, with N ranks as threads of one process (LocalWorld).
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/cloud_world.h"
#include "common/local_world.h"
#include "engine/engine_test_util.h"
#include "skyring/engine.h"
#include "skyring/error.h"

namespace skyring {
namespace {

using testing::finish;
using testing::LocalWorld;

// Broadcasts from every root, fused with each other per root and run beside allreduces.
TEST(Engine, BroadcastFromEveryRoot) {
  constexpr int n = 4;
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<std::vector<std::int32_t>> data;
    std::vector<Handle> handles;
    for (int i = 0; i < 12; ++i) {
      data.emplace_back(static_cast<std::size_t>(i * 3), comm.rank() * 100 + i);
    }
    std::vector<float> sum(5, 1.0f);
    auto hs = engine.allreduceAsync("sum", Tensor::of(sum));
    for (int i = 11; i >= 0; --i) {
      handles.push_back(engine.broadcastAsync(
          "b" + std::to_string(i), Tensor::of(data[static_cast<std::size_t>(i)]), i % n));
    }
    for (auto& h : handles)
      finish(h);
    finish(hs);
    for (int i = 0; i < 12; ++i) {
      EXPECT_EQ(data[static_cast<std::size_t>(i)],
                std::vector<std::int32_t>(static_cast<std::size_t>(i * 3), (i % n) * 100 + i))
          << "b" << i << " on rank " << comm.rank();
    }
    EXPECT_EQ(sum, std::vector<float>(5, 4.0f));
  });
}

TEST(Engine, BroadcastRootsMustAgree) {
  LocalWorld world(3);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> x(4, 1.0f);
    EXPECT_THROW(engine.broadcastAsync("x", Tensor::of(x), 3), InvalidArgument);
    auto h = engine.broadcastAsync("x", Tensor::of(x), comm.rank() == 0 ? 1 : 0);
    try {
      h.wait();
      ADD_FAILURE() << "broadcast with different roots completed";
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 f32[4] broadcast from 1"), std::string::npos)
          << e.what();
    }
  });
}

// A name that rank 1 never submits: after SKYRING_STALL_SHUTDOWN_S every rank's engine
// stops, the handles fail with Timeout naming the name and the missing rank, and later
// submissions fail alike.
TEST(Engine, StallShutdownNamesTheMissingRank) {
  Config c = LocalWorld::defaultConfig();
  c.stallWarning = std::chrono::milliseconds(50);
  c.stallShutdown = std::chrono::milliseconds(200);
  LocalWorld world(3, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> x(4, 1.0f);
    finish(engine.allreduceAsync("fine", Tensor::of(x)));
    // Ranks 0 and 2 submit "lonely", rank 1 "only-on-1": both stall, and every rank's
    // handle fails with the same verdict.
    auto h = engine.allreduceAsync(comm.rank() == 1 ? "only-on-1" : "lonely", Tensor::of(x));
    ASSERT_TRUE(h.waitFor(std::chrono::seconds(30)));
    try {
      h.wait();
      ADD_FAILURE() << "rank " << comm.rank() << ": a stalled name completed";
    } catch (const Timeout& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("'lonely'"), std::string::npos) << what;
      EXPECT_NE(what.find("submitted by ranks 0,2, missing on rank 1"), std::string::npos) << what;
      EXPECT_NE(what.find("'only-on-1'"), std::string::npos) << what;
      EXPECT_NE(what.find("submitted by rank 1, missing on ranks 0,2"), std::string::npos) << what;
    }
    EXPECT_THROW(engine.allreduceAsync("later", Tensor::of(x)).wait(), Timeout);
  });
}

// With no stall shutdown, a name submitted late on one rank (after the warning) still
// completes: the inspector only warns.
TEST(Engine, StallWarningOnlyWarns) {
  Config c = LocalWorld::defaultConfig();
  c.stallWarning = std::chrono::milliseconds(20);
  LocalWorld world(2, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> x(4, 1.0f);
    if (comm.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(150));
    finish(engine.allreduceAsync("slow", Tensor::of(x)));
    EXPECT_EQ(x, std::vector<float>(4, 2.0f));
  });
}

std::string readFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// SKYRING_TIMELINE with {rank}: every rank writes its own trace, a complete JSON array with
// each tensor's lane, negotiation and collective and the batch's copies; a second trace
// started while running holds only what came after.
TEST(Engine, TimelinePerRankStartedAndStopped) {
  const auto dir =
      std::filesystem::temp_directory_path() /
      ("skyring-timeline-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
       "-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  Config c = LocalWorld::defaultConfig();
  c.timeline = (dir / "trace-{rank}.json").string();
  LocalWorld world(2, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<std::vector<float>> x(3, std::vector<float>(8, 1.0f));
    // The engine wakes on the first submission, so under load one step's three tensors may
    // run in two cycles: ten steps make one fused batch of all three all but certain.
    for (int step = 0; step < 10; ++step) {
      std::vector<Handle> hs;
      for (int i = 0; i < 3; ++i)
        hs.push_back(engine.allreduceAsync("w\"" + std::to_string(i),
                                           Tensor::of(x[static_cast<std::size_t>(i)])));
      for (auto& h : hs)
        finish(h);
    }
    engine.stopTimeline();
    const auto second = dir / ("second-" + std::to_string(comm.rank()) + ".json");
    engine.startTimeline(second.string());
    finish(engine.allreduceAsync("after", Tensor::of(x[0])));
    engine.stopTimeline();
    engine.stopTimeline();  // nothing to do

    const std::string trace = readFile(dir / ("trace-" + std::to_string(comm.rank()) + ".json"));
    EXPECT_EQ(trace.rfind("[\n", 0), 0u) << trace;
    EXPECT_EQ(trace.substr(trace.size() - 3), "\n]\n") << trace;
    for (const char* want : {"\"args\":{\"name\":\"w\\\"0\"}", "\"cat\":\"negotiation\"",
                             "\"name\":\"copy in\"", "\"name\":\"copy out\"",
                             "\"name\":\"allreduce\",\"cat\":\"collective\"", "\"tensors\":3"}) {
      EXPECT_NE(trace.find(want), std::string::npos) << want << " missing from " << trace;
    }
    EXPECT_EQ(trace.find("after"), std::string::npos);
    const std::string later = readFile(second);
    EXPECT_NE(later.find("\"args\":{\"name\":\"after\"}"), std::string::npos) << later;
    EXPECT_EQ(later.find("w\\\"0"), std::string::npos) << later;
  });
  std::filesystem::remove_all(dir);
}

// With EngineOptions::linkBytes, every collective adds a "bytes sent" counter event per link
// class (Perfetto draws one track per name).
TEST(Engine, TimelineCountsBytesPerLinkClass) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("skyring-counters-" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    std::atomic<std::uint64_t> calls{0};
    EngineOptions options;
    options.linkBytes = [&] {
      const std::uint64_t k = ++calls;
      return std::array<std::uint64_t, 4>{0, 10 * k, 20 * k, 30 * k};
    };
    Engine engine(comm, options);
    const auto path = dir / ("trace-" + std::to_string(comm.rank()) + ".json");
    engine.startTimeline(path.string());
    std::vector<float> x(8, 1.0f);
    finish(engine.allreduceAsync("w", Tensor::of(x)));
    engine.stopTimeline();
    const std::string trace = readFile(path);
    EXPECT_NE(trace.find("\"name\":\"bytes sent\",\"ph\":\"C\""), std::string::npos) << trace;
    EXPECT_NE(trace.find("\"intra_node\":10,\"intra_cloud\":20,\"cross_cloud\":30"),
              std::string::npos)
        << trace;
  });
  std::filesystem::remove_all(dir);
}

// Two clouds of one node each (2 + 2 ranks), the engine on the communicator's primary tag:
// both tensors take the node level (shared memory inside the node, the cross-cloud level
// between the nodes; no cloud ring, each cloud being one node), the one that asks for int8
// with the codec across clouds. Each level's phase and each encode and decode is a span
// nested in the batch's allreduce on the engine's lane, with its level and bytes (and the
// codec's full spec, "int8:block=256", and its encoded bytes).
TEST(Engine, TimelineShowsLevelsAndCodec) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("skyring-levels-" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  Config c = LocalWorld::defaultConfig();
  c.timeline = (dir / "trace-{rank}.json").string();
  testing::runCloudRanks(
      testing::topologyOf({"A1", "A1", "B1", "B1"}), c,
      [&](Communicator& comm) {
        EngineOptions options;
        options.tag = 0;  // the primary tag: the node level applies
        Engine engine(comm, options);
        std::vector<float> plain(4096, 1.0f);
        std::vector<float> grad(4096, 0.5f);
        AllreduceSpec int8;
        int8.compression = "int8";
        auto hp = engine.allreduceAsync("plain", Tensor::of(plain));
        auto hg = engine.allreduceAsync("grad", Tensor::of(grad), int8);
        finish(hp);
        finish(hg);
        EXPECT_EQ(plain, std::vector<float>(4096, 4.0f));
        engine.stopTimeline();
        const std::string trace =
            readFile(dir / ("trace-" + std::to_string(comm.rank()) + ".json"));
        ASSERT_EQ(trace.substr(trace.size() - 3), "\n]\n") << trace;
        for (const char* want :
             {"\"name\":\"node reduce-scatter\",\"cat\":\"level\"",
              "\"name\":\"node allgather\",\"cat\":\"level\"",
              "\"name\":\"cross-cloud allreduce\",\"cat\":\"level\"",
              "\"level\":\"node\",\"bytes\":", "\"level\":\"cross-cloud\",\"bytes\":",
              "\"name\":\"encode\",\"cat\":\"codec\"", "\"name\":\"decode\",\"cat\":\"codec\"",
              "\"codec\":\"int8"}) {
          EXPECT_NE(trace.find(want), std::string::npos) << want << " missing from " << trace;
        }
        // Phases on the engine thread nest in its collective, on lane 0.
        const auto at = trace.find("\"name\":\"cross-cloud allreduce\"");
        ASSERT_NE(at, std::string::npos);
        EXPECT_NE(trace.substr(at, trace.find('}', at) - at).find("\"tid\":0,"), std::string::npos)
            << trace;
      },
      nullptr, std::size_t{1} << 16);
  std::filesystem::remove_all(dir);
}

// A large allreduce across clouds with no WAN latency in the cost model is pipelined: the
// cloud's reduce-scatter and allgather run on the call's helper threads, whose spans go to
// lanes of their own ("collective helper 1" and "2") while the cross-cloud stage stays on
// the engine's lane 0.
TEST(Engine, TimelineGivesPipelineHelpersLanes) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("skyring-helpers-" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  Config c = LocalWorld::defaultConfig();
  c.timeline = (dir / "trace-{rank}.json").string();
  const Config costs = Config::fromMap({{"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "0"}});
  std::vector<topology::RankRecord> records;
  for (const char* w : {"A0", "A1", "B0", "B1"})
    records.push_back({std::string("n") + w, std::string(1, w[0]), ""});
  testing::runCloudRanks(
      std::make_shared<const topology::Topology>(std::move(records), topology::CostModel(costs)), c,
      [&](Communicator& comm) {
        Engine engine(comm);
        std::vector<float> x((std::size_t{8} << 20) / sizeof(float), 1.0f);  // 2 slices
        finish(engine.allreduceAsync("big", Tensor::of(x)));
        EXPECT_EQ(x.front(), 4.0f);
        EXPECT_EQ(x.back(), 4.0f);
        engine.stopTimeline();
        const std::string trace =
            readFile(dir / ("trace-" + std::to_string(comm.rank()) + ".json"));
        ASSERT_EQ(trace.substr(trace.size() - 3), "\n]\n") << trace;
        for (const char* helper : {"collective helper 1", "collective helper 2"})
          EXPECT_NE(trace.find(std::string("\"args\":{\"name\":\"") + helper + "\"}"),
                    std::string::npos)
              << helper << " missing from " << trace;
        const auto at = trace.find("\"name\":\"cloud reduce-scatter\"");
        ASSERT_NE(at, std::string::npos) << trace;
        EXPECT_EQ(trace.substr(at, trace.find('}', at) - at).find("\"tid\":0,"), std::string::npos)
            << trace;
      });
  std::filesystem::remove_all(dir);
}

// A timeline that cannot be written is a warning, not a failed engine.
TEST(Engine, UnwritableTimelineOnlyWarns) {
  Config c = LocalWorld::defaultConfig();
  c.timeline = "/nonexistent-dir/trace.json";
  LocalWorld world(2, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    EXPECT_THROW(engine.startTimeline("/nonexistent-dir/x.json"), InvalidArgument);
    std::vector<float> x(3, 1.0f);
    finish(engine.allreduceAsync("x", Tensor::of(x)));
    EXPECT_EQ(x, std::vector<float>(3, 2.0f));
  });
}

// An allocator that keeps what it allocates, for allgather tests.
struct Gathered {
  std::shared_ptr<std::vector<std::int32_t>> rows;
  std::int64_t firstDim = -1;
  Engine::Allocator allocator(std::size_t rowElems) {
    return [this, rowElems](std::int64_t total) {
      firstDim = total;
      rows =
          std::make_shared<std::vector<std::int32_t>>(static_cast<std::size_t>(total) * rowElems);
      return Tensor{view(std::span(*rows)), {}, rows};
    };
  }
};

// Rank r gathers r + step + 1 rows of 3 (step 0 and 1, so the first dimension changes
// between submissions of a name), several names in a different order on every rank,
// beside allreduces; every rank gets every rank's rows in rank order.
TEST(Engine, AllgatherFirstDimensionDiffers) {
  for (int n : {1, 3, 5}) {
    LocalWorld world(n);
    world.run([&](Communicator& comm) {
      Engine engine(comm);
      std::mt19937 rng(static_cast<unsigned>(comm.rank()) + 7u);
      for (int step = 0; step < 2; ++step) {
        constexpr int kNames = 6;
        std::vector<std::vector<std::int32_t>> in(kNames);
        std::vector<Gathered> out(kNames);
        std::vector<Handle> hs(kNames);
        std::vector<float> sum(4, 1.0f);
        std::vector<int> order = {0, 1, 2, 3, 4, 5};
        std::shuffle(order.begin(), order.end(), rng);
        auto hsum = engine.allreduceAsync("sum", Tensor::of(sum));
        for (int k : order) {
          const auto u = static_cast<std::size_t>(k);
          const int rows = comm.rank() + step + 1;
          for (int i = 0; i < rows * 3; ++i)
            in[u].push_back(comm.rank() * 1000 + k * 100 + i);
          hs[u] = engine.allgatherAsync("g" + std::to_string(k),
                                        {view(std::span(in[u])), {rows, 3}, nullptr},
                                        out[u].allocator(3));
        }
        finish(hsum);
        EXPECT_EQ(sum, std::vector<float>(4, static_cast<float>(n)));
        for (int k = 0; k < kNames; ++k) {
          const auto u = static_cast<std::size_t>(k);
          finish(hs[u]);
          std::vector<std::int32_t> want;
          for (int r = 0; r < n; ++r) {
            for (int i = 0; i < (r + step + 1) * 3; ++i)
              want.push_back(r * 1000 + k * 100 + i);
          }
          ASSERT_TRUE(out[u].rows);
          EXPECT_EQ(*out[u].rows, want) << "g" << k << " step " << step;
        }
      }
    });
  }
}

TEST(Engine, AllgatherMismatchAndAllocatorFailure) {
  LocalWorld world(3);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    // Rows of 2 on rank 1, of 3 elsewhere: every rank fails naming the shapes.
    std::vector<std::int32_t> x(6, comm.rank());
    Gathered g;
    const std::int64_t cols = comm.rank() == 1 ? 2 : 3;
    auto h = engine.allgatherAsync("x", {view(std::span(x)), {6 / cols, cols}, nullptr},
                                   g.allocator(static_cast<std::size_t>(cols)));
    try {
      h.wait();
      ADD_FAILURE() << "rank " << comm.rank() << ": mismatched rows completed";
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1 i32[3,2] allgather"), std::string::npos)
          << e.what();
    }
    // An allocator that throws on rank 0 fails rank 0's handle only.
    std::vector<std::int32_t> y(2, comm.rank());
    Gathered ok;
    auto h2 =
        engine.allgatherAsync("y", Tensor::of(y),
                              comm.rank() == 0 ? Engine::Allocator([](std::int64_t) -> Tensor {
                                throw InvalidArgument("no memory for you");
                              })
                                               : ok.allocator(1));
    if (comm.rank() == 0) {
      EXPECT_THROW(h2.wait(), InvalidArgument);
    } else {
      finish(h2);
      EXPECT_EQ(*ok.rows, (std::vector<std::int32_t>{0, 0, 1, 1, 2, 2}));
    }
    // Zero rows everywhere: the allocator is asked for zero rows.
    std::vector<std::int32_t> none;
    Gathered empty;
    finish(engine.allgatherAsync("none", {view(std::span(none)), {0, 4}, nullptr},
                                 empty.allocator(4)));
    EXPECT_EQ(empty.firstDim, 0);
  });
}

}  // namespace
}  // namespace skyring
