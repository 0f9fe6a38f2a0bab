// The process-wide API over a world of one (no launcher variables).
#include <gtest/gtest.h>

#include <vector>

#include "skyring/skyring.h"

namespace skyring {
namespace {

TEST(ProcessApi, InitAllreduceShutdown) {
  EXPECT_FALSE(isInitialized());
  EXPECT_THROW(rank(), InvalidArgument);
  Config config;  // launcher none: a world of one, whatever the environment says
  init(config);
  init(config);  // a second init does nothing
  ASSERT_TRUE(isInitialized());
  EXPECT_EQ(rank(), 0);
  EXPECT_EQ(size(), 1);
  EXPECT_EQ(localRank(), 0);
  EXPECT_EQ(localSize(), 1);
  EXPECT_EQ(crossRank(), 0);
  EXPECT_EQ(crossSize(), 1);
  std::vector<float> g = {1, 2, 3};
  std::vector<std::int32_t> c = {4};
  auto hg = allreduceAsync("g", Tensor::of(g), {ReduceOp::avg, 1, 0.5});
  auto hc = allreduceAsync("c", Tensor::of(c));
  hg.wait();
  hc.wait();
  EXPECT_EQ(g, (std::vector<float>{0.5f, 1, 1.5f}));
  EXPECT_EQ(c, (std::vector<std::int32_t>{4}));
  broadcastAsync("c", Tensor::of(c), 0).wait();
  barrier();
  EXPECT_EQ(c, (std::vector<std::int32_t>{4}));
  shutdown();
  EXPECT_FALSE(isInitialized());
  EXPECT_THROW(allreduceAsync("g", Tensor::of(g)), InvalidArgument);
  shutdown();  // nothing to do
}

}  // namespace
}  // namespace skyring
