#include <gtest/gtest.h>

#include <set>

#include "collectives/ring.h"
#include "collectives/tags.h"

namespace skyring::collectives {
namespace {

TEST(Partition, CoversCountWithBalancedContiguousBlocks) {
  for (int parts : {1, 2, 3, 5, 8, 11}) {
    for (std::size_t count : {0u, 1u, 2u, 7u, 10u, 97u, 1000u}) {
      const Partition p{count, parts};
      std::size_t next = 0, smallest = count, largest = 0;
      for (int i = 0; i < parts; ++i) {
        EXPECT_EQ(p.offset(i), next);
        next += p.size(i);
        smallest = std::min(smallest, p.size(i));
        largest = std::max(largest, p.size(i));
      }
      EXPECT_EQ(next, count);
      EXPECT_LE(largest - smallest, 1u);
      EXPECT_EQ(p.size(0), largest);
    }
  }
}

// Simulates the reduce-scatter schedule: each rank must reduce every segment but one
// exactly once, what it sends at step s is what it reduced at step s-1, and segment r
// ends on rank r with all contributions.
TEST(Ring, ReduceScatterScheduleEndsWithOwnSegment) {
  for (int n : {2, 3, 5, 8, 11}) {
    std::vector<std::vector<std::set<int>>> have(n, std::vector<std::set<int>>(n));
    for (int r = 0; r < n; ++r) {
      for (int s = 0; s < n; ++s)
        have[r][s] = {r};
    }
    for (int step = 0; step < n - 1; ++step) {
      auto next = have;
      for (int r = 0; r < n; ++r) {
        const Ring ring{r, n};
        const int seg = ring.reduceScatterSendSegment(step);
        const Ring receiver{ring.next(), n};
        ASSERT_EQ(receiver.reduceScatterRecvSegment(step), seg);
        if (step > 0) {
          EXPECT_EQ(seg, ring.reduceScatterRecvSegment(step - 1));
        }
        next[ring.next()][seg].insert(have[r][seg].begin(), have[r][seg].end());
      }
      have = next;
    }
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(have[r][r].size(), static_cast<std::size_t>(n)) << r;
  }
}

TEST(Ring, AllgatherScheduleDeliversEverySegment) {
  for (int n : {2, 3, 5, 8, 11}) {
    std::vector<std::set<int>> have(n);
    for (int r = 0; r < n; ++r)
      have[r] = {r};
    for (int step = 0; step < n - 1; ++step) {
      auto next = have;
      for (int r = 0; r < n; ++r) {
        const Ring ring{r, n};
        const int seg = ring.allgatherSendSegment(step);
        ASSERT_TRUE(have[r].contains(seg)) << "rank " << r << " sends what it lacks";
        ASSERT_EQ((Ring{ring.next(), n}).allgatherRecvSegment(step), seg);
        next[ring.next()].insert(seg);
      }
      have = next;
    }
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(have[r].size(), static_cast<std::size_t>(n));
  }
}

TEST(Chunking, CoversCount) {
  const Chunking c{10, 4};
  EXPECT_EQ(c.chunks(), 3u);
  EXPECT_EQ(c.size(2), 2u);
  EXPECT_EQ((Chunking{0, 4}).chunks(), 0u);
  EXPECT_EQ(chainPosition(1, 3, 5), 3);
}

TEST(Tags, FieldsDoNotCollide) {
  std::set<transport::Tag> seen;
  for (auto op : {Opcode::control, Opcode::allreduce, Opcode::broadcast}) {
    for (std::uint32_t user : {0u, 1u, kMaxUserTag}) {
      for (std::uint32_t seq : {0u, 1u, 0x1ffffu}) {
        for (std::uint32_t step : {0u, 1u, 0x3fffu}) {
          const bool control = op == Opcode::control;
          const auto sig = control ? 0 : signatureBits(DType::f32, ReduceOp::sum);
          EXPECT_TRUE(seen.insert(makeTag(control, op, sig, user, seq, step)).second);
        }
      }
    }
  }
  EXPECT_NE(signatureBits(DType::f32, ReduceOp::sum), signatureBits(DType::i32, ReduceOp::sum));
  EXPECT_NE(signatureBits(DType::f32, ReduceOp::sum), signatureBits(DType::f32, ReduceOp::max));
}

// A group names itself only where no inner group did, so nested groups keep their ids.
TEST(Tags, InnermostGroupNamesTheMessage) {
  const transport::Tag t = makeTag(false, Opcode::allreduce, 3, 7, 9, 2);
  const transport::Tag inner = tags::nameIfUnnamed(t, tags::kLevel, 2);
  EXPECT_EQ(tags::kLevel.get(inner), 2u);
  EXPECT_EQ(tags::nameIfUnnamed(inner, tags::kLevel, 1), inner);
  const transport::Tag both = tags::nameIfUnnamed(inner, tags::kContext, 5);
  EXPECT_EQ(tags::kContext.get(both), 5u);
  EXPECT_EQ(tags::kLevel.get(both), 2u);
  EXPECT_EQ(both & ~(tags::kLevel.mask() | tags::kContext.mask()), t);
}

TEST(ChunkElems, NeverLongerThanTheCallNorShorterThanOne) {
  EXPECT_EQ(chunkElems(std::size_t{1} << 28, 4, 1024), 1024u);
  EXPECT_EQ(chunkElems(4096, 4, 1u << 20), 1024u);
  EXPECT_EQ(chunkElems(2, 4, 1000), 1u);
  EXPECT_EQ(chunkElems(4096, 4, 0), 1u);
}

}  // namespace
}  // namespace skyring::collectives
