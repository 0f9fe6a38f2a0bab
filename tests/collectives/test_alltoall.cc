// The pairwise alltoall: its rank arithmetic, and Communicator::alltoall with uneven
// (and empty) blocks over n ranks as threads of one process.
#include <gtest/gtest.h>

#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "collectives/pairwise.h"
#include "common/local_world.h"
#include "skyring/communicator.h"
#include "skyring/error.h"

namespace skyring {
namespace {

using testing::LocalWorld;

TEST(Pairwise, EveryPairMeetsOnceAndStepsMatch) {
  for (int n = 1; n <= 9; ++n) {
    std::set<std::pair<int, int>> sent;
    for (int r = 0; r < n; ++r) {
      for (int s = 1; s < n; ++s) {
        const collectives::Pairwise me{r, n};
        const int to = me.sendPeer(s);
        EXPECT_NE(to, r);
        EXPECT_TRUE(sent.emplace(r, to).second) << "n " << n << " rank " << r << " step " << s;
        // The peer receives from this rank at the same step.
        EXPECT_EQ((collectives::Pairwise{to, n}.recvPeer(s)), r);
      }
    }
    EXPECT_EQ(sent.size(), static_cast<std::size_t>(n * (n - 1)));
  }
}

// How many elements rank `from` sends rank `to`: uneven, zero for some pairs.
std::size_t countOf(int from, int to) {
  return static_cast<std::size_t>((from * 7 + to * 3) % 5);
}

class Alltoall : public ::testing::TestWithParam<int> {};

TEST_P(Alltoall, UnevenBlocksArriveInPlace) {
  const int n = GetParam();
  LocalWorld world(n);
  world.run([&](Communicator& comm) {
    const int me = comm.rank();
    std::vector<std::size_t> sendCounts;
    std::vector<std::size_t> recvCounts;
    std::vector<std::int32_t> in;
    for (int p = 0; p < n; ++p) {
      sendCounts.push_back(countOf(me, p));
      recvCounts.push_back(countOf(p, me));
      for (std::size_t i = 0; i < sendCounts.back(); ++i)
        in.push_back(me * 10000 + p * 100 + static_cast<int>(i));
    }
    std::vector<std::int32_t> out(
        std::accumulate(recvCounts.begin(), recvCounts.end(), std::size_t{0}), -1);
    for (int round = 0; round < 2; ++round) {
      comm.alltoall(view(std::span(in)), sendCounts, view(std::span(out)), recvCounts);
      std::vector<std::int32_t> want;
      for (int p = 0; p < n; ++p) {
        for (std::size_t i = 0; i < countOf(p, me); ++i)
          want.push_back(p * 10000 + me * 100 + static_cast<int>(i));
      }
      EXPECT_EQ(out, want) << "rank " << me;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, Alltoall, ::testing::Values(1, 2, 3, 5));

TEST(AlltoallArgs, CountsMustFitTheBuffers) {
  LocalWorld world(2);
  world.run([&](Communicator& comm) {
    std::vector<float> in(3);
    std::vector<float> out(3);
    const std::vector<std::size_t> counts{1, 1};
    EXPECT_THROW(comm.alltoall(view(std::span(in)), counts, view(std::span(out)), counts),
                 InvalidArgument);
    // The group is intact after a bad argument: every rank sends 1 then 2 elements.
    const std::vector<std::size_t> send{1, 2};
    const std::vector<std::size_t> recv{comm.rank() == 0 ? 1u : 2u, comm.rank() == 0 ? 1u : 2u};
    std::vector<float> out2(recv[0] + recv[1]);
    in.assign(3, static_cast<float>(comm.rank()));
    comm.alltoall(view(std::span(in)), send, view(std::span(out2)), recv);
    const std::vector<float> want =
        comm.rank() == 0 ? std::vector<float>{0, 1} : std::vector<float>{0, 0, 1, 1};
    EXPECT_EQ(out2, want);
  });
}

}  // namespace
}  // namespace skyring
