// The engine with N ranks as threads of one process (LocalWorld): every rank runs its own
// Engine over its own Communicator, as processes would.
#include "skyring/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/cloud_world.h"
#include "common/exact_data.h"
#include "common/local_world.h"
#include "engine/engine_test_util.h"
#include "skyring/error.h"

namespace skyring {
namespace {

using testing::expectedResult;
using testing::finish;
using testing::LocalWorld;
using testing::makeInput;

// One named tensor of a test step: what every rank submits under that name.
struct Spec {
  std::string name;
  DType dtype;
  ReduceOp op;
  std::size_t count;
};

std::vector<Spec> manySpecs(int names) {
  const DType dtypes[] = {DType::f32, DType::i32, DType::f64, DType::bf16, DType::i64};
  const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::sum, ReduceOp::max, ReduceOp::min,
                          ReduceOp::avg};
  const std::size_t counts[] = {1, 7, 0, 31, 128, 3, 1000, 64};
  std::vector<Spec> out;
  for (int i = 0; i < names; ++i) {
    const auto u = static_cast<std::size_t>(i);
    out.push_back({"grad." + std::to_string(i), dtypes[u % 5], ops[(u / 5) % 5], counts[u % 8]});
  }
  return out;
}

// Every rank submits every spec (in its own shuffled order, from seed and its rank), waits,
// and checks each result bit for bit. Runs `steps` times: the second step finds every
// name in the response cache.
void runSteps(int n, const std::vector<Spec>& specs, int steps, Config config, unsigned seed = 1,
              bool stagger = false) {
  LocalWorld world(n, config);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::mt19937 rng(seed * 1000 + static_cast<unsigned>(comm.rank()));
    for (int step = 0; step < steps; ++step) {
      std::vector<std::size_t> order(specs.size());
      for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<std::vector<std::byte>> data(specs.size());
      std::vector<Handle> handles(specs.size());
      for (std::size_t i : order) {
        const Spec& s = specs[i];
        data[i] = makeInput(s.op, s.dtype, comm.rank(), s.count, i);
        // Staggered: pauses of up to a few cycles, so submissions spread over many cycles
        // and ranks see each other's names at different times.
        if (stagger && rng() % 16 == 0) {
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
        }
        handles[i] =
            engine.allreduceAsync(s.name, {testing::viewOf(data[i], s.dtype), {}, nullptr}, {s.op});
      }
      for (std::size_t i = 0; i < specs.size(); ++i) {
        const Spec& s = specs[i];
        finish(handles[i]);
        ASSERT_EQ(data[i], expectedResult(s.op, s.dtype, n, s.count, i))
            << s.name << " on rank " << comm.rank() << " step " << step;
      }
    }
  });
}

class EngineSizes : public ::testing::TestWithParam<int> {};

TEST_P(EngineSizes, RandomOrdersBitExact) {
  runSteps(GetParam(), manySpecs(300), 2, LocalWorld::defaultConfig());
}

TEST_P(EngineSizes, SmallFusionThreshold) {
  // 512 bytes: most names fuse with a few others, the 1000-element ones run alone.
  Config c = LocalWorld::defaultConfig();
  c.fusionThreshold = 512;
  runSteps(GetParam(), manySpecs(60), 1, c, 2);
}

TEST_P(EngineSizes, StaggeredSubmissions) {
  runSteps(GetParam(), manySpecs(200), 2, LocalWorld::defaultConfig(), 4, true);
}

INSTANTIATE_TEST_SUITE_P(Ranks, EngineSizes, ::testing::Values(1, 2, 3, 5, 8));

TEST(Engine, ThousandsOfNames) {
  runSteps(4, manySpecs(3000), 2, LocalWorld::defaultConfig(), 5, true);
}

// Across two clouds the fused buffers run hierarchically (the communicator's choice), and
// SKYRING_COMPRESSION does not touch them: compression belongs to tensors that ask for it,
// so f32 sums still come back bit for bit.
TEST(Engine, TwoCloudsHierarchicalUncompressed) {
  Config c = LocalWorld::defaultConfig();
  c.compression = "topk:0.1";
  const auto specs = manySpecs(50);
  testing::runCloudRanks(
      testing::topologyOf({"A1", "A1", "B1", "B2", "B2"}), c, [&](Communicator& comm) {
        Engine engine(comm);
        std::vector<std::vector<std::byte>> data(specs.size());
        std::vector<Handle> handles;
        for (std::size_t i = 0; i < specs.size(); ++i) {
          const Spec& s = specs[i];
          data[i] = makeInput(s.op, s.dtype, comm.rank(), s.count, i);
          handles.push_back(engine.allreduceAsync(
              s.name, {testing::viewOf(data[i], s.dtype), {}, nullptr}, {s.op}));
        }
        for (std::size_t i = 0; i < specs.size(); ++i) {
          const Spec& s = specs[i];
          finish(handles[i]);
          ASSERT_EQ(data[i], expectedResult(s.op, s.dtype, 5, s.count, i)) << s.name;
        }
      });
}

TEST(Engine, NoFusion) {
  Config c = LocalWorld::defaultConfig();
  c.fusionThreshold = 0;
  runSteps(3, manySpecs(40), 1, c, 3);
}

TEST(Engine, ScalesBeforeAndAfter) {
  LocalWorld world(3);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> a(10, static_cast<float>(comm.rank() + 1));  // sum 6
    std::vector<double> b(3, 4.0);                                  // sum 12
    auto ha = engine.allreduceAsync("a", Tensor::of(a), {ReduceOp::sum, 2.0, 0.25});
    auto hb = engine.allreduceAsync("b", Tensor::of(b), {ReduceOp::sum, 0.5, 1.0});
    finish(ha);
    finish(hb);
    EXPECT_EQ(a, std::vector<float>(10, 3.0f));
    EXPECT_EQ(b, std::vector<double>(3, 6.0));
  });
}

// Rank 2 submits "bad" with another shape: every rank's handle fails naming the name and
// the ranks, and the engine goes on with the names that agree.
TEST(Engine, MismatchedShapeFailsOnEveryRank) {
  LocalWorld world(3);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> bad(comm.rank() == 2 ? 5 : 4, 1.0f);
    std::vector<float> good(8, 1.0f);
    auto hb = engine.allreduceAsync("bad", Tensor::of(bad));
    auto hg = engine.allreduceAsync("good", Tensor::of(good));
    try {
      hb.wait();
      ADD_FAILURE() << "rank " << comm.rank() << ": a mismatched name completed";
    } catch (const TransportError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("'bad'"), std::string::npos) << what;
      EXPECT_NE(what.find("ranks 0,1 f32[4] sum"), std::string::npos) << what;
      EXPECT_NE(what.find("rank 2 f32[5] sum"), std::string::npos) << what;
    }
    finish(hg);
    EXPECT_EQ(good, std::vector<float>(8, 3.0f));
  });
}

// The same name, cached from the first step, comes back with another dtype on one rank:
// the rank that misses the cache announces it, the others announce theirs too, and all
// fail rather than wait for each other.
TEST(Engine, MismatchAfterCachingFailsOnEveryRank) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> w(4, 1.0f);
    finish(engine.allreduceAsync("w", Tensor::of(w)));
    std::vector<float> f(4, 1.0f);
    std::vector<double> d(4, 1.0);
    auto h = comm.rank() == 0 ? engine.allreduceAsync("w", Tensor::of(f))
                              : engine.allreduceAsync("w", Tensor::of(d));
    EXPECT_THROW(h.wait(), TransportError);
    // The name is usable again once both agree.
    finish(engine.allreduceAsync("w", Tensor::of(w)));
    EXPECT_EQ(w, std::vector<float>(4, 4.0f));
  });
}

TEST(Engine, LargerThanThresholdAndZeroElements) {
  Config c = LocalWorld::defaultConfig();
  c.fusionThreshold = 1024;
  LocalWorld world(3, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    auto big = makeInput(ReduceOp::sum, DType::f32, comm.rank(), 100000);
    auto small = makeInput(ReduceOp::sum, DType::f32, comm.rank(), 10, 7);
    std::vector<float> empty;
    auto h0 = engine.allreduceAsync("empty", Tensor::of(empty));
    auto h1 = engine.allreduceAsync("big", {testing::viewOf(big, DType::f32), {}, nullptr});
    auto h2 = engine.allreduceAsync("small", {testing::viewOf(small, DType::f32), {}, nullptr});
    finish(h0);
    finish(h1);
    finish(h2);
    EXPECT_EQ(big, expectedResult(ReduceOp::sum, DType::f32, 3, 100000));
    EXPECT_EQ(small, expectedResult(ReduceOp::sum, DType::f32, 3, 10, 7));
  });
}

// A rank that dies while the engines run (InProcessWorld::kill, as a broken connection):
// every other rank's pending handles fail with an error instead of waiting, later
// submissions fail at once, and shutdown returns.
TEST(Engine, DeadRankFailsPendingHandles) {
  LocalWorld world(3);
  world.runCollect([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> x(1000, 1.0f);
    finish(engine.allreduceAsync("before", Tensor::of(x)));
    if (comm.rank() == 2) {
      world.world().kill(2);
      return;
    }
    // Rank 2 never submits this: only its death can end the wait.
    auto h = engine.allreduceAsync("after", Tensor::of(x));
    ASSERT_TRUE(h.waitFor(std::chrono::seconds(30)));
    EXPECT_THROW(h.wait(), Error);
    EXPECT_THROW(engine.allreduceAsync("later", Tensor::of(x)).wait(), Error);
  });
}

TEST(Engine, KeepAliveHeldUntilDone) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    auto owned = std::make_shared<std::vector<std::int32_t>>(5, 2);
    Tensor t{view(std::span(*owned)), {5}, owned};
    std::weak_ptr<std::vector<std::int32_t>> watch = owned;
    auto h = engine.allreduceAsync("owned", std::move(t));
    const std::vector<std::int32_t>* raw = owned.get();
    owned.reset();
    finish(h);
    EXPECT_TRUE(watch.expired());  // released once done
    (void)raw;
  });
}

TEST(Engine, RejectsWhatCanNeverWork) {
  LocalWorld world(1);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<std::int32_t> ints(4, 1);
    std::vector<float> f(4, 1.0f);
    EXPECT_THROW(engine.allreduceAsync("", Tensor::of(f)), InvalidArgument);
    EXPECT_THROW(engine.allreduceAsync("i", Tensor::of(ints), {ReduceOp::sum, 2.0, 1.0}),
                 InvalidArgument);
    EXPECT_THROW(engine.allreduceAsync("s", {view(std::span(f)), {3}, nullptr}), InvalidArgument);
    Tensor device = Tensor::of(f);
    device.buffer.memory = MemoryKind::cuda;
    EXPECT_THROW(engine.allreduceAsync("d", device), InvalidArgument);
    // A second submission of a pending name is refused; after it completes it is allowed.
    // (World of one: it may complete at any time, so only the refusal while pending is
    // checked when the first handle has not finished.)
    auto h = engine.allreduceAsync("f", Tensor::of(f));
    try {
      auto again = engine.allreduceAsync("f", Tensor::of(f));
      EXPECT_TRUE(h.poll());  // accepted only because the first was done
      again.wait();
    } catch (const InvalidArgument&) {
    }
    finish(h);
  });
}

// Names only one rank submitted fail with Aborted on that rank when it shuts down; the
// other ranks are not left waiting; later submissions fail at once.
TEST(Engine, ShutdownFailsWhatIsStillPending) {
  LocalWorld world(3);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> x(4, 1.0f);
    Handle lonely;
    if (comm.rank() == 1) lonely = engine.allreduceAsync("only-on-1", Tensor::of(x));
    std::vector<float> y(4, 1.0f);
    finish(engine.allreduceAsync("y", Tensor::of(y)));
    engine.shutdown();
    if (comm.rank() == 1) {
      EXPECT_THROW(lonely.wait(), Aborted);
    }
    EXPECT_THROW(engine.allreduceAsync("late", Tensor::of(y)).wait(), Aborted);
  });
}

// A rank that never shuts down its engine: the others' shutdown is bounded by
// SKYRING_INIT_TIMEOUT_MS (as Runtime's goodbye), and every engine stops with Timeout
// naming that rank.
TEST(Engine, ShutdownBoundedByInitTimeout) {
  Config c = LocalWorld::defaultConfig();
  c.initTimeout = std::chrono::milliseconds(300);
  LocalWorld world(3, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> x(4, 1.0f);
    finish(engine.allreduceAsync("x", Tensor::of(x)));
    if (comm.rank() != 1) {
      const auto begin = std::chrono::steady_clock::now();
      engine.shutdown();
      EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(10));
    }
    try {
      auto h = engine.allreduceAsync("late", Tensor::of(x));
      ASSERT_TRUE(h.waitFor(std::chrono::seconds(30)));
      h.wait();
      ADD_FAILURE() << "rank " << comm.rank() << ": submitted after the engines stopped";
    } catch (const Timeout& e) {
      EXPECT_NE(std::string(e.what()).find("rank(s) 1 did not shut down"), std::string::npos)
          << e.what();
    } catch (const Aborted& e) {
      // Ranks 0 and 2 asked to shut down themselves: a late submission there is Aborted or
      // the engine's Timeout, whichever the engine recorded first.
      EXPECT_NE(comm.rank(), 1) << e.what();
    }
  });
}

// No rank leaves the barrier before every rank has entered it (rank r enters after r * 30
// ms), barriers repeat, and the reserved name cannot be used directly.
TEST(Engine, Barrier) {
  LocalWorld world(4);
  std::atomic<int> entered{0};
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    for (int round = 1; round <= 3; ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(comm.rank() * 30));
      entered.fetch_add(1);
      engine.barrier();
      EXPECT_GE(entered.load(), 4 * round);
      engine.barrier();  // nobody enters the next round before everyone checked this one
    }
    std::vector<float> x(1);
    EXPECT_THROW(engine.allreduceAsync("__skyring.mine", Tensor::of(x)), InvalidArgument);
  });
}

// Submissions from several framework threads of one rank at once.
TEST(Engine, ConcurrentSubmitters) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<std::thread> threads;
    std::vector<std::vector<std::int64_t>> data(4, std::vector<std::int64_t>(16, comm.rank() + 1));
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        engine
            .allreduceAsync("t" + std::to_string(t), Tensor::of(data[static_cast<std::size_t>(t)]))
            .wait();
      });
    }
    for (auto& t : threads)
      t.join();
    for (const auto& d : data)
      EXPECT_EQ(d, std::vector<std::int64_t>(16, 3));
  });
}

}  // namespace
}  // namespace skyring
