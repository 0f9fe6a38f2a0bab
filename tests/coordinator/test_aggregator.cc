// The aggregator: weighted averages through every codec, the same bits whatever the
// arrival order, quorum and deadline, late submissions dropped or carried, idempotency,
// aborted and refused submissions undone exactly, and the outer optimizer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "coordinator/fixed_point.h"
#include "coordinator_test_util.h"
#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

using namespace test;
using std::chrono::seconds;

const Clock::time_point t0{};

bool sameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(CoordinatorFixedPoint, ConvertsExactlyAndNegates) {
  for (double x : {0.0, 1.0, -1.0, 0.5, -3.25, 1e-10, -1e-10, 4503599627370496.0, 1e-300}) {
    const fixed::Fixed f = fixed::fromDouble(x);
    EXPECT_EQ(f + fixed::fromDouble(-x), fixed::Fixed{0}) << x;
    // Truncation to a multiple of 2^-63, then one rounding to double.
    EXPECT_NEAR(fixed::toDouble(f), x, std::ldexp(1.0, -63) + std::fabs(x) * 0x1p-52) << x;
  }
  EXPECT_EQ(fixed::toDouble(fixed::fromDouble(1e-300)), 0.0);  // below 2^-63: dropped
  EXPECT_EQ(fixed::toDouble(fixed::fromDouble(1.0) + fixed::fromDouble(2.5)), 3.5);
}

TEST(CoordinatorAggregator, WeightedAverageOfIntegersIsExact) {
  const std::size_t n = 101;
  std::vector<float> w(n, 10.0f);
  Aggregator agg(options3(), freshState(w), t0);
  std::vector<std::vector<float>> g(3, std::vector<float>(n));
  for (std::size_t i = 0; i < n; ++i) {
    g[0][i] = static_cast<float>(i % 7) - 3;
    g[1][i] = static_cast<float>(i % 5);
    g[2][i] = -static_cast<float>(i % 11);
  }
  const std::uint64_t samples[3] = {100, 300, 600};
  const char* names[3] = {"aws", "azure", "gcp"};
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(submit(agg, names[c], 0, g[c], samples[c], t0), Admission::accepted);
  }
  EXPECT_EQ(agg.state().round, 1u);
  for (std::size_t i = 0; i < n; ++i) {
    const double sum = 100.0 * g[0][i] + 300.0 * g[1][i] + 600.0 * g[2][i];
    EXPECT_EQ(agg.state().weights[i], static_cast<float>(10.0 - sum / 1000.0)) << i;
  }
}

// Every codec: the aggregate equals the weighted average of what the codec delivers.
TEST(CoordinatorAggregator, CodecsDecodeChunksThroughTheCompressionLayer) {
  for (const std::string spec : {"none", "fp16", "bf16", "int8"}) {
    const std::size_t n = 1000;
    Aggregator agg(options3(), freshState(std::vector<float>(n, 0.0f)), t0);
    std::vector<std::vector<float>> seen;
    const char* names[3] = {"aws", "azure", "gcp"};
    for (int c = 0; c < 3; ++c) {
      const auto g = seeded(n, 10 + c, 0.01f);
      seen.push_back(roundTrip(g, 300, spec));
      EXPECT_EQ(submit(agg, names[c], 0, g, 1 + c, t0, 300, spec), Admission::accepted);
    }
    for (std::size_t i = 0; i < n; ++i) {
      const double avg = (1.0 * seen[0][i] + 2.0 * seen[1][i] + 3.0 * seen[2][i]) / 6.0;
      EXPECT_NEAR(agg.state().weights[i], -avg, 1e-9) << spec << " " << i;
    }
  }
}

// The same submissions in every order of clusters, interleaved chunk by chunk, with other
// chunk sizes and an aborted attempt in between, give the same bits, over three rounds of
// Nesterov steps (docs/coordinator.md, "Determinism").
TEST(CoordinatorAggregator, BitForBitWhateverTheArrivalOrder) {
  const std::size_t n = 997;
  const char* names[3] = {"aws", "azure", "gcp"};
  auto run = [&](int order, std::size_t chunk, bool interleave, bool withAbort) {
    AggregatorOptions o = options3();
    o.outer.kind = OuterKind::nesterov;
    Aggregator agg(o, freshState(seeded(n, 1)), t0);
    int perm[3] = {0, 1, 2};
    for (int i = 0; i < order; ++i)
      std::next_permutation(perm, perm + 3);
    for (std::uint64_t round = 0; round < 3; ++round) {
      std::vector<std::vector<std::pair<std::uint64_t, std::vector<std::byte>>>> chunks;
      for (int c : perm) {
        const auto g = seeded(n, static_cast<unsigned>(100 * round + c), 1e-3f);
        if (withAbort && c == perm[1]) {
          agg.begin(names[c], {round, wire::SubmitCodec::none, n, 5}, t0);
          agg.chunk(names[c], 0, encodeChunks(seeded(n, 999), 50)[0].second);
          agg.abort(names[c]);
        }
        agg.begin(names[c], {round, wire::SubmitCodec::none, n, 10u + c * 7u}, t0);
        chunks.push_back(encodeChunks(g, chunk));
      }
      const std::size_t pieces = chunks[0].size();
      if (interleave) {
        for (std::size_t k = 0; k < pieces; ++k) {
          for (int j = 0; j < 3; ++j)
            agg.chunk(names[perm[j]], chunks[j][k].first, chunks[j][k].second);
        }
      } else {
        for (int j = 0; j < 3; ++j) {
          for (const auto& [at, blob] : chunks[j])
            agg.chunk(names[perm[j]], at, blob);
        }
      }
      for (int j = 0; j < 3; ++j)
        agg.end(names[perm[j]], round, t0);
      EXPECT_EQ(agg.state().round, round + 1);
    }
    return std::make_pair(agg.state().weights, agg.state().momentum);
  };
  const auto reference = run(0, 64, false, false);
  for (int order = 1; order < 6; ++order) {
    const auto other = run(order, order % 2 ? 13 : 250, order % 2 == 0, order >= 3);
    EXPECT_TRUE(sameBits(reference.first, other.first)) << order;
    EXPECT_TRUE(sameBits(reference.second, other.second)) << order;
  }
}

TEST(CoordinatorAggregator, QuorumAndDeadlineCloseARound) {
  const std::size_t n = 10;
  Aggregator agg(options3(2), freshState(std::vector<float>(n, 1.0f)), t0);
  const std::vector<float> g(n, 0.5f);
  submit(agg, "aws", 0, g, 1, t0);
  submit(agg, "azure", 0, g, 1, t0 + seconds(1));
  EXPECT_FALSE(agg.poll(t0 + seconds(9)));  // waits for gcp until the deadline
  EXPECT_EQ(agg.status("gcp", 0).submitted, 2u);
  EXPECT_TRUE(agg.poll(t0 + seconds(10)));
  EXPECT_EQ(agg.state().round, 1u);
  EXPECT_EQ(agg.state().weights[0], 0.5f);
  EXPECT_FALSE(agg.state().members[2].active);  // gcp missed it

  // Round 1 closes as soon as the two active clusters submit: no wait for gcp.
  submit(agg, "aws", 1, g, 1, t0 + seconds(11));
  EXPECT_EQ(agg.state().round, 1u);
  submit(agg, "azure", 1, g, 1, t0 + seconds(11));
  EXPECT_EQ(agg.state().round, 2u);

  // gcp is back: round 2 waits for it again.
  submit(agg, "gcp", 2, g, 1, t0 + seconds(12));
  submit(agg, "aws", 2, g, 1, t0 + seconds(12));
  EXPECT_EQ(agg.state().round, 2u);
  EXPECT_TRUE(agg.state().members[2].active);
  EXPECT_EQ(agg.stats().quorumMisses, 0u);

  EXPECT_FALSE(agg.poll(t0 + seconds(20)));  // round 2 opened at 11 s: deadline 21 s
  EXPECT_TRUE(agg.poll(t0 + seconds(21)));
  EXPECT_FALSE(agg.state().members[1].active);  // azure missed round 2
}

TEST(CoordinatorAggregator, QuorumMissThenCloseAtQuorum) {
  Aggregator agg(options3(2), freshState(std::vector<float>(4, 0.0f)), t0);
  const std::vector<float> g(4, 1.0f);
  submit(agg, "aws", 0, g, 1, t0);
  EXPECT_FALSE(agg.poll(t0 + seconds(10)));
  EXPECT_FALSE(agg.poll(t0 + seconds(20)));
  EXPECT_EQ(agg.stats().quorumMisses, 1u);
  submit(agg, "gcp", 0, g, 1, t0 + seconds(21));
  EXPECT_EQ(agg.state().round, 1u);
}

TEST(CoordinatorAggregator, LateSubmissionsDroppedOrCarried) {
  const std::vector<float> g(6, 1.0f);
  for (LatePolicy policy : {LatePolicy::drop, LatePolicy::carry}) {
    Aggregator agg(options3(2, policy), freshState(std::vector<float>(6, 0.0f)), t0);
    submit(agg, "aws", 0, g, 1, t0);
    submit(agg, "azure", 0, g, 1, t0);
    agg.poll(t0 + seconds(10));  // round 0 closes without gcp
    ASSERT_EQ(agg.state().round, 1u);
    const std::vector<float> big(6, 4.0f);
    const Admission a = submit(agg, "gcp", 0, big, 2, t0 + seconds(11));
    EXPECT_EQ(a, policy == LatePolicy::carry ? Admission::carried : Admission::lateDropped);
    // A repeated late submission is not counted twice.
    EXPECT_EQ(submit(agg, "gcp", 0, big, 2, t0 + seconds(11)),
              policy == LatePolicy::carry ? Admission::duplicate : Admission::lateDropped);
    submit(agg, "aws", 1, g, 1, t0 + seconds(12));
    submit(agg, "azure", 1, g, 1, t0 + seconds(12));
    submit(agg, "gcp", 1, g, 1, t0 + seconds(12));
    ASSERT_EQ(agg.state().round, 2u);
    // Round 0: -1. Round 1: drop -> -1; carry -> (1 + 1 + 1 + 2 * 4) / 5 = 2.2.
    EXPECT_FLOAT_EQ(agg.state().weights[0], policy == LatePolicy::carry ? -3.2f : -2.0f);
    EXPECT_EQ(agg.stats().submissionsCarried, policy == LatePolicy::carry ? 1u : 0u);
    // Older than the previous round: late whatever the policy.
    EXPECT_EQ(submit(agg, "gcp", 0, g, 1, t0 + seconds(13)),
              policy == LatePolicy::carry ? Admission::lateDropped : Admission::lateDropped);
  }
}

TEST(CoordinatorAggregator, RepeatedSubmissionIsNotCountedTwice) {
  Aggregator agg(options3(), freshState(std::vector<float>(3, 0.0f)), t0);
  const std::vector<float> g(3, 1.0f);
  EXPECT_EQ(submit(agg, "aws", 0, g, 1, t0), Admission::accepted);
  EXPECT_EQ(submit(agg, "aws", 0, std::vector<float>(3, 100.0f), 1, t0), Admission::duplicate);
  EXPECT_TRUE(agg.status("aws", 0).counted);
  EXPECT_EQ(agg.status("aws", 0).submitted, 1u);
  submit(agg, "azure", 0, g, 1, t0);
  submit(agg, "gcp", 0, g, 1, t0);
  EXPECT_EQ(agg.state().weights[0], -1.0f);
  EXPECT_EQ(submit(agg, "gcp", 0, g, 1, t0), Admission::duplicate);
  EXPECT_EQ(agg.status("gcp", 0).state, wire::RoundState::closed);
  EXPECT_EQ(agg.stats().submissionsDuplicate, 2u);
}

// A submission in flight when the deadline closes the round is subtracted again; its end
// answers late. With a spill directory, its undo log is an unnamed file there.
TEST(CoordinatorAggregator, InFlightSubmissionAtCloseIsUndone) {
  const auto dir = std::filesystem::temp_directory_path() / "skyring_coord_spill";
  std::filesystem::create_directories(dir);
  AggregatorOptions o = options3(2);
  o.spillDir = dir.string();
  Aggregator agg(o, freshState(std::vector<float>(20, 0.0f)), t0);
  const std::vector<float> g(20, 1.0f);
  submit(agg, "aws", 0, g, 1, t0);
  submit(agg, "azure", 0, g, 1, t0);
  agg.begin("gcp", {0, wire::SubmitCodec::none, 20, 1000}, t0);
  const auto chunks = encodeChunks(std::vector<float>(20, 50.0f), 7);
  agg.chunk("gcp", chunks[0].first, chunks[0].second);
  EXPECT_TRUE(agg.poll(t0 + seconds(10)));
  agg.chunk("gcp", chunks[1].first, chunks[1].second);  // ignored: its round is closed
  EXPECT_EQ(agg.end("gcp", 0, t0 + seconds(10)), Admission::lateDropped);
  for (float x : agg.state().weights)
    EXPECT_EQ(x, -1.0f);
  EXPECT_EQ(agg.stats().submissionsAborted, 1u);
  EXPECT_TRUE(std::filesystem::is_empty(dir));  // O_TMPFILE: nothing named
  std::filesystem::remove_all(dir);
}

// Refusals: each throws TransportError and leaves the sum as if the submission never
// happened (the result equals a run without it).
TEST(CoordinatorAggregator, BadSubmissionsAreRefusedAndUndone) {
  const std::size_t n = 30;
  Aggregator agg(options3(2), freshState(std::vector<float>(n, 0.0f)), t0);
  const std::vector<float> g(n, 2.0f);
  const auto chunks = encodeChunks(std::vector<float>(n, 9.0f), 10);
  auto begin = [&] {
    agg.begin("gcp", {0, wire::SubmitCodec::none, n, 3}, t0);
    agg.chunk("gcp", chunks[0].first, chunks[0].second);
  };
  EXPECT_THROW(agg.begin("gcp", {0, wire::SubmitCodec::none, n + 1, 3}, t0), TransportError);
  EXPECT_THROW(agg.begin("gcp", {0, wire::SubmitCodec::none, n, 0}, t0), TransportError);
  EXPECT_THROW(agg.begin("gcp", {5, wire::SubmitCodec::none, n, 3}, t0), TransportError);
  EXPECT_THROW(agg.begin("oracle", {0, wire::SubmitCodec::none, n, 3}, t0), TransportError);
  EXPECT_THROW(agg.chunk("aws", 0, chunks[0].second), TransportError);  // nothing begun

  begin();  // out of order
  EXPECT_THROW(agg.chunk("gcp", 20, chunks[2].second), TransportError);
  begin();  // another codec than declared
  EXPECT_THROW(
      agg.chunk("gcp", 10, encodeChunks(std::vector<float>(10, 1.0f), 10, "fp16")[0].second),
      TransportError);
  begin();  // corrupt blob
  auto corrupt = chunks[1].second;
  corrupt[3] = std::byte{'X'};
  EXPECT_THROW(agg.chunk("gcp", 10, corrupt), TransportError);
  begin();  // a truncated payload
  EXPECT_THROW(agg.chunk("gcp", 10, std::span(chunks[1].second).first(30)), TransportError);
  begin();  // NaN
  std::vector<float> nan(10, 1.0f);
  nan[4] = std::nanf("");
  EXPECT_THROW(agg.chunk("gcp", 10, encodeChunks(nan, 10)[0].second), TransportError);
  begin();  // past the model's end
  EXPECT_THROW(agg.chunk("gcp", 10, encodeChunks(std::vector<float>(25, 1.0f), 25)[0].second),
               TransportError);
  begin();  // ends short
  EXPECT_THROW(agg.end("gcp", 0, t0), TransportError);
  EXPECT_EQ(agg.stats().submissionsAborted, 7u);

  submit(agg, "aws", 0, g, 1, t0);
  submit(agg, "azure", 0, g, 1, t0);
  EXPECT_TRUE(agg.poll(t0 + seconds(10)));
  for (float x : agg.state().weights)
    EXPECT_EQ(x, -2.0f);
}

TEST(CoordinatorAggregator, LeaveAndRejoin) {
  Aggregator agg(options3(1), freshState(std::vector<float>(2, 0.0f)), t0);
  const std::vector<float> g(2, 1.0f);
  agg.leave("gcp");
  agg.leave("azure");
  EXPECT_EQ(agg.status("aws", 0).members, 1u);
  submit(agg, "aws", 0, g, 1, t0);  // the only active member: closes at once
  EXPECT_EQ(agg.state().round, 1u);
  agg.join("gcp");
  submit(agg, "aws", 1, g, 1, t0);
  EXPECT_EQ(agg.state().round, 1u);  // waits for gcp now
  submit(agg, "gcp", 1, g, 1, t0);
  EXPECT_EQ(agg.state().round, 2u);

  // A member that submitted and then left does not stand in for one still training.
  agg.join("azure");
  submit(agg, "aws", 2, g, 1, t0);
  submit(agg, "gcp", 2, g, 1, t0);
  agg.leave("aws");
  EXPECT_EQ(agg.state().round, 2u);  // azure has not submitted
  submit(agg, "azure", 2, g, 1, t0);
  EXPECT_EQ(agg.state().round, 3u);
}

TEST(CoordinatorAggregator, NesterovStepMatchesTheFormula) {
  AggregatorOptions o = options3(1);
  o.clusters = {"only"};
  o.outer = {OuterKind::nesterov, 0.5, 0.9};
  Aggregator agg(o, freshState({1.0f}), t0);
  double w = 1.0, m = 0.0;
  for (std::uint64_t round = 0; round < 4; ++round) {
    const float d = 0.25f * static_cast<float>(round + 1);
    submit(agg, "only", round, {d}, 3, t0);
    m = static_cast<float>(0.9 * m + d);
    w = static_cast<float>(w - 0.5 * (d + 0.9 * m));
    EXPECT_EQ(agg.state().weights[0], static_cast<float>(w)) << round;
    EXPECT_EQ(agg.state().momentum[0], static_cast<float>(m)) << round;
  }
}

TEST(CoordinatorAggregator, BadOptionsAreInvalidArguments) {
  const auto state = freshState({0.0f});
  auto with = [&](auto change) {
    AggregatorOptions o = options3();
    change(o);
    Aggregator agg(o, state, t0);
  };
  EXPECT_THROW(with([](auto& o) { o.clusters.clear(); }), InvalidArgument);
  EXPECT_THROW(with([](auto& o) { o.clusters = {"a", "a"}; }), InvalidArgument);
  EXPECT_THROW(with([](auto& o) { o.quorum = 4; }), InvalidArgument);
  EXPECT_THROW(with([](auto& o) { o.quorum = 0; }), InvalidArgument);
  EXPECT_THROW(with([](auto& o) { o.outer.momentum = 1.0; }), InvalidArgument);
  EXPECT_THROW(with([](auto& o) { o.outer.learningRate = 0; }), InvalidArgument);
  EXPECT_THROW(Aggregator(options3(), freshState({}), t0), InvalidArgument);
}

}  // namespace
}  // namespace skyring::coordinator
