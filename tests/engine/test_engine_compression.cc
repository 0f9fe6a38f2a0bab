// Compression through the engine: only tensors that ask for it (AllreduceSpec::compression)
// are compressed, each with its codec state under its own name, compressed tensors of one
// codec fused into one compressed allreduce, PowerSGD per tensor shape.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "common/cloud_world.h"
#include "engine/engine_test_util.h"
#include "skyring/engine.h"
#include "skyring/error.h"
#include "skyring/metering_transport.h"

namespace skyring {
namespace {

using testing::finish;
using testing::runCloudRanks;
using testing::topologyOf;
using topology::LinkClass;

const std::vector<const char*> k2x2 = {"A0", "A1", "B0", "B1"};

Config configWith(const std::string& compression) {
  Config c;
  c.timeout = std::chrono::milliseconds(20000);
  c.compression = compression;
  return c;
}

float gradientAt(int rank, std::size_t i, int salt) {
  const double x = static_cast<double>(i) + 31.0 * salt;
  return static_cast<float>(std::sin(0.01 * x * (rank + 1)) + 0.25 * rank * std::cos(x));
}

// SKYRING_COMPRESSION set: a vector of counts (f32, integers) submitted without a codec
// comes back exact beside a gradient that asks for the job's codec, submitted in the same
// cycle; the gradient is compressed (far fewer bytes across clouds than its own share, and
// not the exact sum).
TEST(EngineCompression, CountsExactGradientCompressed) {
  constexpr std::size_t kCounts = 1000;
  constexpr std::int64_t kRows = 250, kCols = 256;
  constexpr std::size_t kGrad = kRows * kCols;
  for (const char* spec : {"topk:0.01", "powersgd:2", "sign"}) {
    auto topo = topologyOf(k2x2);
    std::vector<std::shared_ptr<transport::MeteringTransport>> meters(4);
    std::vector<double> gradError(4);
    runCloudRanks(
        topo, configWith(spec),
        [&](Communicator& comm) {
          Engine engine(comm);
          const auto r = static_cast<std::size_t>(comm.rank());
          std::vector<float> counts(kCounts);
          for (std::size_t i = 0; i < kCounts; ++i)
            counts[i] = static_cast<float>((i * 7 + r * 13) % 1000);
          std::vector<float> grad(kGrad);
          for (std::size_t i = 0; i < kGrad; ++i)
            grad[i] = gradientAt(comm.rank(), i, 0);
          AllreduceSpec gradient;
          gradient.compression = std::string(kDefaultCompression);
          auto hg = engine.allreduceAsync(
              "layer.weight.grad", {view(std::span(grad)), {kRows, kCols}, nullptr}, gradient);
          auto hc = engine.allreduceAsync("correct", Tensor::of(counts));
          finish(hc);
          finish(hg);
          for (std::size_t i = 0; i < kCounts; ++i) {
            float want = 0;
            for (std::size_t k = 0; k < 4; ++k)
              want += static_cast<float>((i * 7 + k * 13) % 1000);
            ASSERT_EQ(counts[i], want) << spec << " count " << i;
          }
          double err = 0;
          for (std::size_t i = 0; i < kGrad; ++i) {
            double want = 0;
            for (int k = 0; k < 4; ++k)
              want += gradientAt(k, i, 0);
            err = std::max(err, std::abs(grad[i] - want));
          }
          gradError[r] = err;
        },
        [&](int r, std::shared_ptr<transport::Transport> t) {
          auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
          meters[static_cast<std::size_t>(r)] = m;
          return m;
        });
    // Per rank, uncompressed: half of its cloud's half of each tensor. The counts' share,
    // a third of the gradient's, and room for the negotiation's small allreduces.
    const std::uint64_t countsShare = kCounts / 2 * sizeof(float);
    const std::uint64_t gradShare = kGrad / 2 * sizeof(float);
    for (std::size_t r = 0; r < 4; ++r) {
      const std::uint64_t sent = meters[r]->stats().bytesOver(LinkClass::crossCloud);
      EXPECT_LT(sent, countsShare + gradShare / 3 + 16384) << spec << " rank " << r;
      EXPECT_GT(gradError[r], 1e-3) << spec << ": the gradient came back exact";
    }
  }
}

// Error feedback through the engine: two gradients and a metric each step, the gradients
// fused with each other (one codec) in whatever batches the cycles give; the mean of what
// each gradient got over the steps is its exact sum, so each kept its own residual. From
// the third step the engine replays the step (docs/engine.md, "Replay"): the gradients
// stay compressed there too (the bytes across clouds stay far below their share).
TEST(EngineCompression, ErrorFeedbackPerTensorName) {
  constexpr std::size_t kA = 2000, kB = 1500;
  constexpr int kSteps = 200;
  std::vector<double> meanA(kA, 0.0), meanB(kB, 0.0);
  auto topo = topologyOf(k2x2);
  std::vector<std::shared_ptr<transport::MeteringTransport>> meters(4);
  runCloudRanks(
      topo, configWith("topk:0.1"),
      [&](Communicator& comm) {
        Engine engine(comm);
        AllreduceSpec gradient;
        gradient.compression = std::string(kDefaultCompression);
        for (int step = 0; step < kSteps; ++step) {
          std::vector<float> a(kA), b(kB), loss{static_cast<float>(comm.rank() + step)};
          for (std::size_t i = 0; i < kA; ++i)
            a[i] = gradientAt(comm.rank(), i, 1);
          for (std::size_t i = 0; i < kB; ++i)
            b[i] = gradientAt(comm.rank(), i, 2);
          // Backward order differs between steps and ranks.
          const bool flip = (step + comm.rank()) % 2 == 1;
          auto h1 = flip ? engine.allreduceAsync("b", Tensor::of(b), gradient)
                         : engine.allreduceAsync("a", Tensor::of(a), gradient);
          auto hl = engine.allreduceAsync("loss", Tensor::of(loss));
          auto h2 = flip ? engine.allreduceAsync("a", Tensor::of(a), gradient)
                         : engine.allreduceAsync("b", Tensor::of(b), gradient);
          finish(h1);
          finish(h2);
          finish(hl);
          ASSERT_EQ(loss[0], static_cast<float>(6 + 4 * step));
          if (comm.rank() == 0) {
            for (std::size_t i = 0; i < kA; ++i)
              meanA[i] += a[i] / double{kSteps};
            for (std::size_t i = 0; i < kB; ++i)
              meanB[i] += b[i] / double{kSteps};
          }
        }
      },
      [&](int r, std::shared_ptr<transport::Transport> t) {
        auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
        meters[static_cast<std::size_t>(r)] = m;
        return m;
      });
  // Uncompressed, each rank would carry (kA + kB) / 2 floats a step across clouds.
  for (const auto& m : meters) {
    EXPECT_LT(m->stats().bytesOver(LinkClass::crossCloud),
              std::uint64_t{kSteps} * (kA + kB) / 2 * sizeof(float) / 2);
  }
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < kA; ++i) {
    double want = 0;
    for (int r = 0; r < 4; ++r)
      want += gradientAt(r, i, 1);
    err = std::max(err, std::abs(meanA[i] - want));
    scale = std::max(scale, std::abs(want));
  }
  for (std::size_t i = 0; i < kB; ++i) {
    double want = 0;
    for (int r = 0; r < 4; ++r)
      want += gradientAt(r, i, 2);
    err = std::max(err, std::abs(meanB[i] - want));
  }
  EXPECT_LT(err / scale, 0.1);
}

// PowerSGD through the engine, each tensor its own matrix: sums of rank-1 matrices with
// one column pattern come back exact from powersgd:1 in the first step (a grouped
// allreduce's members too), and 1-D tensors, which PowerSGD leaves alone, exactly; the
// bytes across clouds are the factors' (w1 alone would be 128 KiB a rank uncompressed).
TEST(EngineCompression, PowerSgdPerTensorShapes) {
  const auto value = [](int rank, std::size_t cols, std::size_t i, int salt) {
    const std::size_t row = i / cols, col = i % cols;
    return static_cast<float>((1.0 + rank + std::sin(double(row + salt))) *
                              std::cos(0.3 * double(col) + salt) / 64.0);
  };
  auto topo = topologyOf(k2x2);
  std::vector<std::shared_ptr<transport::MeteringTransport>> meters(4);
  runCloudRanks(
      topo, configWith("powersgd:1"),
      [&](Communicator& comm) {
        Engine engine(comm);
        AllreduceSpec gradient;
        gradient.compression = std::string(kDefaultCompression);
        std::vector<float> w1(256 * 256), w2(10 * 64), b1(64), b2(10);
        for (std::size_t i = 0; i < w1.size(); ++i)
          w1[i] = value(comm.rank(), 256, i, 0);
        for (std::size_t i = 0; i < w2.size(); ++i)
          w2[i] = value(comm.rank(), 64, i, 1);
        for (std::size_t i = 0; i < b1.size(); ++i)
          b1[i] = static_cast<float>(comm.rank() + i);
        for (std::size_t i = 0; i < b2.size(); ++i)
          b2[i] = static_cast<float>(10 * comm.rank() + i);
        auto h1 = engine.allreduceAsync("w1", {view(std::span(w1)), {256, 256}, nullptr}, gradient);
        auto hb = engine.allreduceAsync("b1", Tensor::of(b1), gradient);
        auto hg = engine.groupedAllreduceAsync(
            "layer2", {Tensor{view(std::span(w2)), {10, 64}, nullptr}, Tensor::of(b2)}, gradient);
        finish(h1);
        finish(hb);
        finish(hg);
        for (std::size_t i = 0; i < w1.size(); ++i) {
          float want = 0;
          for (int r = 0; r < 4; ++r)
            want += value(r, 256, i, 0);
          ASSERT_NEAR(w1[i], want, 1e-4) << "w1 " << i;
        }
        for (std::size_t i = 0; i < w2.size(); ++i) {
          float want = 0;
          for (int r = 0; r < 4; ++r)
            want += value(r, 64, i, 1);
          ASSERT_NEAR(w2[i], want, 1e-4) << "w2 " << i;
        }
        for (std::size_t i = 0; i < b1.size(); ++i)
          ASSERT_EQ(b1[i], static_cast<float>(6 + 4 * i)) << "b1 " << i;
        for (std::size_t i = 0; i < b2.size(); ++i)
          ASSERT_EQ(b2[i], static_cast<float>(60 + 4 * i)) << "b2 " << i;
      },
      [&](int r, std::shared_ptr<transport::Transport> t) {
        auto m = std::make_shared<transport::MeteringTransport>(std::move(t), topo);
        meters[static_cast<std::size_t>(r)] = m;
        return m;
      });
  for (const auto& m : meters)
    EXPECT_LT(m->stats().bytesOver(LinkClass::crossCloud), 24u << 10);
}

// The codec is part of a name's descriptor: ranks that ask for different codecs fail on
// every rank, naming the name; a bad spec is refused at once.
TEST(EngineCompression, MismatchedCodecFailsOnEveryRank) {
  runCloudRanks(topologyOf(k2x2), configWith("int8"), [&](Communicator& comm) {
    Engine engine(comm);
    std::vector<float> g(64, 1.0f);
    AllreduceSpec spec;
    spec.compression = comm.rank() == 3 ? "fp16" : "default";
    auto h = engine.allreduceAsync("g", Tensor::of(g), spec);
    try {
      h.wait();
      ADD_FAILURE() << "rank " << comm.rank() << ": mismatched codecs completed";
    } catch (const TransportError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("'g'"), std::string::npos) << what;
      EXPECT_NE(what.find("compressed int8"), std::string::npos) << what;
      EXPECT_NE(what.find("compressed fp16"), std::string::npos) << what;
    }
    AllreduceSpec bad;
    bad.compression = "zip";
    EXPECT_THROW(engine.allreduceAsync("z", Tensor::of(g), bad), InvalidArgument);
  });
}

}  // namespace
}  // namespace skyring
