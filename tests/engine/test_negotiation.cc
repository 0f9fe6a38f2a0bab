// The engine's pure pieces: descriptors on the wire, the response cache, announcements and
// their verdicts, and the fusion plan.
#include "engine/negotiation.h"

#include <gtest/gtest.h>

#include "engine/fusion.h"
#include "engine/stall.h"
#include "skyring/error.h"

namespace skyring::engine {
namespace {

TEST(Negotiation, DescriptorsRoundTrip) {
  const std::vector<Descriptor> in = {
      {"a", DType::f32, ReduceOp::sum, {4, 5}},
      {"", DType::i64, ReduceOp::max, {}},
      {"layer.0.weight", DType::bf16, ReduceOp::avg, {0}},
      {"b", DType::u8, ReduceOp::sum, {3}, Collective::broadcast, 7}};
  std::vector<std::byte> bytes;
  for (const auto& d : in)
    appendDescriptor(bytes, d);
  EXPECT_EQ(parseDescriptors(bytes, 1, 0), in);
  bytes.pop_back();
  EXPECT_THROW(parseDescriptors(bytes, 1, 0), TransportError);
  std::vector<std::byte> bad;
  appendDescriptor(bad, in[0]);
  bad[5] = std::byte{200};  // the dtype byte
  EXPECT_THROW(parseDescriptors(bad, 1, 0), TransportError);
}

TEST(Negotiation, CacheSlotsInOrderOfAgreement) {
  ResponseCache cache;
  const Descriptor a{"a", DType::f32, ReduceOp::sum, {4}};
  const Descriptor a5{"a", DType::f32, ReduceOp::sum, {5}};
  EXPECT_FALSE(cache.find(a));
  EXPECT_EQ(cache.insert(a), 0u);
  EXPECT_EQ(cache.insert(a5), 1u);
  EXPECT_EQ(cache.insert(a), 0u);
  EXPECT_EQ(cache.at(1), a5);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(Negotiation, VerdictOnceEveryRankAnnounced) {
  Announcements ann(3);
  const Descriptor x{"x", DType::f32, ReduceOp::sum, {4}};
  const Descriptor y{"y", DType::i32, ReduceOp::min, {2}};
  const Descriptor y3{"y", DType::i32, ReduceOp::min, {3}};
  EXPECT_TRUE(ann.add(0, {x, y}).empty());
  EXPECT_TRUE(ann.contains("x"));
  EXPECT_TRUE(ann.add(2, {y3}).empty());
  const auto v = ann.add(1, {y, x});
  ASSERT_EQ(v.size(), 1u);  // x waits for rank 2
  EXPECT_EQ(v[0].name, "y");
  EXPECT_FALSE(v[0].agreed);
  EXPECT_NE(v[0].error.find("ranks 0,1 i32[2] min; rank 2 i32[3] min"), std::string::npos)
      << v[0].error;
  EXPECT_FALSE(ann.contains("y"));
  EXPECT_TRUE(ann.contains("x"));
}

TEST(Negotiation, AgreedVerdict) {
  Announcements ann(2);
  const Descriptor x{"x", DType::f32, ReduceOp::sum, {4}};
  EXPECT_TRUE(ann.add(1, {x}).empty());
  const auto v = ann.add(0, {x});
  ASSERT_EQ(v.size(), 1u);
  EXPECT_TRUE(v[0].agreed);
  EXPECT_EQ(v[0].descriptor, x);
  EXPECT_FALSE(ann.contains("x"));
}

TEST(Stall, ReportsRoundTripAndNameTheMissing) {
  std::vector<std::byte> bytes;
  appendReport(bytes, {"a", 1500});
  appendReport(bytes, {"b", 20});
  const auto parsed = parseReports(bytes, 0, 1);
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0].name, "a");
  EXPECT_EQ(parsed[0].ageMs, 1500u);
  bytes.pop_back();
  EXPECT_THROW(parseReports(bytes, 0, 1), TransportError);

  const std::vector<std::vector<PendingReport>> reports = {
      {{"a", 1500}, {"b", 20}, {"all", 5000}},
      {{"all", 10}},
      {{"a", 900}, {"all", 10}},
  };
  const auto stalls = findStalls(reports, 100);
  ASSERT_EQ(stalls.size(), 1u);  // "b" is too young, "all" is everywhere
  EXPECT_EQ(stalls[0].name, "a");
  EXPECT_EQ(stalls[0].submitted, (std::vector<int>{0, 2}));
  EXPECT_EQ(stalls[0].missing, (std::vector<int>{1}));
  EXPECT_EQ(describeStalls(stalls),
            "'a' (waiting 1.50 s) submitted by ranks 0,2, missing on rank 1");
  EXPECT_EQ(findStalls(reports, 0).size(), 2u);
  EXPECT_EQ(findStalls(reports, 0)[0].name, "a");  // oldest first
}

TEST(Fusion, PlanGroupsByDtypeAndOpUpToThreshold) {
  const std::vector<FusionItem> items = {
      {DType::f32, ReduceOp::sum, 40},  {DType::f32, ReduceOp::sum, 40},
      {DType::i32, ReduceOp::sum, 40},  {DType::f32, ReduceOp::sum, 40},
      {DType::f32, ReduceOp::sum, 0},   {DType::f32, ReduceOp::sum, 500},
      {DType::f32, ReduceOp::max, 100},
  };
  const auto batches = planFusion(items, 100);
  const std::vector<std::vector<std::size_t>> expected = {{0, 1}, {5}, {3}, {2}, {6}};
  EXPECT_EQ(batches, expected);
  const auto none = planFusion(items, 0);
  EXPECT_EQ(none.size(), 6u);  // every item alone but the empty one
}

// Compressed tensors fuse only with tensors of the same codec, never with uncompressed
// ones (a compressed batch is one compressed allreduce of segments).
TEST(Fusion, CompressedFuseOnlyWithTheirCodec) {
  const std::vector<FusionItem> items = {
      {DType::f32, ReduceOp::sum, 40, -1, "int8"}, {DType::f32, ReduceOp::sum, 40, -1, ""},
      {DType::f32, ReduceOp::sum, 40, -1, "int8"}, {DType::f32, ReduceOp::sum, 40, -1, "fp16"},
      {DType::f32, ReduceOp::sum, 40, -1, ""},
  };
  const std::vector<std::vector<std::size_t>> expected = {{0, 2}, {1, 4}, {3}};
  EXPECT_EQ(planFusion(items, 100), expected);
}

// Uncompressed tensors of at least inPlaceBytes run alone (in place); compressed ones fuse.
TEST(Fusion, LargeUncompressedTensorsRunAlone) {
  const std::vector<FusionItem> items = {
      {DType::f32, ReduceOp::sum, 40},
      {DType::f32, ReduceOp::sum, 60},
      {DType::f32, ReduceOp::sum, 40},
      {DType::f32, ReduceOp::sum, 60, -1, "int8"},
      {DType::f32, ReduceOp::sum, 60, -1, "int8"},
  };
  const std::vector<std::vector<std::size_t>> expected = {{1}, {0, 2}, {3, 4}};
  EXPECT_EQ(planFusion(items, 1000, 60), expected);
  EXPECT_EQ(planFusion(items, 1000).size(), 2u);  // by default: fused by kind only
}

// The in-place size follows the cost model: 1 MiB inside a node, more on slower links,
// beyond any fusion threshold across clouds (30 ms), and at least 1 MiB alone.
TEST(Fusion, InPlaceBytesFollowTheSlowestLink) {
  EXPECT_EQ(inPlaceBytes(1e-6, 4), std::size_t{1} << 20);
  EXPECT_EQ(inPlaceBytes(0, 1), std::size_t{1} << 20);
  EXPECT_GT(inPlaceBytes(1e-3, 4), std::size_t{10} << 20);
  EXPECT_GT(inPlaceBytes(30e-3, 4), std::size_t{64} << 20);
  EXPECT_LT(inPlaceBytes(30e-3, 4), inPlaceBytes(30e-3, 8));
}

// A descriptor's codec travels in announcements and tells two calls apart.
TEST(Negotiation, CompressionIsPartOfTheDescriptor) {
  Descriptor a{"g", DType::f32, ReduceOp::avg, {4, 4}};
  a.compression = "powersgd:2";
  std::vector<std::byte> wire;
  appendDescriptor(wire, a);
  const auto back = parseDescriptors(wire, 1, 0);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0], a);
  Descriptor b = a;
  b.compression.clear();
  EXPECT_FALSE(sameCall(a, b));
  EXPECT_NE(a.describe().find("compressed powersgd:2"), std::string::npos) << a.describe();
}

TEST(Fusion, ScaleInPlace) {
  std::vector<float> f = {1, 2, 3};
  scaleInPlace(view(std::span(f)), 0.5);
  EXPECT_EQ(f, (std::vector<float>{0.5f, 1, 1.5f}));
  std::vector<BFloat16> b = {toBFloat16(3), toBFloat16(-2)};
  scaleInPlace(view(std::span(b)), 2);
  EXPECT_EQ(toFloat(b[0]), 6.0f);
  EXPECT_EQ(toFloat(b[1]), -4.0f);
}

}  // namespace
}  // namespace skyring::engine
