// The checkpoint: saved atomically and loaded back equal; a crash before the rename (a
// stale temporary file) leaves the last completed round; a torn or corrupt file is refused
// with a clear error; and rounds interrupted at random points, restarted from the last
// checkpoint and resubmitted, end with the same bits as an uninterrupted run.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "coordinator/checkpoint.h"
#include "coordinator_test_util.h"
#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

using namespace test;
namespace fs = std::filesystem;
const Clock::time_point t0{};

class CoordinatorCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("skyring_ckpt_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  fs::path file() const { return dir_ / kCheckpointName; }

  static CoordinatorState sample(std::uint64_t round) {
    CoordinatorState s;
    s.round = round;
    s.weights = seeded(1000, static_cast<unsigned>(round));
    s.momentum = seeded(1000, static_cast<unsigned>(round + 100));
    s.members = {{"aws", true, {round - 1, round}}, {"gcp", false, {}}};
    return s;
  }
  static void expectEqual(const CoordinatorState& a, const CoordinatorState& b) {
    EXPECT_EQ(a.round, b.round);
    EXPECT_EQ(a.weights.size(), b.weights.size());
    EXPECT_EQ(0, std::memcmp(a.weights.data(), b.weights.data(), a.weights.size() * 4));
    EXPECT_EQ(0, std::memcmp(a.momentum.data(), b.momentum.data(), a.momentum.size() * 4));
    ASSERT_EQ(a.members.size(), b.members.size());
    for (std::size_t i = 0; i < a.members.size(); ++i) {
      EXPECT_EQ(a.members[i].name, b.members[i].name);
      EXPECT_EQ(a.members[i].active, b.members[i].active);
      EXPECT_EQ(a.members[i].counted, b.members[i].counted);
    }
  }
  std::string refusal() {
    try {
      loadCheckpoint(dir());
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    ADD_FAILURE() << "no InvalidArgument";
    return {};
  }

  fs::path dir_;
};

TEST_F(CoordinatorCheckpoint, SavesAndLoads) {
  EXPECT_FALSE(loadCheckpoint(dir()).has_value());  // fresh start
  saveCheckpoint(dir(), sample(3));
  expectEqual(*loadCheckpoint(dir()), sample(3));
  saveCheckpoint(dir(), sample(4));
  expectEqual(*loadCheckpoint(dir()), sample(4));
  EXPECT_FALSE(fs::exists(file().string() + ".tmp"));
}

// Crash points around the rename: the temporary file written (whole or torn) but not yet
// renamed. The last completed round loads; the next save goes through.
TEST_F(CoordinatorCheckpoint, StaleTemporaryFileLeavesTheLastCompletedRound) {
  saveCheckpoint(dir(), sample(5));
  const auto bytes = [&] {
    std::ifstream in(file(), std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  }();
  for (std::size_t cut : {std::size_t{0}, std::size_t{10}, bytes.size() / 2, bytes.size()}) {
    std::ofstream(file().string() + ".tmp", std::ios::binary | std::ios::trunc)
        .write(bytes.data(), static_cast<std::streamsize>(cut));
    expectEqual(*loadCheckpoint(dir()), sample(5));
  }
  saveCheckpoint(dir(), sample(6));
  expectEqual(*loadCheckpoint(dir()), sample(6));
}

TEST_F(CoordinatorCheckpoint, TornOrCorruptFilesAreRefused) {
  saveCheckpoint(dir(), sample(2));
  std::vector<char> good;
  {
    std::ifstream in(file(), std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::vector<char>& b) {
    std::ofstream(file(), std::ios::binary | std::ios::trunc)
        .write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  for (std::size_t cut : {std::size_t{0}, std::size_t{3}, std::size_t{20}, std::size_t{40},
                          good.size() / 2, good.size() - 1}) {
    write(std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut)));
    EXPECT_NE(refusal().find("torn or corrupt"), std::string::npos) << cut;
  }
  auto flipped = good;
  flipped[flipped.size() / 2] ^= 1;
  write(flipped);
  EXPECT_NE(refusal().find("CRC32C mismatch"), std::string::npos);
  auto longer = good;
  longer.push_back(0);
  write(longer);
  EXPECT_NE(refusal().find("torn or corrupt"), std::string::npos);
  auto magic = good;
  magic[0] = 'X';
  write(magic);
  EXPECT_NE(refusal().find("bad magic"), std::string::npos);
  auto version = good;
  version[4] = 9;
  write(version);
  EXPECT_NE(refusal().find("version 9"), std::string::npos);
  // A huge element count is refused before anything is allocated.
  auto huge = good;
  std::memset(huge.data() + 16, 0x7f, 8);
  write(huge);
  EXPECT_NE(refusal().find("bytes left"), std::string::npos);
}

// The library's version of the service's kill -9 test: 3 clusters, 6 rounds of Nesterov
// steps; in each interrupted run the aggregator is dropped at random points (mid-chunk,
// after some ends, right after a close), rebuilt from the last checkpoint and every
// cluster resubmits what the restarted state does not count. The final state equals an
// uninterrupted run's bit for bit, and no round is lost or counted twice.
TEST_F(CoordinatorCheckpoint, InterruptedRunsEqualAnUninterruptedOne) {
  const std::size_t n = 513;
  const char* names[3] = {"aws", "azure", "gcp"};
  const std::uint64_t rounds = 6;
  auto options = [] {
    AggregatorOptions o = options3();
    o.outer = {OuterKind::nesterov, 0.7, 0.9};
    return o;
  };
  auto delta = [&](std::uint64_t round, int c) {
    return seeded(n, static_cast<unsigned>(7 * round + c), 1e-2f);
  };
  const std::vector<float> initial = seeded(n, 42);

  Aggregator reference(options(), freshState(initial), t0);
  for (std::uint64_t r = 0; r < rounds; ++r) {
    for (int c = 0; c < 3; ++c)
      submit(reference, names[c], r, delta(r, c), 100 + c, t0, 64, "int8");
  }

  std::mt19937 rng(2026);
  for (int run = 0; run < 10; ++run) {
    const std::string runDir = dir() + "/run" + std::to_string(run);
    fs::create_directories(runDir);
    auto agg = std::make_unique<Aggregator>(options(), freshState(initial), t0);
    int restarts = 0;
    while (agg->state().round < rounds) {
      const std::uint64_t r = agg->state().round;
      // A crash point: after a random number of chunk deliveries in this round.
      const int crashAfter = static_cast<int>(rng() % 40);
      int delivered = 0;
      bool crashed = false;
      for (int c = 0; c < 3 && !crashed; ++c) {
        if (agg->status(names[c], r).counted) continue;
        agg->begin(names[c], {r, wire::SubmitCodec::int8, n, 100u + c}, t0);
        for (const auto& [at, blob] : encodeChunks(delta(r, c), 64, "int8")) {
          if (delivered++ == crashAfter) {
            crashed = true;
            break;
          }
          agg->chunk(names[c], at, blob);
        }
        if (crashed) break;
        const std::uint64_t before = agg->state().round;
        agg->end(names[c], r, t0);
        if (agg->state().round != before) saveCheckpoint(runDir, agg->state());
      }
      if (crashed || rng() % 4 == 0) {
        ++restarts;
        agg.reset();  // kill -9: everything in memory is gone
        auto loaded = loadCheckpoint(runDir);
        agg = std::make_unique<Aggregator>(options(),
                                           loaded ? std::move(*loaded) : freshState(initial), t0);
      }
    }
    EXPECT_GT(restarts, 0) << run;
    EXPECT_EQ(agg->state().round, rounds);
    const auto& a = agg->state();
    const auto& b = reference.state();
    EXPECT_EQ(0, std::memcmp(a.weights.data(), b.weights.data(), n * 4)) << run;
    EXPECT_EQ(0, std::memcmp(a.momentum.data(), b.momentum.data(), n * 4)) << run;
  }
}

}  // namespace
}  // namespace skyring::coordinator
