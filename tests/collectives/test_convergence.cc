// Convergence with compression on the cross-cloud hop: a small MLP trained data-parallel by
// 4 ranks in 2 clouds (threads, in-process transport), its gradient averaged by the
// hierarchical allreduce with each codec. Every codec with error feedback (and the
// elementwise ones, which lose little) must reach the uncompressed run's test accuracy
// within 1 point; top-k without error feedback must do visibly worse (what it leaves out
// is lost for good). Sign without error feedback is run and printed too: on this task its
// scaled sign loses only a fraction of a point, so no claim is made about it.
//
// Everything is deterministic: the data, the initial weights and the batches come from a
// fixed-seed generator written here (no std distributions, whose output differs between
// standard libraries), and every rank ends with the same weights, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/cloud_world.h"

namespace skyring {
namespace {

// The model: an MLP features -> hidden (ReLU) -> classes. Two sizes: the original
// 16-48-4 and the 64-64-10 of issue 12, where PowerSGD must read each weight matrix with
// its own shape.
struct Dims {
  int features;
  int hidden;
  int classes;
  // Parameters, flat: W1 (features x hidden), b1, W2 (hidden x classes), b2.
  std::size_t w1() const { return 0; }
  std::size_t b1() const { return w1() + static_cast<std::size_t>(features * hidden); }
  std::size_t w2() const { return b1() + static_cast<std::size_t>(hidden); }
  std::size_t b2() const { return w2() + static_cast<std::size_t>(hidden * classes); }
  std::size_t params() const { return b2() + static_cast<std::size_t>(classes); }
};
constexpr Dims kSmall{16, 48, 4};
constexpr Dims kMlp64{64, 64, 10};

constexpr int kTrainPerRank = 1600;  // a multiple of kBatch
constexpr int kTest = 2000;
constexpr int kRanks = 4;
constexpr int kBatch = 40;
constexpr int kSteps = 200;
// Heavy-ball momentum, as users train: v = 0.9 v + g, w -= lr v. kLearningRate is a
// tenth of plain SGD's 0.5 (the same step in steady state); kAggressive keeps 0.5, what a
// user who adds momentum to a tuned SGD run gets (10 times the step), where error feedback
// and momentum fight (issue 12).
constexpr float kMomentum = 0.9f;
constexpr float kLearningRate = 0.05f;
constexpr float kAggressive = 0.5f;
constexpr double kLabelNoise = 1.0;

class Rng {  // splitmix64, with Box-Muller normals
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {
    const double u = uniform() + 1e-300;
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * uniform());
  }

 private:
  std::uint64_t s_;
};

struct Dataset {
  std::vector<float> x;  // samples x features
  std::vector<int> y;
};

// Labels from a fixed random linear teacher plus noise, so the task is learnable but not
// perfectly (the best accuracy is under 100%).
Dataset makeData(const Dims& m, int samples, std::uint64_t seed) {
  const int kFeatures = m.features;
  const int kClasses = m.classes;
  Rng teacher(7);
  std::vector<double> t(static_cast<std::size_t>(kFeatures * kClasses));
  for (double& v : t)
    v = teacher.normal();
  Rng rng(seed);
  Dataset d;
  for (int s = 0; s < samples; ++s) {
    std::vector<double> xs(static_cast<std::size_t>(kFeatures));
    for (double& v : xs) {
      v = rng.normal();
      d.x.push_back(static_cast<float>(v));
    }
    double best = -1e300;
    int label = 0;
    for (int k = 0; k < kClasses; ++k) {
      double logit = kLabelNoise * rng.normal();
      for (int f = 0; f < kFeatures; ++f)
        logit += t[static_cast<std::size_t>(f * kClasses + k)] * xs[static_cast<std::size_t>(f)];
      if (logit > best) {
        best = logit;
        label = k;
      }
    }
    d.y.push_back(label);
  }
  return d;
}

std::vector<float> initialWeights(const Dims& m) {
  Rng rng(11);
  std::vector<float> w(m.params(), 0.0f);
  for (std::size_t i = m.w1(); i < m.b1(); ++i)
    w[i] = static_cast<float>(rng.normal() / std::sqrt(double(m.features)));
  for (std::size_t i = m.w2(); i < m.b2(); ++i)
    w[i] = static_cast<float>(rng.normal() / std::sqrt(double(m.hidden)));
  return w;
}

// Forward pass of one sample; returns the predicted class, fills hidden and probabilities.
int forward(const Dims& m, const std::vector<float>& w, const float* x, float* hidden,
            float* prob) {
  const std::size_t nh = static_cast<std::size_t>(m.hidden);
  const std::size_t nc = static_cast<std::size_t>(m.classes);
  for (std::size_t h = 0; h < nh; ++h) {
    float a = w[m.b1() + h];
    for (std::size_t f = 0; f < static_cast<std::size_t>(m.features); ++f)
      a += w[m.w1() + f * nh + h] * x[f];
    hidden[h] = a > 0 ? a : 0;
  }
  std::size_t best = 0;
  for (std::size_t k = 0; k < nc; ++k) {
    float z = w[m.b2() + k];
    for (std::size_t h = 0; h < nh; ++h)
      z += w[m.w2() + h * nc + k] * hidden[h];
    prob[k] = z;
    if (z > prob[best]) best = k;
  }
  const float maxLogit = prob[best];
  float total = 0;
  for (std::size_t k = 0; k < nc; ++k) {
    prob[k] = std::exp(prob[k] - maxLogit);
    total += prob[k];
  }
  for (std::size_t k = 0; k < nc; ++k)
    prob[k] /= total;
  return static_cast<int>(best);
}

// Mean cross-entropy gradient over samples [first, first + n) of d.
void gradient(const Dims& m, const std::vector<float>& w, const Dataset& d, int first, int n,
              std::vector<float>& g) {
  std::fill(g.begin(), g.end(), 0.0f);
  const std::size_t nh = static_cast<std::size_t>(m.hidden);
  const std::size_t nc = static_cast<std::size_t>(m.classes);
  const std::size_t nf = static_cast<std::size_t>(m.features);
  std::vector<float> hidden(nh);
  std::vector<float> prob(nc);
  const float scale = 1.0f / static_cast<float>(n);
  for (int s = first; s < first + n; ++s) {
    const float* x = &d.x[static_cast<std::size_t>(s) * nf];
    forward(m, w, x, hidden.data(), prob.data());
    prob[static_cast<std::size_t>(d.y[static_cast<std::size_t>(s)])] -= 1.0f;  // dLoss/dlogit
    for (std::size_t k = 0; k < nc; ++k) {
      const float dz = prob[k] * scale;
      g[m.b2() + k] += dz;
      for (std::size_t h = 0; h < nh; ++h)
        g[m.w2() + h * nc + k] += dz * hidden[h];
    }
    for (std::size_t h = 0; h < nh; ++h) {
      if (hidden[h] <= 0) continue;
      float dh = 0;
      for (std::size_t k = 0; k < nc; ++k)
        dh += w[m.w2() + h * nc + k] * prob[k];
      dh *= scale;
      g[m.b1() + h] += dh;
      for (std::size_t f = 0; f < nf; ++f)
        g[m.w1() + f * nh + h] += dh * x[f];
    }
  }
}

double accuracy(const Dims& m, const std::vector<float>& w, const Dataset& d) {
  std::vector<float> hidden(static_cast<std::size_t>(m.hidden));
  std::vector<float> prob(static_cast<std::size_t>(m.classes));
  int right = 0;
  for (std::size_t s = 0; s < d.y.size(); ++s) {
    right += forward(m, w, &d.x[s * static_cast<std::size_t>(m.features)], hidden.data(),
                     prob.data()) == d.y[s];
  }
  return 100.0 * right / static_cast<double>(d.y.size());
}

// Trains model m with spec on the cross-cloud hop and heavy-ball momentum; returns the
// test accuracy (%) of the weights, after checking that all ranks hold the same ones. The
// gradient is one buffer of four tensors (CollectiveOptions::segments, as the engine fuses
// them): each keeps its own codec state, and PowerSGD reads each weight as its matrix.
double train(const Dims& m, const std::string& spec, CompressionLevels levels = CompressionLevels{},
             float learningRate = kLearningRate) {
  const Dataset test = makeData(m, kTest, 999);
  auto topo = testing::topologyOf({"A0", "A1", "B0", "B1"});
  Config config;
  config.timeout = std::chrono::milliseconds(30000);
  const std::size_t n = m.params();
  std::vector<std::vector<float>> finalWeights(kRanks);
  std::mutex mu;
  const std::vector<std::int64_t> w1Shape{m.features, m.hidden}, b1Shape{m.hidden},
      w2Shape{m.hidden, m.classes}, b2Shape{m.classes};
  const std::vector<TensorSegment> segments{
      {"w1", m.w1(), m.b1() - m.w1(), w1Shape},
      {"b1", m.b1(), m.w2() - m.b1(), b1Shape},
      {"w2", m.w2(), m.b2() - m.w2(), w2Shape},
      {"b2", m.b2(), n - m.b2(), b2Shape},
  };
  testing::runCloudRanks(topo, config, [&](Communicator& comm) {
    const Dataset mine = makeData(m, kTrainPerRank, 100 + static_cast<std::uint64_t>(comm.rank()));
    std::vector<float> w = initialWeights(m);
    std::vector<float> g(n);
    std::vector<float> velocity(n, 0.0f);
    CollectiveOptions options;
    options.compression = spec;
    options.compressionLevels = levels;
    options.segments = segments;
    for (int step = 0; step < kSteps; ++step) {
      gradient(m, w, mine, (step * kBatch) % kTrainPerRank, kBatch, g);
      comm.allreduce(view(std::span(g)), ReduceOp::avg, options);
      // Learning rate decayed linearly to zero, so the end point is not SGD noise.
      const float lr = learningRate * static_cast<float>(kSteps - step) / kSteps;
      for (std::size_t i = 0; i < n; ++i) {
        velocity[i] = kMomentum * velocity[i] + g[i];
        w[i] -= lr * velocity[i];
      }
    }
    std::lock_guard lock(mu);
    finalWeights[static_cast<std::size_t>(comm.rank())] = w;
  });
  for (int r = 1; r < kRanks; ++r) {
    EXPECT_EQ(std::memcmp(finalWeights[static_cast<std::size_t>(r)].data(), finalWeights[0].data(),
                          n * sizeof(float)),
              0)
        << spec << ": rank " << r << " ended with other weights than rank 0";
  }
  const double acc = accuracy(m, finalWeights[0], test);
  std::printf(
      "%d-%d-%d lr %.2f %-24s %-14s test accuracy %.2f%%\n", m.features, m.hidden, m.classes,
      double{learningRate}, spec.c_str(),
      levels.cloud ? (levels.crossCloud ? "every level" : "inside clouds") : "across clouds", acc);
  return acc;
}

// Every default codec spec (and the usual variants) with momentum 0.9.
TEST(Convergence, CodecsWithErrorFeedbackMatchUncompressed) {
  const double baseline = train(kSmall, "none");
  EXPECT_GT(baseline, 60.0) << "the uncompressed model should learn the task";
  for (const char* spec : {"fp16", "bf16", "int8", "int8:stochastic", "sign", "topk:0.01",
                           "topk:0.01,sampled", "powersgd:1", "powersgd:2", "powersgd"}) {
    EXPECT_GE(train(kSmall, spec), baseline - 1.0) << spec;
  }
  EXPECT_LT(train(kSmall, "topk:0.01,ef=0"), baseline - 2.0) << "top-k without error feedback";
  train(kSmall, "sign:ef=0");  // printed for the record
}

// The 64-64-10 MLP of issue 12: PowerSGD with each weight its own matrix (64 x 64 and
// 64 x 10, rank 1 and the default) trains with momentum as the uncompressed run does.
// (Read as squares cut from the fused buffer, powersgd:1 lost 3.1 points here, and 12.9
// at lr 0.2; docs/compression.md.)
TEST(Convergence, PowerSgdPerTensorShapesTrainA64x64x10Mlp) {
  const double baseline = train(kMlp64, "none");
  EXPECT_GT(baseline, 40.0) << "the uncompressed model should learn the task";
  for (const char* spec : {"powersgd:1", "powersgd", "sign"})
    EXPECT_GE(train(kMlp64, spec), baseline - 1.6) << spec;
  train(kMlp64, "topk:0.01");  // printed: 1 % of 64 x 64 in 200 steps is too few here
}

// Momentum with the step of plain SGD: sign with error feedback on the gradient fell 4.5
// points behind (79.0 against 83.45), so sign compresses the momentum by default
// (CompressionOptions::momentum); the rest is printed for the record (docs/compression.md).
TEST(Convergence, SignCompressesTheMomentumAtAnAggressiveStep) {
  const CompressionLevels acrossClouds{};
  const double baseline = train(kSmall, "none", acrossClouds, kAggressive);
  EXPECT_GE(train(kSmall, "sign", acrossClouds, kAggressive), baseline - 1.5);
  for (const char* spec : {"sign:momentum=0", "topk:0.01", "powersgd:1", "powersgd"})
    train(kSmall, spec, acrossClouds, kAggressive);
}

// The levels inside the clouds compressed too (SKYRING_COMPRESSION_LEVELS=cloud,cross_cloud).
TEST(Convergence, EveryLevelCompressed) {
  const double baseline = train(kSmall, "none");
  for (const char* spec : {"fp16", "int8", "sign", "topk:0.01"})
    EXPECT_GE(train(kSmall, spec, CompressionLevels{true, true}), baseline - 1.0) << spec;
}

}  // namespace
}  // namespace skyring
