// Communicator::allreduce of several buffers as one: in place on the node channel (slots
// and pipelined paths, pieces split differently on every rank, empty pieces, a rank that
// passes one buffer beside ranks that pass many) and through one joined copy without it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "common/exact_data.h"
#include "common/local_world.h"

namespace skyring {
namespace {

using testing::expectedResult;
using testing::LocalWorld;
using testing::makeInput;

// Slots up to 64 bytes, the pipelined path above through a 2 KiB ring of 256-byte chunks
// (blocks reused within a call); no single copy, which pieces never take.
Config smallStages() {
  Config c = LocalWorld::defaultConfig();
  c.shmChunkBytes = 256;
  c.shmSlotBytes = 64;
  c.shmSingleCopyBytes = 0;
  return c;
}

// data cut into pieces at random points (seeded by rank and call), some of them empty;
// split == 1 gives one piece.
std::vector<BufferView> cut(std::vector<std::byte>& data, DType dtype, unsigned seed, int split) {
  const std::size_t count = data.size() / dtypeSize(dtype);
  std::vector<std::size_t> points{0, count};
  std::mt19937 rng(seed);
  for (int i = 1; i < split; ++i)
    points.push_back(count == 0 ? 0 : rng() % (count + 1));
  std::sort(points.begin(), points.end());
  std::vector<BufferView> pieces;
  for (std::size_t i = 0; i + 1 < points.size(); ++i) {
    pieces.push_back({data.data() + points[i] * dtypeSize(dtype), points[i + 1] - points[i], dtype,
                      MemoryKind::host});
  }
  return pieces;
}

void expectPiecesExact(Communicator& comm, int callsOfOneBuffer) {
  const std::size_t counts[] = {0, 1, 5, 16, 17, 100, 333, 1029, 4099};
  int call = 0;
  for (DType d : {DType::f32, DType::i32, DType::f64}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::avg}) {
      for (std::size_t count : counts) {
        ++call;
        auto data = makeInput(op, d, comm.rank(), count);
        // Rank 0 passes one buffer every callsOfOneBuffer-th call: the split may differ.
        const bool whole = callsOfOneBuffer > 0 && comm.rank() == 0 && call % callsOfOneBuffer == 0;
        const auto pieces =
            cut(data, d, static_cast<unsigned>(call * 31 + comm.rank()), whole ? 1 : 1 + call % 9);
        comm.allreduce(pieces, op);
        ASSERT_TRUE(data == expectedResult(op, d, comm.size(), count))
            << "rank " << comm.rank() << " " << dtypeName(d) << " " << reduceOpName(op) << " x"
            << count << " in " << pieces.size() << " pieces";
      }
    }
  }
}

class AllreducePieces : public ::testing::TestWithParam<int> {};

TEST_P(AllreducePieces, InPlaceOnTheNodeChannel) {
  LocalWorld world(GetParam(), smallStages());
  world.shareMemory(1024);
  world.run([&](Communicator& comm) {
    EXPECT_EQ(comm.allreducesInPlace(4096), comm.size() > 1);
    CollectiveOptions compressed;
    compressed.compression = "int8";
    EXPECT_FALSE(comm.allreducesInPlace(4096, compressed));
    expectPiecesExact(comm, 0);
    // An empty piece with no memory at all (a zero-element tensor) between two others.
    auto a = makeInput(ReduceOp::sum, DType::f32, comm.rank(), 10);
    auto b = makeInput(ReduceOp::sum, DType::f32, comm.rank(), 30, 10);
    const BufferView pieces[] = {testing::viewOf(a, DType::f32),
                                 {nullptr, 0, DType::f32, MemoryKind::host},
                                 testing::viewOf(b, DType::f32)};
    comm.allreduce(pieces, ReduceOp::sum);
    EXPECT_TRUE(a == expectedResult(ReduceOp::sum, DType::f32, comm.size(), 10));
    EXPECT_TRUE(b == expectedResult(ReduceOp::sum, DType::f32, comm.size(), 30, 10));
  });
}

TEST_P(AllreducePieces, OneBufferBesidePieces) {
  LocalWorld world(GetParam(), smallStages());
  world.shareMemory(1024);
  world.run([&](Communicator& comm) { expectPiecesExact(comm, 3); });
}

TEST_P(AllreducePieces, JoinedCopyWithoutSharedMemory) {
  LocalWorld world(GetParam());
  world.run([&](Communicator& comm) {
    EXPECT_FALSE(comm.allreducesInPlace(4096));
    expectPiecesExact(comm, 4);
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, AllreducePieces, ::testing::Values(1, 2, 3, 4));

TEST(AllreducePiecesArgs, MixedDTypesAreRefused) {
  LocalWorld world(1);
  world.run([&](Communicator& comm) {
    float f = 1;
    double g = 2;
    const BufferView pieces[] = {{&f, 1, DType::f32, MemoryKind::host},
                                 {&g, 1, DType::f64, MemoryKind::host}};
    EXPECT_THROW(comm.allreduce(pieces, ReduceOp::sum), InvalidArgument);
    EXPECT_THROW(comm.allreduce(std::span<const BufferView>{}, ReduceOp::sum), InvalidArgument);
  });
}

}  // namespace
}  // namespace skyring
