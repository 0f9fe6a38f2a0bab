// The engine's grouped allreduce and reducescatter, with N ranks as threads of one process
// (LocalWorld): results bit-exact against a reference computed here, for n = 1, 2, 3, 5,
// and mismatches reported on every rank.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/local_world.h"
#include "engine/engine_test_util.h"
#include "skyring/engine.h"
#include "skyring/error.h"

namespace skyring {
namespace {

using testing::finish;
using testing::LocalWorld;

// What rank r holds at element i of tensor t: small integers, so sums are exact in f32.
float valueOf(int r, int t, std::size_t i) {
  return static_cast<float>((r + 1) * 3 + t * 7 + static_cast<int>(i % 13));
}

class EngineOps : public ::testing::TestWithParam<int> {};

// A group of tensors of different sizes (one of zero elements, one larger than the fusion
// threshold), submitted beside single allreduces of the same dtype, in a different order on
// each rank; every member holds the exact sum, and one handle covers them all.
TEST_P(EngineOps, GroupedAllreduceIsExact) {
  const int n = GetParam();
  Config c = LocalWorld::defaultConfig();
  c.fusionThreshold = 4096;
  LocalWorld world(n, c);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const std::vector<std::size_t> sizes{5, 0, 2000, 17, 1};
    for (int round = 0; round < 3; ++round) {  // the second and third hit the cache
      std::vector<std::vector<float>> data;
      std::vector<Tensor> tensors;
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        data.emplace_back(sizes[t]);
        for (std::size_t i = 0; i < sizes[t]; ++i)
          data.back()[i] = valueOf(comm.rank(), static_cast<int>(t), i);
      }
      for (auto& d : data)
        tensors.push_back(Tensor::of(d));
      std::vector<float> single(7, static_cast<float>(comm.rank()));
      Handle hs;
      Handle hg;
      if (comm.rank() % 2 == 0) {
        hs = engine.allreduceAsync("single", Tensor::of(single));
        hg = engine.groupedAllreduceAsync("group", tensors);
      } else {
        hg = engine.groupedAllreduceAsync("group", tensors);
        hs = engine.allreduceAsync("single", Tensor::of(single));
      }
      finish(hg);
      finish(hs);
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        for (std::size_t i = 0; i < sizes[t]; ++i) {
          float want = 0;
          for (int r = 0; r < n; ++r)
            want += valueOf(r, static_cast<int>(t), i);
          ASSERT_EQ(data[t][i], want) << "member " << t << " element " << i << " rank "
                                      << comm.rank() << " round " << round;
        }
      }
      EXPECT_EQ(single, std::vector<float>(7, static_cast<float>(n * (n - 1) / 2)));
    }
    // max over a group of int32 tensors with shapes.
    std::vector<std::int32_t> a(6, comm.rank() * 10);
    std::vector<std::int32_t> b(3, -comm.rank());
    finish(engine.groupedAllreduceAsync(
        "imax", {Tensor{view(std::span(a)), {2, 3}, nullptr}, Tensor::of(b)}, {ReduceOp::max}));
    EXPECT_EQ(a, std::vector<std::int32_t>(6, (n - 1) * 10));
    EXPECT_EQ(b, std::vector<std::int32_t>(3, 0));
  });
}

// Rows split as Horovod: rows / n each, the first rows % n ranks one more; row counts below
// n (some ranks get none), equal to and above it; sum over f32 and max over i64.
TEST_P(EngineOps, ReducescatterIsExact) {
  const int n = GetParam();
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const std::size_t cols = 3;
    for (std::size_t rows :
         {std::size_t{1}, std::size_t(n), std::size_t(2 * n + 3), std::size_t{0}}) {
      std::vector<float> in(rows * cols);
      for (std::size_t i = 0; i < in.size(); ++i)
        in[i] = valueOf(comm.rank(), 0, i) + static_cast<float>(i);
      auto out = std::make_shared<std::vector<float>>();
      std::int64_t asked = -1;
      auto h = engine.reducescatterAsync(
          "rs", Tensor{view(std::span(in)), {static_cast<std::int64_t>(rows), 3}, nullptr},
          [&](std::int64_t r) {
            asked = r;
            out->resize(static_cast<std::size_t>(r) * cols);
            return Tensor::of(*out);
          });
      finish(h);
      const auto un = static_cast<std::size_t>(n);
      const auto me = static_cast<std::size_t>(comm.rank());
      const std::size_t mine = rows / un + (me < rows % un ? 1 : 0);
      const std::size_t first = me * (rows / un) + std::min(me, rows % un);
      ASSERT_EQ(asked, static_cast<std::int64_t>(mine)) << "rows " << rows;
      for (std::size_t k = 0; k < mine * cols; ++k) {
        const std::size_t i = first * cols + k;
        float want = 0;
        for (int r = 0; r < n; ++r)
          want += valueOf(r, 0, i) + static_cast<float>(i);
        ASSERT_EQ((*out)[k], want) << "rows " << rows << " element " << k << " rank " << me;
      }
    }
    std::vector<std::int64_t> in(static_cast<std::size_t>(n) + 1);
    for (std::size_t i = 0; i < in.size(); ++i)
      in[i] = static_cast<std::int64_t>(i) * 100 + comm.rank();
    std::vector<std::int64_t> out;
    finish(engine.reducescatterAsync("rsmax", Tensor::of(in),
                                     [&](std::int64_t r) {
                                       out.resize(static_cast<std::size_t>(r));
                                       return Tensor::of(out);
                                     },
                                     {ReduceOp::max}));
    const auto me = static_cast<std::size_t>(comm.rank());
    const std::size_t first = me + (me > 0 ? 1 : 0);
    ASSERT_EQ(out.size(), me == 0 ? 2u : 1u);
    for (std::size_t k = 0; k < out.size(); ++k)
      EXPECT_EQ(out[k], static_cast<std::int64_t>(first + k) * 100 + (n - 1));
  });
}

// Rows rank `from` sends rank `to` in round `round`: uneven, zero for some pairs, changing
// from round to round (the name stays cached with any first dimension).
std::int64_t splitOf(int from, int to, int round) {
  return (from * 5 + to * 3 + round) % 4;
}

// Every rank sends every rank its own rows (i64, rows of 2), in a different order of names
// on each rank; the received rows and splits are exact.
TEST_P(EngineOps, AlltoallIsExact) {
  const int n = GetParam();
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const int me = comm.rank();
    for (int round = 0; round < 3; ++round) {
      std::vector<std::int64_t> splits;
      std::vector<std::int64_t> in;
      for (int p = 0; p < n; ++p) {
        splits.push_back(splitOf(me, p, round));
        for (std::int64_t row = 0; row < splits.back(); ++row) {
          for (int col = 0; col < 2; ++col)
            in.push_back(me * 100000 + p * 1000 + row * 10 + col);
        }
      }
      std::vector<std::int64_t> out;
      std::vector<std::int64_t> received;
      std::vector<std::int64_t> even(static_cast<std::size_t>(n) * 2, me);
      std::vector<std::int64_t> evenOut;
      auto alloc = [](std::vector<std::int64_t>& into, std::vector<std::int64_t>* splitsInto) {
        return [&into, splitsInto](std::int64_t rows, const std::vector<std::int64_t>& got) {
          if (splitsInto != nullptr) *splitsInto = got;
          into.resize(static_cast<std::size_t>(rows) * 2);
          return Tensor{view(std::span(into)), {rows, 2}, nullptr};
        };
      };
      const Tensor tin{view(std::span(in)), {static_cast<std::int64_t>(in.size() / 2), 2}, nullptr};
      const Tensor teven{view(std::span(even)), {static_cast<std::int64_t>(n), 2}, nullptr};
      Handle h1;
      Handle h2;
      if (me % 2 == 0) {
        h1 = engine.alltoallAsync("a2a", tin, splits, alloc(out, &received));
        h2 = engine.alltoallAsync("even", teven, {}, alloc(evenOut, nullptr));
      } else {
        h2 = engine.alltoallAsync("even", teven, {}, alloc(evenOut, nullptr));
        h1 = engine.alltoallAsync("a2a", tin, splits, alloc(out, &received));
      }
      finish(h1);
      finish(h2);
      std::vector<std::int64_t> want;
      std::vector<std::int64_t> wantSplits;
      for (int p = 0; p < n; ++p) {
        wantSplits.push_back(splitOf(p, me, round));
        for (std::int64_t row = 0; row < wantSplits.back(); ++row) {
          for (int col = 0; col < 2; ++col)
            want.push_back(p * 100000 + me * 1000 + row * 10 + col);
        }
      }
      EXPECT_EQ(received, wantSplits) << "rank " << me << " round " << round;
      EXPECT_EQ(out, want) << "rank " << me << " round " << round;
      std::vector<std::int64_t> wantEven;
      for (int p = 0; p < n; ++p) {
        wantEven.push_back(p);
        wantEven.push_back(p);
      }
      EXPECT_EQ(evenOut, wantEven) << "rank " << me;
    }
  });
}

// Uneven batches: rank r runs n - r of them, then joins. Each batch allreduces a name seen
// for the first time (announced while some ranks have joined), a cached name with avg, and
// a cached group; a joined rank adds zeros, avg divides by the full n. Rank 0 joins last.
TEST_P(EngineOps, JoinWithUnevenBatches) {
  const int n = GetParam();
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const int me = comm.rank();
    const int batches = n - me;
    for (int b = 0; b < batches; ++b) {
      // Ranks with more than b batches: 0 .. n-b-1; the sum of their (r + 1).
      const int active = n - b;
      const float want = static_cast<float>(active * (active + 1) / 2);
      std::vector<float> fresh(5, static_cast<float>(me + 1));
      std::vector<double> avg(3, static_cast<double>(me + 1) * n);
      std::vector<std::int32_t> g1(2, me + 1);
      std::vector<float> g2(4, static_cast<float>(me + 1));
      std::vector<float> g3(2, static_cast<float>(me + 1));
      auto h1 = engine.allreduceAsync("fresh" + std::to_string(b), Tensor::of(fresh));
      auto h2 = engine.allreduceAsync("avg", Tensor::of(avg), {ReduceOp::avg});
      auto h3 = engine.groupedAllreduceAsync("g1", {Tensor::of(g1)});
      auto h4 = engine.groupedAllreduceAsync("g2", {Tensor::of(g2), Tensor::of(g3)});
      finish(h1);
      finish(h2);
      finish(h3);
      finish(h4);
      EXPECT_EQ(fresh, std::vector<float>(5, want)) << "batch " << b << " rank " << me;
      EXPECT_EQ(g3, std::vector<float>(2, want));
      EXPECT_EQ(avg, std::vector<double>(3, static_cast<double>(want))) << "batch " << b;
      EXPECT_EQ(g1, std::vector<std::int32_t>(2, static_cast<std::int32_t>(want)));
      EXPECT_EQ(g2, std::vector<float>(4, want));
    }
    EXPECT_EQ(engine.join(), 0) << "rank " << me;
    // The engine goes on after everyone joined.
    std::vector<float> x(3, 1.0f);
    finish(engine.allreduceAsync("after", Tensor::of(x)));
    EXPECT_EQ(x, std::vector<float>(3, static_cast<float>(n)));
  });
}

// As Horovod's test_horovod_join_allgather / _broadcast: while a rank has joined, the
// others' allgathers, broadcasts, reducescatters and alltoalls fail at once (join() stands
// in only for allreduces), new names and cached ones alike; the engine goes on, and the
// join completes with the last rank to join. Each rank joins first in turn.
TEST_P(EngineOps, OtherCollectivesFailWhileARankHasJoined) {
  const int n = GetParam();
  if (n == 1) GTEST_SKIP() << "needs a second rank";
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const int me = comm.rank();
    for (int first = 0; first < n; ++first) {
      if (me == first) {
        const int last = engine.join();
        EXPECT_NE(last, first) << "round " << first;
        continue;
      }
      std::vector<float> t(17 * 17, 1.0f);
      std::vector<float> out(17 * 17 * static_cast<std::size_t>(n));
      auto gathered = [&](std::int64_t r) {
        return Tensor{
            view(std::span(out)).slice(0, static_cast<std::size_t>(r) * 17), {r, 17}, nullptr};
      };
      for (const std::string name : {"gather", "gather"}) {  // new, then cached
        Handle h =
            engine.allgatherAsync(name, Tensor{view(std::span(t)), {17, 17}, nullptr}, gathered);
        EXPECT_THROW(h.wait(), InvalidArgument) << "rank " << me << " round " << first;
      }
      Handle b = engine.broadcastAsync("bcast", Tensor::of(t), (first + 1) % n);
      try {
        b.wait();
        ADD_FAILURE() << "broadcast ran while rank " << first << " had joined";
      } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("joined"), std::string::npos) << e.what();
      }
      EXPECT_NE(engine.join(), -1);
    }
    std::vector<float> x(3, 1.0f);
    finish(engine.allreduceAsync("after", Tensor::of(x)));
    EXPECT_EQ(x, std::vector<float>(3, static_cast<float>(n)));
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, EngineOps, ::testing::Values(1, 2, 3, 5));

// A group whose members differ on one rank fails on every rank, naming the ranks.
TEST(EngineOpsMismatch, GroupMismatchFailsOnEveryRank) {
  LocalWorld world(3);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> a(4, 1.0f);
    std::vector<float> b(comm.rank() == 2 ? 6 : 5, 1.0f);
    auto h = engine.groupedAllreduceAsync("g", {Tensor::of(a), Tensor::of(b)});
    try {
      finish(h);
      ADD_FAILURE() << "a mismatched group completed on rank " << comm.rank();
    } catch (const TransportError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("ranks 0,1 group of 2 f32[4][5] sum; rank 2 group of 2 f32[4][6] sum"),
                std::string::npos)
          << what;
    }
    // The engine goes on.
    finish(engine.groupedAllreduceAsync("g", {Tensor::of(a)}));
    EXPECT_EQ(a, std::vector<float>(4, 3.0f));
  });
}

TEST(EngineOpsMismatch, ReducescatterMismatchFailsOnEveryRank) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> a(comm.rank() == 0 ? 4 : 6, 1.0f);
    std::vector<float> out;
    auto h = engine.reducescatterAsync("rs", Tensor::of(a), [&](std::int64_t r) {
      out.resize(static_cast<std::size_t>(r));
      return Tensor::of(out);
    });
    try {
      finish(h);
      ADD_FAILURE() << "a mismatched reducescatter completed on rank " << comm.rank();
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 f32[4] reducescatter sum; rank 1 f32[6]"),
                std::string::npos)
          << e.what();
    }
  });
}

// Row shapes that differ fail on every rank, naming the ranks; bad splits fail at once.
TEST(EngineOpsMismatch, AlltoallMismatchFailsOnEveryRank) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    Engine engine(comm);
    const std::int64_t cols = comm.rank() == 0 ? 2 : 3;
    std::vector<float> a(static_cast<std::size_t>(2 * cols), 1.0f);
    std::vector<float> out;
    auto alloc = [&](std::int64_t rows, const std::vector<std::int64_t>&) {
      out.resize(static_cast<std::size_t>(rows * cols));
      return Tensor::of(out);
    };
    EXPECT_THROW(
        engine.alltoallAsync("bad", Tensor{view(std::span(a)), {2, cols}, nullptr}, {1, 2}, alloc),
        InvalidArgument);
    EXPECT_THROW(
        engine.alltoallAsync("bad", Tensor{view(std::span(a)), {2, cols}, nullptr}, {2}, alloc),
        InvalidArgument);
    auto h = engine.alltoallAsync("a2a", Tensor{view(std::span(a)), {2, cols}, nullptr}, {}, alloc);
    try {
      finish(h);
      ADD_FAILURE() << "a mismatched alltoall completed on rank " << comm.rank();
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 f32[2,2] alltoall; rank 1 f32[2,3] alltoall"),
                std::string::npos)
          << e.what();
    }
  });
}

}  // namespace
}  // namespace skyring
