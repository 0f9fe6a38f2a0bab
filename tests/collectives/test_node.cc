// The shared-memory node paths (slots and single copy) of allreduce and barrier, with
// ranks as threads sharing one NodeChannel: bit for bit like the ring, and failures named.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "common/allreduce_checks.h"
#include "common/exact_data.h"
#include "common/local_world.h"

namespace skyring {
namespace {

using Clock = std::chrono::steady_clock;
using testing::expectedResult;
using testing::LocalWorld;
using testing::makeInput;
using testing::viewOf;
using testing::where;

const std::size_t kCounts[] = {0, 1, 2, 7, 13, 97, 1029, 20011};

// With tinyChunks() and a channel of kCapacity bytes per slot, calls up to 64 bytes take
// the slots path, up to 512 bytes the pipelined (staged) path through a 2 KiB ring (so
// blocks are reused within a call), larger ones the single-copy path, the last two with
// many chunks of at most 256 bytes and a partial last one.
constexpr std::size_t kCapacity = 1024;
constexpr std::size_t kStageBytes = 512;
Config tinyChunks() {
  Config c = LocalWorld::defaultConfig();
  c.shmChunkBytes = 256;
  c.shmSlotBytes = 64;
  c.shmSingleCopyBytes = kStageBytes + 1;
  return c;
}

class NodeCollectives : public ::testing::TestWithParam<int> {};

TEST_P(NodeCollectives, AllreduceExact) {
  LocalWorld world(GetParam(), tinyChunks());
  world.shareMemory(kCapacity);
  world.run([&](Communicator& comm) { testing::expectAllreduceExact(comm, kCounts); });
}

TEST_P(NodeCollectives, AllreduceDefaultsLargeCount) {
  LocalWorld world(GetParam());
  world.shareMemory(std::max(Config{}.shmSlotBytes, Config{}.shmRingBytes / 2));
  world.run([&](Communicator& comm) {
    for (DType d : {DType::f32, DType::bf16}) {
      const std::size_t count = (1u << 20) + 3;
      const auto expected = expectedResult(ReduceOp::sum, d, comm.size(), count);
      auto data = makeInput(ReduceOp::sum, d, comm.rank(), count);
      comm.allreduce(viewOf(data, d), ReduceOp::sum);
      ASSERT_TRUE(data == expected) << where(comm.rank(), d, ReduceOp::sum, count, "large");
    }
  });
}

// Slot parity is reused every other call: back-to-back small calls (one synchronisation
// each), interleaved with single-copy calls and barriers, must never read a slot a fast
// rank is already overwriting.
TEST_P(NodeCollectives, BackToBackCallsKeepSlotsApart) {
  LocalWorld world(GetParam(), tinyChunks());
  world.shareMemory(kCapacity);
  world.run([&](Communicator& comm) {
    const int n = comm.size();
    for (int i = 0; i < 300; ++i) {
      const std::size_t count = i % 7 == 0 ? 301 : static_cast<std::size_t>(1 + i % 50);
      const auto op = i % 2 ? ReduceOp::sum : ReduceOp::max;
      auto data = makeInput(op, DType::i32, (comm.rank() + i) % n, count);
      comm.allreduce(viewOf(data, DType::i32), op);
      ASSERT_TRUE(data == expectedResult(op, DType::i32, n, count)) << "call " << i;
      if (i % 13 == 0) comm.barrier();
    }
  });
}

TEST_P(NodeCollectives, BarrierSeparatesPhases) {
  LocalWorld world(GetParam());
  world.shareMemory(kCapacity);
  std::atomic<int> arrived{0};
  world.run([&](Communicator& comm) {
    for (int round = 1; round <= 50; ++round) {
      arrived.fetch_add(1);
      comm.barrier();
      ASSERT_GE(arrived.load(), round * comm.size());
      comm.barrier();
    }
  });
}

// Other tags bypass the channel (it runs one call at a time), so they may run
// concurrently with tag 0.
TEST_P(NodeCollectives, OtherTagsRunBesideTagZero) {
  LocalWorld world(GetParam(), tinyChunks());
  world.shareMemory(kCapacity);
  world.run([&](Communicator& comm) {
    const int n = comm.size();
    auto b = makeInput(ReduceOp::max, DType::i32, comm.rank(), 777);
    std::thread other([&] {
      CollectiveOptions opts;
      opts.tag = 7;
      for (int i = 0; i < 5; ++i)
        comm.allreduce(viewOf(b, DType::i32), ReduceOp::max, opts);
    });
    for (int i = 0; i < 5; ++i) {
      auto fresh = makeInput(ReduceOp::sum, DType::f32, comm.rank(), 999);
      comm.allreduce(viewOf(fresh, DType::f32), ReduceOp::sum);
      EXPECT_TRUE(fresh == expectedResult(ReduceOp::sum, DType::f32, n, 999));
    }
    other.join();
    EXPECT_TRUE(b == expectedResult(ReduceOp::max, DType::i32, n, 777));
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, NodeCollectives, ::testing::Values(1, 2, 3, 5, 8),
                         [](const auto& info) { return "n" + std::to_string(info.param); });

Config shortTimeout(int ms) {
  Config c = tinyChunks();
  c.timeout = std::chrono::milliseconds(ms);
  return c;
}

std::string messageOf(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
}

class NodeFailures : public ::testing::TestWithParam<std::size_t> {};

TEST_P(NodeFailures, AbsentRankIsNamedWithinTimeout) {
  constexpr int kTimeoutMs = 500;
  LocalWorld world(3, shortTimeout(kTimeoutMs));
  world.shareMemory(kCapacity);
  const std::size_t count = GetParam();
  const auto start = Clock::now();
  auto errors = world.runCollect([&](Communicator& comm) {
    if (comm.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(3 * kTimeoutMs));
    std::vector<float> data(count, 1.0f);
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
  });
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(3 * kTimeoutMs + 2000));
  for (int r : {0, 2}) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr) << "rank " << r;
    try {
      std::rethrow_exception(errors[static_cast<std::size_t>(r)]);
    } catch (const Timeout& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1 did not arrive"), std::string::npos) << e.what();
    } catch (const Aborted& e) {
      // The other waiting rank may learn it from the first one's abort: it still names 1.
      EXPECT_NE(std::string(e.what()).find("rank 1 did not arrive"), std::string::npos) << e.what();
    }
  }
  ASSERT_TRUE(errors[1] != nullptr) << "the late rank must fail too, not hang";
}

TEST_P(NodeFailures, MismatchedCountIsReported) {
  LocalWorld world(3, shortTimeout(5000));
  world.shareMemory(kCapacity);
  const std::size_t count = GetParam();
  auto errors = world.runCollect([&](Communicator& comm) {
    std::vector<float> data(count + (comm.rank() == 2 ? 1 : 0), 1.0f);
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr) << "rank " << r;
    const std::string what = messageOf(errors[static_cast<std::size_t>(r)]);
    EXPECT_NE(what.find("disagree"), std::string::npos) << what;
    EXPECT_NE(what.find("count=" + std::to_string(count + 1)), std::string::npos) << what;
  }
}

TEST(NodeFailuresMixed, BarrierAgainstAllreduceIsReported) {
  LocalWorld world(2, shortTimeout(5000));
  world.shareMemory(kCapacity);
  auto errors = world.runCollect([&](Communicator& comm) {
    std::vector<float> data(4, 1.0f);
    if (comm.rank() == 0)
      comm.barrier();
    else
      comm.allreduce(view(std::span(data)), ReduceOp::sum);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr);
    EXPECT_NE(messageOf(errors[static_cast<std::size_t>(r)]).find("barrier"), std::string::npos);
  }
}

// A failure seen on the transport (here a mismatched allgather) ends the group on every
// path: the next allreduce and barrier, which would go through shared memory only, fail
// too instead of succeeding without the failed call's ranks noticing.
TEST(NodeFailuresMixed, NothingSucceedsAfterAFailure) {
  LocalWorld world(3, shortTimeout(3000));
  world.shareMemory(kCapacity);
  auto errors = world.runCollect([&](Communicator& comm) {
    std::vector<float> in(comm.rank() == 2 ? 5 : 4, 1.0f);
    std::vector<float> out(in.size() * 3);
    try {
      comm.allgather(view(std::span(in)), view(std::span(out)));
    } catch (const TransportError&) {
      EXPECT_TRUE(comm.failed());
    }
    std::vector<float> data(4, 1.0f);
    EXPECT_THROW(comm.allreduce(view(std::span(data)), ReduceOp::sum), Aborted);
    comm.barrier();
  });
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)] != nullptr) << "rank " << r;
    EXPECT_NE(messageOf(errors[static_cast<std::size_t>(r)]).find("failed earlier"),
              std::string::npos)
        << messageOf(errors[static_cast<std::size_t>(r)]);
  }
}

// Counts of floats for each path: every path names the missing rank and reports mismatches.
INSTANTIATE_TEST_SUITE_P(Paths, NodeFailures,
                         ::testing::Values(std::size_t{10}, std::size_t{100}, std::size_t{5000}),
                         [](const auto& info) {
                           return info.param * 4 <= 64            ? std::string("slots")
                                  : info.param * 4 <= kStageBytes ? std::string("staged")
                                                                  : std::string("single_copy");
                         });

}  // namespace
}  // namespace skyring
