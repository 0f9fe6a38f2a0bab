// A rank that never arrives, dies, or calls something else: every other rank throws an
// error that names it, within the timeout, and nobody hangs.
#include <gtest/gtest.h>

#include <chrono>

#include "common/exact_data.h"
#include "common/local_world.h"

namespace skyring {
namespace {

using Clock = std::chrono::steady_clock;
using testing::LocalWorld;
using testing::viewOf;

Config shortTimeout(int ms) {
  Config c = LocalWorld::defaultConfig();
  c.timeout = std::chrono::milliseconds(ms);
  return c;
}

template <typename E>
void expectAllThrow(const std::vector<std::exception_ptr>& errors, int except,
                    const std::string& needle) {
  for (std::size_t r = 0; r < errors.size(); ++r) {
    if (static_cast<int>(r) == except) continue;
    ASSERT_TRUE(errors[r] != nullptr) << "rank " << r << " did not fail";
    try {
      std::rethrow_exception(errors[r]);
    } catch (const E& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "rank " << r << ": " << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << r << " threw the wrong type: " << e.what();
    }
  }
}

class Failures : public ::testing::TestWithParam<int> {};

TEST_P(Failures, AbsentRankIsNamedWithinTimeout) {
  const int n = GetParam();
  const int absent = n / 2;
  constexpr int kTimeoutMs = 600;
  LocalWorld world(n, shortTimeout(kTimeoutMs));
  const auto start = Clock::now();
  auto errors = world.runCollect([&](Communicator& comm) {
    if (comm.rank() == absent) {
      // Arrives long after everyone else has given up, and must fail, not hang.
      std::this_thread::sleep_for(std::chrono::milliseconds(2 * kTimeoutMs));
    }
    std::vector<float> data(1000, 1.0f);
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
  });
  const auto elapsed = Clock::now() - start;
  expectAllThrow<Timeout>(errors, absent, "rank " + std::to_string(absent) + " did not take part");
  EXPECT_TRUE(errors[absent] != nullptr) << "the late rank must fail too";
  EXPECT_LT(elapsed, std::chrono::milliseconds(2 * kTimeoutMs + 2000));
}

TEST_P(Failures, KilledRankIsNamed) {
  const int n = GetParam();
  const int victim = n - 1;
  LocalWorld world(n, shortTimeout(5000));
  const auto start = Clock::now();
  auto errors = world.runCollect([&](Communicator& comm) {
    if (comm.rank() == victim) {
      world.world().kill(victim);
      return;
    }
    std::vector<float> data(4096, 1.0f);
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
  });
  // A broken connection is reported at once, long before the timeout.
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(4000));
  expectAllThrow<TransportError>(errors, victim, "rank " + std::to_string(victim));
}

TEST_P(Failures, MismatchedDtypeIsReported) {
  const int n = GetParam();
  LocalWorld world(n, shortTimeout(500));
  auto errors = world.runCollect([&](Communicator& comm) {
    std::vector<std::byte> data(400);
    const DType d = comm.rank() == 1 ? DType::i32 : DType::f32;
    comm.allreduce(viewOf(data, d), ReduceOp::sum);
  });
  expectAllThrow<TransportError>(errors, -1, "disagree");
}

TEST_P(Failures, MismatchedCountIsReported) {
  const int n = GetParam();
  LocalWorld world(n, shortTimeout(500));
  auto errors = world.runCollect([&](Communicator& comm) {
    std::vector<float> data(comm.rank() == 0 ? 1001 : 1000);
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
  });
  expectAllThrow<TransportError>(errors, -1, "");
  for (auto& e : errors) {
    try {
      std::rethrow_exception(e);
    } catch (const Error& err) {
      const std::string what = err.what();
      EXPECT_TRUE(what.find("disagree") != std::string::npos) << what;
    }
  }
}

TEST_P(Failures, GroupStaysAbortedAfterFailure) {
  const int n = GetParam();
  LocalWorld world(n, shortTimeout(400));
  auto errors = world.runCollect([&](Communicator& comm) {
    std::vector<float> data(10);
    if (comm.rank() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(800));
    } else {
      EXPECT_THROW(comm.allreduce(view(std::span(data)), ReduceOp::sum), Timeout);
    }
    // Later calls fail at once rather than waiting again.
    const auto start = Clock::now();
    EXPECT_THROW(comm.barrier(), Error);
    EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(100));
  });
  for (auto& e : errors)
    EXPECT_TRUE(e == nullptr);
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Failures, ::testing::Values(2, 3, 5, 8),
                         [](const auto& info) { return "n" + std::to_string(info.param); });

TEST(CommunicatorArguments, AreChecked) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    std::vector<float> a(8), b(9);
    std::vector<std::int32_t> c(8);
    EXPECT_THROW(comm.allreduce(view(std::span(a)), view(std::span(b)), ReduceOp::sum),
                 InvalidArgument);
    EXPECT_THROW(comm.allreduce(view(std::span(a)), view(std::span(c)), ReduceOp::sum),
                 InvalidArgument);
    BufferView partial = view(std::span(a));
    EXPECT_THROW(comm.allreduce(partial.slice(0, 4), partial.slice(2, 4), ReduceOp::sum),
                 InvalidArgument);
    EXPECT_THROW(comm.reduceScatter(view(std::span(b)), view(std::span(a)), ReduceOp::sum),
                 InvalidArgument);
    EXPECT_THROW(comm.allgather(view(std::span(a)), view(std::span(b))), InvalidArgument);
    EXPECT_THROW(comm.broadcast(view(std::span(a)), 2), InvalidArgument);
    BufferView device = view(std::span(a));
    device.memory = MemoryKind::cuda;
    EXPECT_THROW(comm.allreduce(device, ReduceOp::sum), InvalidArgument);
    CollectiveOptions badTag;
    badTag.tag = 1u << 20;
    EXPECT_THROW(comm.barrier(badTag), InvalidArgument);
    // Argument errors are local: the group is still usable afterwards.
    comm.allreduce(view(std::span(a)), ReduceOp::sum);
  });
}

}  // namespace
}  // namespace skyring
