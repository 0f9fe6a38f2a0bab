// Process sets with N ranks as threads of one process: every rank has its world
// Communicator and Engine and its own ProcessSetTable, as a Runtime would.
#include "runtime/process_sets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/cloud_world.h"
#include "common/exact_data.h"
#include "common/run_ranks.h"
#include "engine/engine_test_util.h"
#include "skyring/error.h"
#include "skyring/inprocess_transport.h"

namespace skyring {
namespace {

using testing::expectedResult;
using testing::finish;
using testing::makeInput;

Config testConfig() {
  Config c;
  c.timeout = std::chrono::milliseconds(20000);
  c.initTimeout = std::chrono::milliseconds(20000);
  return c;
}

// What one rank of the test has: its world, the world's engine, its table of sets.
struct Rank {
  Communicator& world;
  Engine& engine;
  ProcessSetTable& sets;
};

// Runs fn on n ranks at once, each with a world (knowing topo, when given) and a table.
void runWorld(int n, const std::function<void(Rank&)>& fn,
              std::shared_ptr<const topology::Topology> topo = nullptr) {
  transport::InProcessWorld world(n);
  testing::runRanks(n, [&](int r) {
    std::shared_ptr<transport::Transport> t = world.transport(r);
    try {
      Communicator comm(t, testConfig(), nullptr, topo);
      Engine engine(comm);
      ProcessSetTable sets(comm, t, topo);
      Rank rank{comm, engine, sets};
      fn(rank);
    } catch (const std::exception& e) {
      t->abort(ErrorKind::aborted, "rank " + std::to_string(r) + " failed: " + e.what());
      throw;
    }
  });
}

// `names` allreduces of mixed dtypes, ops and counts on engine (numbered by its
// communicator), submitted in an order of this rank's own, each checked bit for bit. salt
// makes each communicator's values its own, so a message that reached the wrong one shows.
void randomAllreduces(Engine& engine, int rank, int size, int names, unsigned seed,
                      std::size_t salt) {
  const DType dtypes[] = {DType::f32, DType::i32, DType::f64, DType::i64};
  const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::max, ReduceOp::min, ReduceOp::avg};
  const std::size_t counts[] = {1, 7, 0, 31, 128, 1000, 3};
  std::mt19937 rng(seed * 1000 + static_cast<unsigned>(rank));
  std::vector<std::size_t> order(static_cast<std::size_t>(names));
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<std::byte>> data(order.size());
  std::vector<Handle> handles(order.size());
  for (std::size_t i : order) {
    const DType dtype = dtypes[i % 4];
    const ReduceOp op = ops[(i / 4) % 4];
    data[i] = makeInput(op, dtype, rank, counts[i % 7], salt + i * 1000);
    handles[i] = engine.allreduceAsync("t." + std::to_string(i),
                                       {testing::viewOf(data[i], dtype), {}, nullptr}, {op});
  }
  for (std::size_t i = 0; i < order.size(); ++i) {
    finish(handles[i]);
    const DType dtype = dtypes[i % 4];
    const ReduceOp op = ops[(i / 4) % 4];
    ASSERT_EQ(data[i], expectedResult(op, dtype, size, counts[i % 7], salt + i * 1000))
        << "t." << i << " with salt " << salt << " on rank " << rank << " of " << size;
  }
}

// Allreduces of `calls` calls straight on comm (tag 0), each checked bit for bit; salt as
// above. Communicators called at once this way run in lockstep, sequence number for
// sequence number, so only their contexts keep their messages apart.
void directAllreduces(Communicator& comm, int calls, std::size_t salt) {
  for (int c = 0; c < calls; ++c) {
    const std::size_t count = 1 + static_cast<std::size_t>(c * 97 % 2003);
    const std::size_t first = salt + static_cast<std::size_t>(c) * 10000;
    auto data = makeInput(ReduceOp::sum, DType::f32, comm.rank(), count, first);
    comm.allreduce(testing::viewOf(data, DType::f32), ReduceOp::sum);
    ASSERT_EQ(data, expectedResult(ReduceOp::sum, DType::f32, comm.size(), count, first))
        << "call " << c << " with salt " << salt << " on rank " << comm.rank();
  }
}

// Two overlapping sets (one numbered out of world order) and the world, each driven from its
// own thread: first random allreduces through their engines under the same names, then
// allreduces straight on their communicators. With two clouds the sets' allreduces run
// hierarchically, their levels inside the sets' contexts.
class OverlappingSets : public ::testing::TestWithParam<bool> {};

TEST_P(OverlappingSets, BesideTheWorld) {
  const auto topo = GetParam() ? testing::topologyOf({"A1", "A1", "A2", "B1", "B1"}) : nullptr;
  runWorld(
      5,
      [&](Rank& r) {
        const ProcessSet a = r.sets.add({0, 1, 2, 3});
        const ProcessSet b = r.sets.add({3, 1, 2, 4});
        EXPECT_EQ(a.id(), 1);
        EXPECT_EQ(b.id(), 2);
        const int me = r.world.rank();
        EXPECT_EQ(b.included(), me != 0);
        if (me == 3) {
          EXPECT_EQ(b.rank(), 0);
        }
        for (int round = 0; round < 3; ++round) {
          std::vector<std::thread> threads;
          std::vector<std::exception_ptr> errors(3);
          const auto drive = [&](std::size_t slot, Engine& e, Communicator& comm) {
            threads.emplace_back([&, slot] {
              try {
                randomAllreduces(e, comm.rank(), comm.size(), 150, 7 + static_cast<unsigned>(round),
                                 slot * 1000000);
                directAllreduces(comm, 20, slot * 1000000);
              } catch (...) {
                errors[slot] = std::current_exception();
              }
            });
          };
          drive(0, r.engine, r.world);
          if (a.included()) drive(1, a.engine(), a.communicator());
          if (b.included()) drive(2, b.engine(), b.communicator());
          for (auto& t : threads)
            t.join();
          for (auto& e : errors)
            if (e) std::rethrow_exception(e);
        }
        r.sets.remove(b);
        EXPECT_TRUE(b.removed());
        r.sets.remove(a);
      },
      topo);
}

INSTANTIATE_TEST_SUITE_P(Clouds, OverlappingSets, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "twoClouds" : "flat"; });

// A set of one rank: its collectives are the rank's own; the others are not involved.
TEST(ProcessSets, SetOfOneRank) {
  runWorld(3, [](Rank& r) {
    const ProcessSet solo = r.sets.add({2});
    EXPECT_EQ(solo.size(), 1);
    if (solo.included()) {
      std::vector<float> v = {1, 2, 3};
      finish(solo.engine().allreduceAsync("solo", Tensor::of(v), {ReduceOp::sum}));
      EXPECT_EQ(v, (std::vector<float>{1, 2, 3}));
      std::vector<float> w = {5};
      finish(solo.engine().broadcastAsync("solo.b", Tensor::of(w), 0));
      solo.engine().barrier();
    }
    r.sets.remove(solo);
  });
}

// A rank outside a set gets a handle that says so, and an error naming the set's ranks.
TEST(ProcessSets, NonMemberIsToldSo) {
  runWorld(3, [](Rank& r) {
    const ProcessSet s = r.sets.add({0, 2});
    if (r.world.rank() != 1) {
      EXPECT_TRUE(s.included());
    } else {
      EXPECT_FALSE(s.included());
      EXPECT_EQ(s.rank(), -1);
      EXPECT_EQ(s.ranks(), (std::vector<int>{0, 2}));
      try {
        s.engine();
        ADD_FAILURE() << "a non-member got the set's engine";
      } catch (const InvalidArgument& e) {
        EXPECT_NE(
            std::string(e.what()).find("rank 1 is not a member of process set 1 (ranks {0, 2})"),
            std::string::npos)
            << e.what();
      }
      EXPECT_THROW(s.communicator(), InvalidArgument);
    }
    r.sets.remove(s);
    EXPECT_THROW(s.engine(), InvalidArgument);  // removed, on every rank
    EXPECT_THROW(ProcessSet().engine(), InvalidArgument);
  });
}

// Ranks that ask for different sets, or to remove different ones, fail alike on every rank
// with a message naming those that differ from rank 0; the tables stay in step after it.
TEST(ProcessSets, MismatchesFailOnEveryRank) {
  runWorld(4, [](Rank& r) {
    const int me = r.world.rank();
    try {
      r.sets.add(me == 2 ? std::vector<int>{0, 2} : std::vector<int>{0, 1});
      ADD_FAILURE() << "mismatched creation succeeded on rank " << me;
    } catch (const InvalidArgument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("rank 2 differs from rank 0 (ranks 0, 1, 3: {0, 1}; rank 2: {0, 2})"),
                std::string::npos)
          << what;
    }
    EXPECT_THROW(r.sets.add({1, 1}), InvalidArgument);  // agreed, but invalid everywhere
    EXPECT_THROW(r.sets.add({0, 4}), InvalidArgument);
    EXPECT_THROW(r.sets.add({}), InvalidArgument);

    const ProcessSet x = r.sets.add({0, 1});
    const ProcessSet y = r.sets.add({2, 3});
    EXPECT_EQ(x.id(), 1);
    EXPECT_EQ(y.id(), 2);
    try {
      r.sets.remove(me == 3 ? y : x);
      ADD_FAILURE() << "mismatched removal succeeded on rank " << me;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("rank 3 differs from rank 0"), std::string::npos)
          << e.what();
    }
    r.sets.remove(x);
    const ProcessSet z = r.sets.add({3, 0});  // takes the freed id
    EXPECT_EQ(z.id(), 1);
    if (z.included()) {
      std::vector<std::int32_t> v = {z.rank() + 1};
      finish(z.engine().allreduceAsync("z", Tensor::of(v), {ReduceOp::sum}));
      EXPECT_EQ(v[0], 3);
    }
    EXPECT_THROW(r.sets.remove(x), InvalidArgument);  // no longer live, on every rank
    r.sets.remove(y);
    r.sets.remove(z);
  });
}

}  // namespace
}  // namespace skyring
