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

constexpr int kFeatures = 16;
constexpr int kHidden = 48;
constexpr int kClasses = 4;
constexpr int kTrainPerRank = 1600;  // a multiple of kBatch
constexpr int kTest = 2000;
constexpr int kRanks = 4;
constexpr int kBatch = 40;
constexpr int kSteps = 200;
constexpr float kLearningRate = 0.5f;
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
  std::vector<float> x;  // samples x kFeatures
  std::vector<int> y;
};

// Labels from a fixed random linear teacher plus noise, so the task is learnable but not
// perfectly (the best accuracy is under 100%).
Dataset makeData(int samples, std::uint64_t seed) {
  Rng teacher(7);
  std::vector<double> t(kFeatures * kClasses);
  for (double& v : t)
    v = teacher.normal();
  Rng rng(seed);
  Dataset d;
  for (int s = 0; s < samples; ++s) {
    double xs[kFeatures];
    for (double& v : xs) {
      v = rng.normal();
      d.x.push_back(static_cast<float>(v));
    }
    double best = -1e300;
    int label = 0;
    for (int k = 0; k < kClasses; ++k) {
      double logit = kLabelNoise * rng.normal();
      for (int f = 0; f < kFeatures; ++f)
        logit += t[f * kClasses + k] * xs[f];
      if (logit > best) {
        best = logit;
        label = k;
      }
    }
    d.y.push_back(label);
  }
  return d;
}

// Parameters, flat: W1 (kFeatures x kHidden), b1, W2 (kHidden x kClasses), b2.
constexpr std::size_t kW1 = 0;
constexpr std::size_t kB1 = kW1 + kFeatures * kHidden;
constexpr std::size_t kW2 = kB1 + kHidden;
constexpr std::size_t kB2 = kW2 + kHidden * kClasses;
constexpr std::size_t kParams = kB2 + kClasses;

std::vector<float> initialWeights() {
  Rng rng(11);
  std::vector<float> w(kParams, 0.0f);
  for (std::size_t i = kW1; i < kB1; ++i)
    w[i] = static_cast<float>(rng.normal() / std::sqrt(double{kFeatures}));
  for (std::size_t i = kW2; i < kB2; ++i)
    w[i] = static_cast<float>(rng.normal() / std::sqrt(double{kHidden}));
  return w;
}

// Forward pass of one sample; returns the predicted class, fills hidden and probabilities.
int forward(const std::vector<float>& w, const float* x, float* hidden, float* prob) {
  for (int h = 0; h < kHidden; ++h) {
    float a = w[kB1 + h];
    for (int f = 0; f < kFeatures; ++f)
      a += w[kW1 + f * kHidden + h] * x[f];
    hidden[h] = a > 0 ? a : 0;
  }
  int best = 0;
  for (int k = 0; k < kClasses; ++k) {
    float z = w[kB2 + k];
    for (int h = 0; h < kHidden; ++h)
      z += w[kW2 + h * kClasses + k] * hidden[h];
    prob[k] = z;
    if (z > prob[best]) best = k;
  }
  const float maxLogit = prob[best];
  float total = 0;
  for (int k = 0; k < kClasses; ++k) {
    prob[k] = std::exp(prob[k] - maxLogit);
    total += prob[k];
  }
  for (int k = 0; k < kClasses; ++k)
    prob[k] /= total;
  return best;
}

// Mean cross-entropy gradient over samples [first, first + n) of d.
void gradient(const std::vector<float>& w, const Dataset& d, int first, int n,
              std::vector<float>& g) {
  std::fill(g.begin(), g.end(), 0.0f);
  float hidden[kHidden];
  float prob[kClasses];
  const float scale = 1.0f / static_cast<float>(n);
  for (int s = first; s < first + n; ++s) {
    const float* x = &d.x[static_cast<std::size_t>(s) * kFeatures];
    forward(w, x, hidden, prob);
    prob[d.y[static_cast<std::size_t>(s)]] -= 1.0f;  // dLoss/dlogit
    for (int k = 0; k < kClasses; ++k) {
      const float dz = prob[k] * scale;
      g[kB2 + k] += dz;
      for (int h = 0; h < kHidden; ++h)
        g[kW2 + h * kClasses + k] += dz * hidden[h];
    }
    for (int h = 0; h < kHidden; ++h) {
      if (hidden[h] <= 0) continue;
      float dh = 0;
      for (int k = 0; k < kClasses; ++k)
        dh += w[kW2 + h * kClasses + k] * prob[k];
      dh *= scale;
      g[kB1 + h] += dh;
      for (int f = 0; f < kFeatures; ++f)
        g[kW1 + f * kHidden + h] += dh * x[f];
    }
  }
}

double accuracy(const std::vector<float>& w, const Dataset& d) {
  float hidden[kHidden];
  float prob[kClasses];
  int right = 0;
  for (std::size_t s = 0; s < d.y.size(); ++s)
    right += forward(w, &d.x[s * kFeatures], hidden, prob) == d.y[s];
  return 100.0 * right / static_cast<double>(d.y.size());
}

// Trains with spec on the cross-cloud hop; returns the test accuracy (%) of the weights,
// after checking that all ranks hold the same ones.
double train(const std::string& spec, CompressionLevels levels = CompressionLevels{}) {
  static const Dataset test = makeData(kTest, 999);
  auto topo = testing::topologyOf({"A0", "A1", "B0", "B1"});
  Config config;
  config.timeout = std::chrono::milliseconds(30000);
  std::vector<std::vector<float>> finalWeights(kRanks);
  std::mutex mu;
  testing::runCloudRanks(topo, config, [&](Communicator& comm) {
    const Dataset mine = makeData(kTrainPerRank, 100 + static_cast<std::uint64_t>(comm.rank()));
    std::vector<float> w = initialWeights();
    std::vector<float> g(kParams);
    CollectiveOptions options;
    options.compression = spec;
    options.tensorKey = 1;
    options.compressionLevels = levels;
    for (int step = 0; step < kSteps; ++step) {
      gradient(w, mine, (step * kBatch) % kTrainPerRank, kBatch, g);
      comm.allreduce(view(std::span(g)), ReduceOp::avg, options);
      // Learning rate decayed linearly to zero, so the end point is not SGD noise.
      const float lr = kLearningRate * static_cast<float>(kSteps - step) / kSteps;
      for (std::size_t i = 0; i < kParams; ++i)
        w[i] -= lr * g[i];
    }
    std::lock_guard lock(mu);
    finalWeights[static_cast<std::size_t>(comm.rank())] = w;
  });
  for (int r = 1; r < kRanks; ++r) {
    EXPECT_EQ(std::memcmp(finalWeights[static_cast<std::size_t>(r)].data(), finalWeights[0].data(),
                          kParams * sizeof(float)),
              0)
        << spec << ": rank " << r << " ended with other weights than rank 0";
  }
  const double acc = accuracy(finalWeights[0], test);
  std::printf(
      "%-22s %-18s test accuracy %.2f%%\n", spec.c_str(),
      levels.cloud ? (levels.crossCloud ? "every level" : "inside clouds") : "across clouds", acc);
  return acc;
}

TEST(Convergence, CodecsWithErrorFeedbackMatchUncompressed) {
  const double baseline = train("none");
  EXPECT_GT(baseline, 60.0) << "the uncompressed model should learn the task";
  for (const char* spec : {"fp16", "bf16", "int8", "int8:stochastic", "sign", "topk:0.01",
                           "topk:0.01,sampled", "powersgd:2"}) {
    EXPECT_GE(train(spec), baseline - 1.0) << spec;
  }
  EXPECT_LT(train("topk:0.01,ef=0"), baseline - 2.0) << "top-k without error feedback";
  train("sign:ef=0");  // printed for the record
}

// The levels inside the clouds compressed too (SKYRING_COMPRESSION_LEVELS=cloud,cross_cloud).
TEST(Convergence, EveryLevelCompressed) {
  const double baseline = train("none");
  for (const char* spec : {"fp16", "int8", "sign", "topk:0.01"})
    EXPECT_GE(train(spec, CompressionLevels{true, true}), baseline - 1.0) << spec;
}

}  // namespace
}  // namespace skyring
