// Scratch follows the message, whatever the size settings say, and an allocation that
// fails anyway is a named skyring error that ends every rank at once (collectives/scratch.h).
//
// This binary replaces the global operator new, to see the largest single allocation of a
// window and to make allocations of one thread fail on demand; it is its own binary so no
// other test runs under that allocator.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <string>

#include "collectives/scratch.h"
#include "common/exact_data.h"
#include "common/local_world.h"

namespace {

std::atomic<bool> gWatching{false};
std::atomic<std::size_t> gLargest{0};
thread_local std::size_t tFailAbove = 0;  // 0: never fail

}  // namespace

// malloc/free here because this is the allocator every new and delete of the binary uses
// (GCC, inlining these, takes the pairing for a mismatch).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (tFailAbove != 0 && n > tFailAbove) throw std::bad_alloc();
  if (gWatching.load(std::memory_order_relaxed)) {
    std::size_t seen = gLargest.load(std::memory_order_relaxed);
    while (n > seen && !gLargest.compare_exchange_weak(seen, n)) {
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
#pragma GCC diagnostic pop

namespace skyring {
namespace {

using Clock = std::chrono::steady_clock;
using testing::expectedResult;
using testing::LocalWorld;
using testing::makeInput;

BufferView viewOf(std::vector<std::byte>& bytes, std::size_t count) {
  return {bytes.data(), count, DType::f32, MemoryKind::host};
}

// 256 MiB chunks once made every ring call allocate and zero depth x 256 MiB: ten 4 KB
// allreduces took 20 s and 1 GB per rank. Now the scratch of a 4 KB call is about 4 KB.
TEST(Scratch, HugeChunkSettingsCostSmallCallsNothing) {
  Config config = LocalWorld::defaultConfig();
  config.ringChunkBytes = std::size_t{1} << 28;
  config.ringPipelineDepth = 64;
  for (bool node : {false, true}) {
    Config c = config;
    c.shmChunkBytes = std::size_t{1} << 26;
    c.shmSlotBytes = 64;          // 4 KB calls take the pipelined node path, not the slots
    c.shmSingleCopyBytes = 2048;  // and, where the channel can, the single-copy one
    LocalWorld world(4, c);
    if (node) world.shareMemory(std::max(c.shmSlotBytes, c.shmRingBytes / 2));
    constexpr std::size_t kCount = 1024;
    gLargest.store(0);
    gWatching.store(true);
    const auto start = Clock::now();
    world.run([&](Communicator& comm) {
      tFailAbove = std::size_t{16} << 20;  // a regression fails here, not the host's memory
      const auto expected = expectedResult(ReduceOp::sum, DType::f32, comm.size(), kCount);
      for (int i = 0; i < 10; ++i) {
        auto data = makeInput(ReduceOp::sum, DType::f32, comm.rank(), kCount);
        comm.allreduce(viewOf(data, kCount), ReduceOp::sum);
        ASSERT_TRUE(data == expected) << "allreduce " << i << " on rank " << comm.rank();
      }
      auto in = makeInput(ReduceOp::sum, DType::f32, comm.rank(), kCount);
      std::vector<std::byte> out(in.size() / 4);
      comm.reduceScatter(viewOf(in, kCount), viewOf(out, kCount / 4), ReduceOp::sum);
      std::vector<std::byte> all(in.size());
      comm.allgather(viewOf(out, kCount / 4), viewOf(all, kCount));
      comm.broadcast(viewOf(all, kCount), 0);
      tFailAbove = 0;
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    gWatching.store(false);
    EXPECT_LT(gLargest.load(), std::size_t{1} << 20) << (node ? "node" : "ring");
    EXPECT_LT(seconds, 10.0) << (node ? "node" : "ring");
  }
}

// The cap is the message, not less: a call larger than a chunk still pipelines correctly.
TEST(Scratch, HugeChunkSettingsStayExactOnLargeCalls) {
  Config c = LocalWorld::defaultConfig();
  c.ringChunkBytes = std::size_t{1} << 28;
  LocalWorld world(3, c);
  world.run([&](Communicator& comm) {
    for (std::size_t count : {1u, 2u, 100003u}) {
      const auto expected = expectedResult(ReduceOp::sum, DType::f32, comm.size(), count);
      auto data = makeInput(ReduceOp::sum, DType::f32, comm.rank(), count);
      comm.allreduce(viewOf(data, count), ReduceOp::sum);
      ASSERT_TRUE(data == expected) << count;
    }
  });
}

TEST(Scratch, FailedAllocationNamesWhatAndWhy) {
  // The failure is injected (tFailAbove) rather than provoked with a real 2^62-byte
  // request, which the sanitizers' allocators treat as a fatal error.
  tFailAbove = std::size_t{1} << 40;
  try {
    (void)collectives::allocateScratch(std::size_t{1} << 62, ErrorContext{2, -1, "allreduce"},
                                       "ring receive scratch", "SKYRING_RING_CHUNK_BYTES=1");
    tFailAbove = 0;
    ADD_FAILURE() << "2^62 bytes were allocated";
  } catch (const InvalidArgument& e) {
    tFailAbove = 0;
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 2"), std::string::npos) << what;
    EXPECT_NE(what.find("out of memory allocating 4611686018427387904 bytes of ring receive "
                        "scratch (SKYRING_RING_CHUNK_BYTES=1)"),
              std::string::npos)
        << what;
  }
}

// One rank runs out of memory for its ring scratch in the middle of an allreduce: it
// throws the named error, and its peers fail at once with its reason, not at the timeout.
TEST(Scratch, RankOutOfMemoryEndsEveryRankAtOnce) {
  Config c = LocalWorld::defaultConfig();  // 20 s timeout
  c.ringChunkBytes = 64 * 1024;
  c.ringPipelineDepth = 4;  // 256 KiB of scratch per step ring
  LocalWorld world(3, c);
  constexpr std::size_t kCount = 1u << 18;
  std::vector<std::string> messages(3);
  const auto start = Clock::now();
  const auto errors = world.runCollect([&](Communicator& comm) {
    auto data = makeInput(ReduceOp::sum, DType::f32, comm.rank(), kCount);
    if (comm.rank() == 1) tFailAbove = 128 * 1024;
    try {
      comm.allreduce(viewOf(data, kCount), ReduceOp::sum);
    } catch (const Error& e) {
      messages[static_cast<std::size_t>(comm.rank())] = e.what();
    }
    tFailAbove = 0;
  });
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (const auto& e : errors)
    EXPECT_FALSE(e);
  EXPECT_NE(messages[1].find("out of memory allocating 262144 bytes of ring receive scratch"),
            std::string::npos)
      << messages[1];
  EXPECT_NE(messages[1].find("SKYRING_RING_CHUNK_BYTES=65536"), std::string::npos) << messages[1];
  for (int r : {0, 2}) {
    const std::string& m = messages[static_cast<std::size_t>(r)];
    EXPECT_NE(m.find("rank 1"), std::string::npos) << r << ": " << m;
    EXPECT_NE(m.find("out of memory"), std::string::npos) << r << ": " << m;
  }
  EXPECT_LT(seconds, 5.0);
}

}  // namespace
}  // namespace skyring
