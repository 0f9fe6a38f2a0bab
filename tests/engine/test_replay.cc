// Replay (engine/replay.h): the plan on its own, then engines of N ranks (threads of one
// process) that reach steady state and leave it in every way a training program can.
#include "engine/replay.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/exact_data.h"
#include "common/local_world.h"
#include "engine/engine_test_util.h"
#include "skyring/engine.h"

namespace skyring {
namespace {

using engine::Descriptor;
using engine::ResponseCache;
using engine::StepRecorder;
using testing::expectedResult;
using testing::finish;
using testing::LocalWorld;
using testing::makeInput;

TEST(StepRecorder, TwoStepsOfTheSameSetReplayInTheLatestOrder) {
  StepRecorder r;
  for (std::uint32_t s : {0u, 1u, 2u}) {
    r.ran(s, true);
    EXPECT_FALSE(r.repeated());  // nothing to compare with yet
  }
  r.endStep();
  r.endStep();  // ending an empty step changes nothing
  r.ran(2, true);
  r.ran(0, true);
  EXPECT_FALSE(r.repeated());  // not the whole step yet
  r.ran(1, true);
  const auto replay = r.repeated();
  ASSERT_TRUE(replay);
  EXPECT_EQ(*replay, (std::vector<std::uint32_t>{2, 0, 1}));
  EXPECT_FALSE(r.repeated());  // the next step has started
}

TEST(StepRecorder, ASlotRunningAgainStartsTheNextStep) {
  // A tight training loop: no idle cycle between steps.
  StepRecorder r;
  r.ran(0, true);
  r.ran(1, true);
  r.ran(0, true);  // step 2 begins
  EXPECT_FALSE(r.repeated());
  r.ran(1, true);
  EXPECT_TRUE(r.repeated());
}

TEST(StepRecorder, DifferentStepsSpoiledStepsAndRepeatsDoNotReplay) {
  StepRecorder r;
  r.ran(0, true);
  r.endStep();
  r.ran(0, true);
  r.ran(1, true);
  EXPECT_FALSE(r.repeated());  // another set
  r.endStep();
  r.ran(0, true);
  r.ran(1, false);  // an allgather, say
  EXPECT_FALSE(r.repeated());
  r.endStep();
  r.ran(0, true);
  r.ran(1, true);
  EXPECT_FALSE(r.repeated());  // the step before was spoiled
  r.endStep();
  r.ran(0, true);
  r.ran(1, true);
  r.spoil();  // a join
  EXPECT_FALSE(r.repeated());
  r.endStep();
  r.ran(3, true);
  r.endStep();
  r.reset();
  r.ran(3, true);
  EXPECT_FALSE(r.repeated());  // reset forgot the step before
  r.endStep();
  r.ran(3, true);
  EXPECT_TRUE(r.repeated());
}

TEST(PlanReplay, FusesUpToTheThresholdAndGivesZeroElementTensorsTheirOwnFlag) {
  ResponseCache cache;
  auto add = [&](const std::string& name, DType dtype, ReduceOp op, std::int64_t count) {
    return cache.insert(Descriptor{name, dtype, op, {count}, engine::Collective::allreduce, 0});
  };
  const auto a = add("a", DType::f32, ReduceOp::sum, 4);         // 16 bytes
  const auto b = add("b", DType::f32, ReduceOp::sum, 4);         // 16
  const auto bar = add("barrier", DType::u8, ReduceOp::sum, 0);  // zero elements
  const auto c = add("c", DType::f32, ReduceOp::sum, 8);         // 32
  const auto d = add("d", DType::f32, ReduceOp::max, 2);         // another op
  const auto e = add("e", DType::f32, ReduceOp::sum, 100);       // larger than the threshold
  const auto plan = engine::planReplay({a, b, bar, c, d, e}, cache, 40);
  ASSERT_EQ(plan.size(), 5u);
  EXPECT_EQ(plan[0].slots, (std::vector<std::uint32_t>{a, b}));
  EXPECT_TRUE(plan[1].slots.empty());
  EXPECT_EQ(plan[1].empty, (std::vector<std::uint32_t>{bar}));
  // After the barrier: e alone (larger than 40 bytes), then c, then d (their own op).
  std::vector<std::vector<std::uint32_t>> rest{plan[2].slots, plan[3].slots, plan[4].slots};
  std::sort(rest.begin(), rest.end());
  std::vector<std::vector<std::uint32_t>> want{{c}, {d}, {e}};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(rest, want);
}

// The flag riding in the data: for every dtype and op it allows, the real reduction over
// 3 ranks says "all had it" exactly when all did.
TEST(ReplayFlag, InBandFlagsReduceExactly) {
  const int n = 3;
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : kAllReduceOps) {
      ASSERT_TRUE(engine::flagInBand(dtype, op, n));
      for (int lacking = -1; lacking < n; ++lacking) {  // -1: every rank has the batch
        LocalWorld world(n);
        world.run([&](Communicator& comm) {
          std::vector<std::byte> cell(dtypeSize(dtype));
          engine::writeFlag(cell.data(), dtype, op, comm.rank() != lacking);
          comm.allreduce(BufferView{cell.data(), 1, dtype, MemoryKind::host}, op);
          EXPECT_EQ(engine::readFlag(cell.data(), dtype, op, n), lacking < 0)
              << dtypeName(dtype) << " op " << static_cast<int>(op) << " lacking " << lacking;
        });
      }
    }
  }
  EXPECT_FALSE(engine::flagInBand(DType::bf16, ReduceOp::sum, 257));
  EXPECT_FALSE(engine::flagInBand(DType::u8, ReduceOp::avg, 256));
  EXPECT_TRUE(engine::flagInBand(DType::u8, ReduceOp::max, 100000));
}

std::string readFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

// A directory for this test's traces, removed at the end.
struct TraceDir {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("skyring-replay-" + std::to_string(::getpid()) + "-" +
       std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  TraceDir() { std::filesystem::create_directories(path); }
  ~TraceDir() { std::filesystem::remove_all(path); }
  std::string pattern() const { return (path / "trace-{rank}.json").string(); }
  std::string of(int rank) const {
    return readFile(path / ("trace-" + std::to_string(rank) + ".json"));
  }
};

struct Spec {
  std::string name;
  DType dtype;
  ReduceOp op;
  std::size_t count;
};

std::vector<Spec> mixedSpecs(int names) {
  const DType dtypes[] = {DType::f32, DType::i32, DType::f64, DType::bf16, DType::i64};
  const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min,
                          ReduceOp::sum};
  const std::size_t counts[] = {1, 7, 0, 31, 128, 3, 1000, 64};
  std::vector<Spec> out;
  for (int i = 0; i < names; ++i) {
    const auto u = static_cast<std::size_t>(i);
    out.push_back({"grad." + std::to_string(i), dtypes[u % 5], ops[(u / 5) % 5], counts[u % 8]});
  }
  return out;
}

// One step: every spec submitted in this rank's own shuffled order (with short pauses when
// stagger), then each result checked bit for bit.
void step(Engine& engine, int rank, int n, const std::vector<Spec>& specs, std::mt19937& rng,
          bool stagger, const std::string& where) {
  std::vector<std::size_t> order(specs.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<std::byte>> data(specs.size());
  std::vector<Handle> handles(specs.size());
  for (std::size_t i : order) {
    const Spec& s = specs[i];
    data[i] = makeInput(s.op, s.dtype, rank, s.count, i);
    if (stagger && rng() % 8 == 0)
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
    handles[i] =
        engine.allreduceAsync(s.name, {testing::viewOf(data[i], s.dtype), {}, nullptr}, {s.op});
  }
  for (std::size_t i = 0; i < specs.size(); ++i) {
    finish(handles[i]);
    ASSERT_EQ(data[i], expectedResult(specs[i].op, specs[i].dtype, n, specs[i].count, i))
        << specs[i].name << " on rank " << rank << ", " << where;
  }
}

class Replay : public ::testing::TestWithParam<int> {};

// Steady steps in a different order on every rank, of every dtype and op, some of zero
// elements: from the third step on they are replayed, bit for bit, and no batch is dropped.
TEST_P(Replay, SteadyStepsReplayBitExact) {
  const int n = GetParam();
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  c.fusionThreshold = 2048;  // several batches per step
  const auto specs = mixedSpecs(60);
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::mt19937 rng(7u + static_cast<unsigned>(comm.rank()));
    for (int s = 0; s < 6; ++s)
      step(engine, comm.rank(), n, specs, rng, s % 2 == 1, "step " + std::to_string(s));
    engine.stopTimeline();
    const std::string trace = dir.of(comm.rank());
    EXPECT_GT(occurrences(trace, "\"replayed batch\""), 0u) << "rank " << comm.rank();
    EXPECT_EQ(occurrences(trace, "(dropped)"), 0u) << "rank " << comm.rank();
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, Replay, ::testing::Values(1, 2, 3, 5));

// The flag as an allreduce of its own beside every batch (bf16 sums over more than 256
// ranks take that path): the same results, and a dropped batch is still dropped everywhere.
TEST(Replay, FlagBesideTheData) {
  const int n = 3;
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  const auto specs = mixedSpecs(30);
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    EngineOptions options;
    options.replayFlagBeside = true;
    Engine engine(comm, options);
    std::mt19937 rng(13u + static_cast<unsigned>(comm.rank()));
    for (int s = 0; s < 5; ++s)
      step(engine, comm.rank(), n, specs, rng, false, "step " + std::to_string(s));
    auto extra = specs;
    extra.push_back({"metric", DType::f32, ReduceOp::sum, 3});
    step(engine, comm.rank(), n, extra, rng, false, "step with a new name");
    engine.stopTimeline();
    const std::string trace = dir.of(comm.rank());
    EXPECT_GT(occurrences(trace, "\"replayed batch\""), 0u);
    EXPECT_GE(occurrences(trace, "(dropped)"), 1u);
  });
}

// Replayed batches of one tensor run out of place (the tensor is the input); with a
// prescale the rank copies it in first. Either way every step's result is exact.
TEST(Replay, SingleTensorBatchesWithAndWithoutScales) {
  const int n = 3;
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  c.fusionThreshold = 64;  // every tensor below is a batch of its own
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const float me = static_cast<float>(comm.rank() + 1);
    for (int s = 0; s < 6; ++s) {
      std::vector<float> plain(100, me), scaled(100, me);
      std::vector<double> avg(50, me);
      auto h1 = engine.allreduceAsync("plain", Tensor::of(plain));
      AllreduceSpec spec;
      spec.prescale = 0.5;
      spec.postscale = 4;
      auto h2 = engine.allreduceAsync("scaled", Tensor::of(scaled), spec);
      auto h3 = engine.allreduceAsync("avg", Tensor::of(avg), {ReduceOp::avg});
      finish(h1);
      finish(h2);
      finish(h3);
      ASSERT_EQ(plain, std::vector<float>(100, 6.0f)) << "step " << s;
      ASSERT_EQ(scaled, std::vector<float>(100, 12.0f)) << "step " << s;
      ASSERT_EQ(avg, std::vector<double>(50, 2.0)) << "step " << s;
    }
    engine.stopTimeline();
    EXPECT_GT(occurrences(dir.of(comm.rank()), "\"replayed batch\""), 0u);
  });
}

// Tensors of at least inPlaceBytes (1 MiB without a topology) run alone and, replayed, in
// place with the flag first: no copy. A step with a new name drops such a batch (the
// tensors untouched, as the flag went first) and every result stays exact.
TEST(Replay, LargeTensorsReplayInPlace) {
  const int n = 3;
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const float me = static_cast<float>(comm.rank() + 1);
    constexpr std::size_t kBig = 300000;  // 1.2 MB of f32
    for (int s = 0; s < 7; ++s) {
      std::vector<float> a(kBig, me), b(kBig, me), metric(4, 1.0f);
      Handle hm;
      if (s == 4) hm = engine.allreduceAsync("metric", Tensor::of(metric));  // a new name
      AllreduceSpec scaled;
      scaled.prescale = 0.5;
      scaled.postscale = 4;
      auto ha = engine.allreduceAsync("a", Tensor::of(a));
      auto hb = engine.allreduceAsync("b", Tensor::of(b), scaled);
      finish(ha);
      finish(hb);
      if (hm.valid()) {
        finish(hm);
        ASSERT_EQ(metric, std::vector<float>(4, 3.0f)) << "step " << s;
      }
      ASSERT_EQ(a, std::vector<float>(kBig, 6.0f)) << "step " << s;
      ASSERT_EQ(b, std::vector<float>(kBig, 12.0f)) << "step " << s;
    }
    engine.stopTimeline();
    const std::string trace = dir.of(comm.rank());
    EXPECT_GT(occurrences(trace, "\"replayed batch (in place)\""), 0u);
    EXPECT_GE(occurrences(trace, "(dropped)"), 1u);
  });
}

// A step that differs from the steady ones on every rank (a new name, then a changed shape)
// drops one replayed batch, runs through negotiation, and every result stays exact; the
// steady steps after it are replayed again.
TEST(Replay, ADifferentStepFallsBackAndReplayResumes) {
  const int n = 3;
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  const auto specs = mixedSpecs(20);
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::mt19937 rng(11u + static_cast<unsigned>(comm.rank()));
    for (int s = 0; s < 4; ++s)
      step(engine, comm.rank(), n, specs, rng, false, "steady step " + std::to_string(s));
    auto extra = specs;
    extra.push_back({"metric.correct", DType::f32, ReduceOp::sum, 10});
    step(engine, comm.rank(), n, extra, rng, false, "step with a new name");
    auto reshaped = specs;
    reshaped[3].count = 17;
    step(engine, comm.rank(), n, reshaped, rng, false, "step with a new shape");
    for (int s = 0; s < 4; ++s)
      step(engine, comm.rank(), n, specs, rng, false, "steady again " + std::to_string(s));
    engine.stopTimeline();
    const std::string trace = dir.of(comm.rank());
    EXPECT_GE(occurrences(trace, "(dropped)"), 1u) << trace.substr(0, 2000);
    // The last steady steps replayed again: a replayed batch after the last dropped one.
    EXPECT_NE(trace.find("\"replayed batch\"", trace.rfind("(dropped)")), std::string::npos);
  });
}

// A caller that waits for one tensor (the loss, averaged like the gradients, so it fuses
// with them) before it submits the rest: replay cannot wait for the batch, so it drops it at
// once rather than after a pause, and stops replaying after a few tries. Every result is
// exact and the steps take no pauses.
TEST(Replay, ACallerWaitingMidBatchCostsNoPause) {
  const int n = 2;
  LocalWorld world(n);
  const auto begin = std::chrono::steady_clock::now();
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const float me = static_cast<float>(comm.rank() + 1);
    for (int s = 0; s < 20; ++s) {
      std::vector<float> loss(1, me);
      finish(engine.allreduceAsync("loss", Tensor::of(loss), {ReduceOp::avg}));
      ASSERT_EQ(loss[0], 1.5f);
      std::vector<std::vector<float>> grads(5, std::vector<float>(16, me));
      std::vector<Handle> hs;
      for (std::size_t g = 0; g < grads.size(); ++g)
        hs.push_back(
            engine.allreduceAsync("g" + std::to_string(g), Tensor::of(grads[g]), {ReduceOp::avg}));
      for (std::size_t g = 0; g < grads.size(); ++g) {
        finish(hs[g]);
        ASSERT_EQ(grads[g], std::vector<float>(16, 1.5f)) << "step " << s;
      }
    }
  });
  // Quiet patience is a second per dropped batch; waiter detection avoids it.
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(5));
}

// A rank that pauses between steps (a longer forward pass) does not make replay drop
// batches: the others wait for it inside the batch.
TEST(Replay, ASlowRankBetweenStepsKeepsReplaying) {
  const int n = 3;
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  const auto specs = mixedSpecs(12);
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::mt19937 rng(3u + static_cast<unsigned>(comm.rank()));
    for (int s = 0; s < 6; ++s) {
      if (comm.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(150));
      step(engine, comm.rank(), n, specs, rng, false, "step " + std::to_string(s));
    }
    engine.stopTimeline();
    const std::string trace = dir.of(comm.rank());
    EXPECT_GT(occurrences(trace, "\"replayed batch\""), 0u);
    EXPECT_EQ(occurrences(trace, "(dropped)"), 0u);
  });
}

// Uneven data while replaying: rank r runs 4 + (n - 1 - r) steady steps, then joins. A
// rank's join drops the batch it would have replayed; the others go on negotiating with
// the joined ranks' zeros, as without replay.
TEST(Replay, JoinWhileReplaying) {
  const int n = 3;
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const int me = comm.rank();
    const int steps = 4 + (n - 1 - me);
    for (int s = 0; s < steps; ++s) {
      const int active = s < 4 ? n : n - (s - 3);  // ranks with more than s steps
      const float want = static_cast<float>(active * (active + 1) / 2);
      std::vector<float> a(8, static_cast<float>(me + 1));
      std::vector<float> b(3, static_cast<float>(me + 1));
      auto ha = engine.allreduceAsync("a", Tensor::of(a));
      auto hb = engine.allreduceAsync("b", Tensor::of(b));
      finish(ha);
      finish(hb);
      ASSERT_EQ(a, std::vector<float>(8, want)) << "rank " << me << " step " << s;
      ASSERT_EQ(b, std::vector<float>(3, want)) << "rank " << me << " step " << s;
    }
    EXPECT_EQ(engine.join(), 0) << "rank " << me;
  });
}

// Shutting down while replaying: every rank's engine stops at once (no patience waited).
TEST(Replay, ShutdownWhileReplayingIsPrompt) {
  const int n = 3;
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::mt19937 rng(5u + static_cast<unsigned>(comm.rank()));
    const auto specs = mixedSpecs(8);
    for (int s = 0; s < 4; ++s)
      step(engine, comm.rank(), n, specs, rng, false, "step " + std::to_string(s));
    const auto begin = std::chrono::steady_clock::now();
    engine.shutdown();
    EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(2));
  });
}

// SKYRING_ENGINE_REPLAY=0: every step negotiates.
TEST(Replay, OffNegotiatesEveryStep) {
  TraceDir dir;
  Config c = LocalWorld::defaultConfig();
  c.timeline = dir.pattern();
  c.engineReplay = false;
  const auto specs = mixedSpecs(10);
  LocalWorld world(2, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::mt19937 rng(1u + static_cast<unsigned>(comm.rank()));
    for (int s = 0; s < 5; ++s)
      step(engine, comm.rank(), 2, specs, rng, false, "step " + std::to_string(s));
    engine.stopTimeline();
    EXPECT_EQ(occurrences(dir.of(comm.rank()), "replayed"), 0u);
  });
}

// On one node's shared memory every uncompressed batch is reduced where its tensors are
// (Communicator::allreducesInPlace): negotiated batches, replayed ones (the flag first), and
// a step with a new name that drops a replayed batch, whose tensors stay untouched. Every
// dtype and op, zero-element tensors, pre- and postscales; exact at every step.
TEST(Replay, SharedMemoryBatchesRunInPlace) {
  for (const bool replay : {true, false}) {
    const int n = 3;
    TraceDir dir;
    Config c = LocalWorld::defaultConfig();
    c.timeline = dir.pattern();
    c.fusionThreshold = 2048;  // several batches per step
    c.engineReplay = replay;
    const auto specs = mixedSpecs(40);
    LocalWorld world(n, c);
    world.shareMemory(Config{}.shmSlotBytes);
    world.run([&](Communicator& comm) {
      // The engine on the channel's tag (the Runtime gives its engine a communicator whose
      // primary tag is the engine's).
      EngineOptions options;
      options.tag = 0;
      CollectiveOptions onTag;
      onTag.tag = options.tag;
      ASSERT_TRUE(comm.allreducesInPlace(4096, onTag));
      Engine engine(comm, options);
      std::mt19937 rng(5u + static_cast<unsigned>(comm.rank()));
      const float me = static_cast<float>(comm.rank() + 1);
      for (int s = 0; s < 7; ++s) {
        const std::string where =
            std::string(replay ? "replay" : "negotiated") + ", step " + std::to_string(s);
        step(engine, comm.rank(), n, specs, rng, s % 2 == 1, where);
        std::vector<float> a(3000, me), b(5000, me), metric(4, 1.0f);
        Handle hm;
        if (s == 4) hm = engine.allreduceAsync("metric", Tensor::of(metric));  // a new name
        AllreduceSpec scaled;
        scaled.prescale = 0.5;
        scaled.postscale = 4;
        auto ha = engine.allreduceAsync("a", Tensor::of(a));
        auto hb = engine.allreduceAsync("b", Tensor::of(b), scaled);
        finish(ha);
        finish(hb);
        if (hm.valid()) {
          finish(hm);
          ASSERT_EQ(metric, std::vector<float>(4, 3.0f)) << where;
        }
        ASSERT_EQ(a, std::vector<float>(3000, 6.0f)) << where;
        ASSERT_EQ(b, std::vector<float>(5000, 12.0f)) << where;
      }
      engine.stopTimeline();
      const std::string trace = dir.of(comm.rank());
      if (replay) {
        EXPECT_GT(occurrences(trace, "\"replayed batch (in place)\""), 0u);
        EXPECT_GE(occurrences(trace, "(dropped)"), 1u);
      } else {
        EXPECT_GT(occurrences(trace, "\"in_place\":true"), 0u);
        EXPECT_EQ(occurrences(trace, "copy in"), 0u);
      }
    });
  }
}

}  // namespace
}  // namespace skyring
