// Hierarchical allreduce with a codec on the cross-cloud hop: every rank ends with the
// same bytes, close to the sum (single shot for the elementwise codecs, on average over
// steps with error feedback for the lossy ones), with exactly the codec's bytes crossing
// clouds; calls the codec does not apply to stay exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "common/cloud_world.h"
#include "common/exact_data.h"
#include "compression/powersgd.h"
#include "skyring/compression.h"
#include "skyring/metering_transport.h"

namespace skyring {
namespace {

using testing::runCloudRanks;
using testing::topologyOf;
using topology::LinkClass;

const std::vector<const char*> k2x2 = {"A0", "A1", "B0", "B1"};
const std::vector<const char*> k2x4 = {"A0", "B0", "A1", "B1", "A2", "B2", "A3", "B3"};
const std::vector<const char*> k4x1 = {"A0", "B0", "C0", "D0"};
const std::vector<const char*> k3_2 = {"A0", "B0", "A1", "B1", "A2"};
const std::vector<const char*> k1x3 = {"A0", "A1", "A2"};
constexpr CompressionLevels kCloudOnly{true, false};
constexpr CompressionLevels kEveryLevel{true, true};

Config testConfig(const std::string& compression = "none") {
  Config c;
  c.timeout = std::chrono::milliseconds(20000);
  c.ringChunkBytes = 4096;
  c.compression = compression;
  return c;
}

std::vector<float> gradientOf(int rank, std::size_t count) {
  std::vector<float> g(count);
  for (std::size_t i = 0; i < count; ++i) {
    const double x = static_cast<double>(i);
    g[i] = static_cast<float>(std::sin(0.001 * x * (rank + 1)) + 0.25 * rank * std::cos(x));
  }
  return g;
}

std::vector<double> exactSum(int ranks, std::size_t count) {
  std::vector<double> s(count, 0.0);
  for (int r = 0; r < ranks; ++r) {
    const auto g = gradientOf(r, count);
    for (std::size_t i = 0; i < count; ++i)
      s[i] += g[i];
  }
  return s;
}

// Largest |got - want| divided by the largest |want|.
double relativeError(const std::vector<double>& got, const std::vector<double>& want) {
  double err = 0;
  double scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

struct Outcome {
  std::vector<std::vector<float>> last;  // per rank: the output of the last step
  std::vector<double> mean;              // rank 0: mean output over the steps
};

// steps allreduces (sum) of each rank's gradient in one buffer, compressed with spec per
// call; the outputs of every rank are returned.
Outcome run(const std::vector<const char*>& where, const std::string& spec, std::size_t count,
            int steps, ReduceOp op = ReduceOp::sum,
            CompressionLevels levels = CompressionLevels{}) {
  auto topo = topologyOf(where);
  Outcome out;
  out.last.resize(where.size());
  out.mean.assign(count, 0.0);
  std::mutex mu;
  runCloudRanks(topo, testConfig(), [&](Communicator& comm) {
    const auto input = gradientOf(comm.rank(), count);
    std::vector<float> buffer(count);
    CollectiveOptions options;
    options.compression = spec;
    options.compressionLevels = levels;
    options.algorithm = AllreduceAlgorithm::hierarchical;  // also with a single cloud
    for (int s = 0; s < steps; ++s) {
      buffer = input;
      comm.allreduce(view(std::span(buffer)), op, options);
      if (comm.rank() == 0) {
        for (std::size_t i = 0; i < count; ++i)
          out.mean[i] += buffer[i] / static_cast<double>(steps);
      }
    }
    std::lock_guard lock(mu);
    out.last[static_cast<std::size_t>(comm.rank())] = buffer;
  });
  return out;
}

void expectSameOnEveryRank(const Outcome& o, const std::string& what) {
  for (std::size_t r = 1; r < o.last.size(); ++r) {
    EXPECT_TRUE(std::memcmp(o.last[r].data(), o.last[0].data(), o.last[0].size() * 4) == 0)
        << what << ": rank " << r << " differs from rank 0";
  }
}

struct SingleShot {
  const char* spec;
  double tolerance;  // of relativeError after one call
};

// The elementwise codecs without error feedback: one call is already close.
TEST(CompressedAllreduce, ElementwiseCodecsAreCloseInOneCall) {
  const SingleShot cases[] = {{"none", 1e-6}, {"fp16", 2e-3},          {"bf16", 1.6e-2},
                              {"int8", 2e-2}, {"int8:block=64", 2e-2}, {"int8:stochastic", 4e-2}};
  for (const auto& where : {k2x2, k2x4, k4x1, k3_2}) {
    for (const auto& c : cases) {
      for (std::size_t count : {std::size_t{1}, std::size_t{3}, std::size_t{20011}}) {
        const std::string what = std::string(c.spec) + " on " + std::to_string(where.size()) +
                                 " ranks, count " + std::to_string(count);
        const Outcome o = run(where, c.spec, count, 1);
        expectSameOnEveryRank(o, what);
        EXPECT_LT(relativeError(o.mean, exactSum(static_cast<int>(where.size()), count)),
                  c.tolerance)
            << what;
      }
    }
  }
}

TEST(CompressedAllreduce, AvgDividesOnce) {
  const std::size_t count = 5000;
  const Outcome o = run(k2x2, "fp16", count, 1, ReduceOp::avg);
  expectSameOnEveryRank(o, "fp16 avg");
  auto want = exactSum(4, count);
  for (double& v : want)
    v /= 4;
  EXPECT_LT(relativeError(o.mean, want), 2e-3);
}

// Lossy codecs with error feedback: over many steps of the same gradient, what arrives
// averages to the sum (whatever a step leaves out is sent later); without error
// feedback the same codec stays far off.
TEST(CompressedAllreduce, ErrorFeedbackMakesLossyCodecsExactOnAverage) {
  const std::size_t count = 4096;
  const int steps = 200;
  const auto want = exactSum(4, count);
  struct Case {
    const char* spec;
    double withFeedback;
  };
  // sign without its default momentum compression: this is error feedback on the gradient.
  for (const Case& c :
       {Case{"sign:momentum=0", 0.1}, Case{"topk:0.1", 0.05}, Case{"powersgd:2", 0.02}}) {
    for (const auto& where : {k2x2, k4x1}) {
      const std::string what = std::string(c.spec) + " on " + std::to_string(where.size());
      const Outcome ef = run(where, c.spec, count, steps);
      expectSameOnEveryRank(ef, what);
      const double errEf = relativeError(ef.mean, want);
      EXPECT_LT(errEf, c.withFeedback) << what;
      const Outcome noEf =
          run(where,
              std::string(c.spec) +
                  (std::string(c.spec).find(':') == std::string::npos ? ":ef=0" : ",ef=0"),
              count, steps);
      expectSameOnEveryRank(noEf, what + " ef=0");
      const double errNoEf = relativeError(noEf.mean, want);
      EXPECT_GT(errNoEf, 2 * errEf) << what << " without error feedback";
      std::printf("%-12s %zu ranks: mean error %.4f with error feedback, %.4f without\n", c.spec,
                  where.size(), errEf, errNoEf);
    }
  }
}

// Cross-cloud bytes per rank: exactly 2(G-1) encoded blocks of 1/(G c) of the buffer for
// the fixed-size codecs; at most that plus an 8-byte length per block for topk.
TEST(CompressedAllreduce, CrossCloudBytesAreTheCodecs) {
  const std::size_t count = 48000;  // divisible by every G * c here
  for (const auto& where : {k2x2, k2x4, k4x1}) {
    auto topo = topologyOf(where);
    const std::size_t g = static_cast<std::size_t>(topo->clouds());
    const std::size_t c = where.size() / g;
    for (const char* spec : {"none", "fp16", "bf16", "int8", "sign", "topk:0.01", "powersgd:4"}) {
      std::vector<std::shared_ptr<transport::MeteringTransport>> meters(where.size());
      runCloudRanks(
          topo, testConfig(spec),
          [&](Communicator& comm) {
            auto data = gradientOf(comm.rank(), count);
            CollectiveOptions gradient;  // the job's codec, SKYRING_COMPRESSION
            gradient.compression = kDefaultCompression;
            comm.allreduce(view(std::span(data)), ReduceOp::sum, gradient);
          },
          [&](int r, std::shared_ptr<transport::Transport> t) {
            auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
            meters[static_cast<std::size_t>(r)] = m;
            return m;
          });
      std::vector<std::uint64_t> sent;
      for (const auto& m : meters)
        sent.push_back(m->stats().bytesOver(LinkClass::crossCloud));
      const auto codec = compression::makeCompressor(spec);
      const std::size_t block = count / (g * c);
      const std::uint64_t exact = 2 * (g - 1) * codec->maxEncodedBytes(block);
      const std::uint64_t uncompressed = 2 * (g - 1) * block * g * sizeof(float) / g;
      for (std::size_t r = 0; r < where.size(); ++r) {
        const std::string what = std::string(spec) + " " + std::to_string(g) + "x" +
                                 std::to_string(c) + " rank " + std::to_string(r);
        if (std::string(spec) == "none") {
          EXPECT_EQ(sent[r], uncompressed) << what;
        } else if (std::string(spec).rfind("topk", 0) == 0) {
          EXPECT_LE(sent[r], exact + 2 * (g - 1) * 8) << what;
          EXPECT_GT(sent[r], 0u) << what;
        } else if (std::string(spec).rfind("powersgd", 0) == 0) {
          // Two ring allreduces of the factors among the G owners of the piece.
          const auto shape = compression::powerSgdShape(count / c, 4);
          const auto ringBytes = [&](std::size_t n) { return 2 * (g - 1) * ((n + g - 1) / g) * 4; };
          EXPECT_LE(sent[r], ringBytes(shape.pSize()) + ringBytes(shape.qSize())) << what;
          EXPECT_GT(sent[r], 0u) << what;
        } else {
          EXPECT_EQ(sent[r], exact) << what;
        }
      }
    }
  }
}

// The cloud level compressed too (SKYRING_COMPRESSION_LEVELS): still the same bytes on
// every rank, also where clouds of different sizes cut the buffer differently (3 + 2) and
// with a single cloud; one call is close, and error feedback at every level makes the
// lossy codecs exact on average.
TEST(CompressedAllreduce, CloudLevelKeepsEveryRankIdentical) {
  const SingleShot cases[] = {
      {"fp16", 4e-3}, {"bf16", 3e-2}, {"int8", 4e-2}, {"int8:stochastic", 8e-2}};
  for (const auto& where : {k2x2, k2x4, k4x1, k3_2, k1x3}) {
    for (const CompressionLevels levels : {kCloudOnly, kEveryLevel}) {
      for (const auto& c : cases) {
        for (std::size_t count : {std::size_t{1}, std::size_t{3}, std::size_t{20011}}) {
          const std::string what =
              std::string(c.spec) + (levels.crossCloud ? " everywhere" : " in clouds") + " on " +
              std::to_string(where.size()) + " ranks, count " + std::to_string(count);
          const Outcome o = run(where, c.spec, count, 1, ReduceOp::sum, levels);
          expectSameOnEveryRank(o, what);
          EXPECT_LT(relativeError(o.mean, exactSum(static_cast<int>(where.size()), count)),
                    c.tolerance)
              << what;
        }
      }
    }
  }
  const std::size_t count = 4096;
  for (const auto& where : {k2x2, k3_2}) {
    const auto want = exactSum(static_cast<int>(where.size()), count);
    for (const char* spec : {"sign", "topk:0.1"}) {
      const std::string what = std::string(spec) + " everywhere on " + std::to_string(where.size());
      const Outcome ef = run(where, spec, count, 200, ReduceOp::sum, kEveryLevel);
      expectSameOnEveryRank(ef, what);
      const double errEf = relativeError(ef.mean, want);
      EXPECT_LT(errEf, 0.2) << what;
      const std::string off = std::string(spec) + (std::string(spec) == "sign" ? ":ef=0" : ",ef=0");
      const double errNoEf =
          relativeError(run(where, off, count, 200, ReduceOp::sum, kEveryLevel).mean, want);
      EXPECT_GT(errNoEf, 2 * errEf) << what;
      std::printf("%-8s everywhere, %zu ranks: mean error %.4f with error feedback, %.4f without\n",
                  spec, where.size(), errEf, errNoEf);
    }
  }
  const Outcome avg = run(k3_2, "fp16", 5000, 1, ReduceOp::avg, kEveryLevel);
  expectSameOnEveryRank(avg, "fp16 avg everywhere");
  auto want = exactSum(5, 5000);
  for (double& v : want)
    v /= 5;
  EXPECT_LT(relativeError(avg.mean, want), 4e-3);
}

// Bytes per level: the compressed level sends the codec's bytes, the other one the
// uncompressed hierarchy's.
TEST(CompressedAllreduce, CloudLevelBytes) {
  const std::size_t count = 48000;
  auto topo = topologyOf(k2x4);
  const std::size_t g = 2;
  const std::size_t c = 4;
  const auto codec = compression::makeCompressor("int8");
  const std::size_t block = count / (g * c);
  struct Sent {
    std::uint64_t inCloud = 0;
    std::uint64_t acrossClouds = 0;
  };
  const auto meter = [&](CompressionLevels levels, const char* spec) {
    std::vector<std::shared_ptr<transport::MeteringTransport>> meters(g * c);
    runCloudRanks(
        topo, testConfig(),
        [&](Communicator& comm) {
          auto data = gradientOf(comm.rank(), count);
          CollectiveOptions options;
          options.compression = spec;
          options.compressionLevels = levels;
          comm.allreduce(view(std::span(data)), ReduceOp::sum, options);
        },
        [&](int r, std::shared_ptr<transport::Transport> t) {
          auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
          meters[static_cast<std::size_t>(r)] = m;
          return m;
        });
    std::vector<Sent> sent;
    for (const auto& m : meters) {
      const auto st = m->stats();
      sent.push_back({st.bytesOver(LinkClass::intraNode) + st.bytesOver(LinkClass::intraCloud),
                      st.bytesOver(LinkClass::crossCloud)});
    }
    return sent;
  };
  const auto plain = meter(CompressionLevels{}, "none");
  const auto cloudOnly = meter(kCloudOnly, "int8");
  const auto every = meter(kEveryLevel, "int8");
  // Inside a cloud each rank sends c - 1 encoded blocks of its cloud's partition (count / c
  // each) to their owners, then its own segment, encoded per piece (one piece here), to the
  // c - 1 others.
  const std::uint64_t inCloud = 2 * (c - 1) * codec->maxEncodedBytes(count / c);
  for (std::size_t r = 0; r < g * c; ++r) {
    EXPECT_EQ(plain[r].inCloud, 2 * (c - 1) * (count / c) * sizeof(float)) << r;
    EXPECT_EQ(cloudOnly[r].inCloud, inCloud) << r;
    EXPECT_EQ(cloudOnly[r].acrossClouds, plain[r].acrossClouds) << r;
    EXPECT_EQ(every[r].inCloud, inCloud) << r;
    EXPECT_EQ(every[r].acrossClouds, 2 * (g - 1) * codec->maxEncodedBytes(block)) << r;
  }
}

// Other dtypes and ops are not compressed: exact as without a codec.
TEST(CompressedAllreduce, OtherDtypesAndOpsStayExact) {
  auto topo = topologyOf(k2x2);
  runCloudRanks(topo, testConfig("int8"), [&](Communicator& comm) {
    for (auto [d, op] :
         {std::pair{DType::f64, ReduceOp::sum}, std::pair{DType::f32, ReduceOp::max},
          std::pair{DType::i32, ReduceOp::sum}, std::pair{DType::f16, ReduceOp::avg}}) {
      auto data = testing::makeInput(op, d, comm.rank(), 1001);
      CollectiveOptions gradient;
      gradient.compression = kDefaultCompression;
      comm.allreduce(testing::viewOf(data, d), op, gradient);
      EXPECT_TRUE(data == testing::expectedResult(op, d, comm.size(), 1001))
          << dtypeName(d) << " " << reduceOpName(op);
    }
  });
}

TEST(CompressedAllreduce, BadSpecsAreRejected) {
  transport::InProcessWorld world(1);
  try {
    Communicator comm(world.transport(0), testConfig("zip"), nullptr, topologyOf({"A0"}));
    FAIL() << "a bad SKYRING_COMPRESSION was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("SKYRING_COMPRESSION"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Config::fromMap({{"SKYRING_COMPRESSION", "int8:block=64"}}).compression,
            "int8:block=64");
  auto topo = topologyOf(k2x2);
  std::vector<int> threw(4, 0);
  runCloudRanks(topo, testConfig(), [&](Communicator& comm) {
    std::vector<float> data(100, 1.0f);
    CollectiveOptions options;
    options.compression = "topk:2";  // a fraction above 1
    try {
      comm.allreduce(view(std::span(data)), ReduceOp::sum, options);
    } catch (const InvalidArgument&) {
      threw[static_cast<std::size_t>(comm.rank())] = 1;
    }
  });
  EXPECT_EQ(std::accumulate(threw.begin(), threw.end(), 0), 4);
}

// PowerSGD is not an elementwise codec: it has no reduce-scatter form, so it cannot
// compress the levels inside a cloud; asking for it is a clear error, at construction for
// the configuration and on every rank for a call.
TEST(CompressedAllreduce, PowerSgdOnlyAcrossClouds) {
  transport::InProcessWorld world(1);
  Config config = testConfig("powersgd:4");
  config.compressionLevels = kEveryLevel;
  try {
    Communicator comm(world.transport(0), config, nullptr, topologyOf({"A0"}));
    FAIL() << "PowerSGD inside clouds was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("SKYRING_COMPRESSION_LEVELS"), std::string::npos)
        << e.what();
  }
  auto topo = topologyOf(k2x2);
  std::vector<int> threw(4, 0);
  runCloudRanks(topo, testConfig(), [&](Communicator& comm) {
    std::vector<float> data(100, 1.0f);
    CollectiveOptions options;
    options.compression = "powersgd:2";
    options.compressionLevels = kCloudOnly;
    try {
      comm.allreduce(view(std::span(data)), ReduceOp::sum, options);
    } catch (const InvalidArgument& e) {
      threw[static_cast<std::size_t>(comm.rank())] =
          std::string(e.what()).find("cross_cloud") != std::string::npos;
    }
  });
  EXPECT_EQ(std::accumulate(threw.begin(), threw.end(), 0), 4);
}

}  // namespace
}  // namespace skyring
