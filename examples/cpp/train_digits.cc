// train_digits: a small MLP trained on scikit-learn's digits with libtorch and skyring's
// DistributedOptimizer, across clouds, with the bill in view.
//
//   examples/cpp/run_train_digits.sh            (mpirun, 4 ranks in 2 emulated clouds)
//   mpirun -np 2 -x SKYRING_CLOUD=aws train_digits : -np 2 -x SKYRING_CLOUD=gcp train_digits
//
// The C++ twin of examples/python/train_digits.py, with its choices: the same 80/20 split
// (torch::randperm seeded with --seed), inputs standardized with the training set's mean
// and deviation, MLP 64-hidden-10, SGD with momentum 0.9 and the learning rate scaled by
// the number of ranks, --batch-size images per rank. Every step the ranks together take
// the next size x batch images of one shuffled order (the same on every rank, reshuffled
// every epoch; an incomplete last batch is dropped), rank r the r-th slice: so N ranks
// with batch B step exactly as one rank with batch N x B and the same total learning rate
// would, up to floating-point order (examples/cpp/check_convergence.sh checks this).
//
// By default it trains twice in one launch, from the same seed: in full precision, then
// with int8 on the cross-cloud hop (skyring quantizes gradients only between clouds, by
// SKYRING_COMPRESSION_LEVELS' default), and prints the two side by side. Rank 0 prints a
// progress bar and the test accuracy per epoch, then per run: the mean and median step
// time, the share of it spent waiting for gradients in DistributedOptimizer::synchronize()
// (communication not hidden behind the backward pass), and the bytes, messages and egress
// dollars every rank sent per link class (Runtime::stats(), summed over ranks). With
// SKYRING_TIMELINE set the engine writes its Chrome trace (docs/engine.md).
//
// Exit status: 0; 1 when a run's final accuracy is below --min-accuracy or skyring failed;
// 2 on a bad argument or setting (benchmarks/cli.h).
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "skyring/compression.h"
#include "skyring/runtime.h"
#include "skyring/skyring.h"
#include "skyring/torch.h"

namespace {

constexpr const char* kUsage =
    "train_digits [--epochs N] [--batch-size N] [--lr X] [--momentum X] [--hidden N]\n"
    "                    [--seed N] [--compare | --compression SPEC] [--min-accuracy X] [--data "
    "CSV]\n"
    "  --epochs N          passes over the training set (default 5)\n"
    "  --batch-size N      images per rank per step (default 32)\n"
    "  --lr X              learning rate per rank; SGD uses X times the ranks (default 0.025)\n"
    "  --momentum X        SGD momentum (default 0.9)\n"
    "  --hidden N          hidden units (default 64)\n"
    "  --seed N            seed of the split, the shuffles and the weights (default 42)\n"
    "  --compare           train twice, full precision then int8 on the cross-cloud hop, and\n"
    "                      print both side by side (the default)\n"
    "  --compression SPEC  train once with this gradient codec (docs/compression.md): none,\n"
    "                      fp16, int8, ...; \"default\" is SKYRING_COMPRESSION's\n"
    "  --min-accuracy X    exit 1 if a run's final test accuracy (0..1) is below X (default 0)\n"
    "  --data CSV          the digits (default: examples/cpp/data/digits.csv of the source)";

struct Options {
  int epochs = 5;
  int batch = 32;
  double lr = 0.025;
  double momentum = 0.9;
  int hidden = 64;
  std::uint64_t seed = 42;
  std::vector<std::string> codecs = {"none", "int8"};
  double minAccuracy = 0;
  std::string data = SKYRING_DIGITS_CSV;
};

Options parse(int argc, char** argv) {
  namespace cli = skyring::cli;
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (cli::isHelp(arg)) throw cli::Help{};
    if (arg == "--compare") {
      o.codecs = {"none", "int8"};
      continue;
    }
    constexpr std::string_view kValued[] = {"--epochs",      "--batch-size",   "--lr",
                                            "--momentum",    "--hidden",       "--seed",
                                            "--compression", "--min-accuracy", "--data"};
    if (std::find(std::begin(kValued), std::end(kValued), arg) == std::end(kValued)) {
      cli::fail(arg, ": unknown option");
    }
    if (i + 1 >= argc) cli::fail(arg, ": needs a value");
    const std::string_view value = argv[++i];
    if (arg == "--epochs") {
      o.epochs = static_cast<int>(cli::integer(arg, value, 1, 100000));
    } else if (arg == "--batch-size") {
      o.batch = static_cast<int>(cli::integer(arg, value, 1, 1 << 20));
    } else if (arg == "--lr") {
      o.lr = cli::number(arg, value, 0, 100, true);
    } else if (arg == "--momentum") {
      o.momentum = cli::number(arg, value, 0, 0.999999);
    } else if (arg == "--hidden") {
      o.hidden = static_cast<int>(cli::integer(arg, value, 1, 1 << 16));
    } else if (arg == "--seed") {
      o.seed = static_cast<std::uint64_t>(cli::integer(arg, value, 0, 1LL << 62));
    } else if (arg == "--compression") {
      // A bad spec is a usage error here rather than a failure once the ranks have joined.
      if (value != skyring::kDefaultCompression) {
        try {
          skyring::compression::parseCompressionSpec(value);
        } catch (const skyring::InvalidArgument& e) {
          cli::fail(arg, ": ", e.detail());
        }
      }
      o.codecs = {std::string(value)};
    } else if (arg == "--min-accuracy") {
      o.minAccuracy = cli::number(arg, value, 0, 1);
    } else {
      o.data = value;
    }
  }
  return o;
}

struct Digits {
  at::Tensor xTrain, yTrain, xTest, yTest;
};

// Reads the CSV (64 pixels then the label per row; '#' lines are comments), splits it 80/20
// with a permutation seeded by `seed`, and standardizes with the training set's statistics.
Digits load(const std::string& path, std::uint64_t seed) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open the data file " + path);
  std::vector<float> pixels;
  std::vector<std::int64_t> labels;
  std::string line;
  for (int row = 1; std::getline(in, line); ++row) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string field;
    int n = 0;
    for (; std::getline(fields, field, ','); ++n) {
      const long long v = skyring::cli::integer("value", field, 0, 16);
      if (n < 64)
        pixels.push_back(static_cast<float>(v));
      else
        labels.push_back(v);
    }
    if (n != 65 || labels.back() > 9) {
      throw std::runtime_error(path + ":" + std::to_string(row) +
                               ": expected 64 pixels and a label 0..9");
    }
  }
  const auto n = static_cast<std::int64_t>(labels.size());
  if (n < 10) throw std::runtime_error(path + ": fewer than 10 images");
  at::Tensor x = ::torch::from_blob(pixels.data(), {n, 64}, ::torch::kFloat32).clone();
  at::Tensor y = ::torch::from_blob(labels.data(), {n}, ::torch::kInt64).clone();
  // As train_digits.py: torch.randperm(n, generator=torch.Generator().manual_seed(seed)).
  const at::Tensor order =
      ::torch::randperm(n, at::make_generator<at::CPUGeneratorImpl>(seed), ::torch::kInt64);
  const at::Tensor test = order.slice(0, 0, n / 5);
  const at::Tensor train = order.slice(0, n / 5);
  const at::Tensor mean = x.index_select(0, train).mean(0);
  const at::Tensor std = x.index_select(0, train).std(0) + 1e-3;
  x = (x - mean) / std;
  return {x.index_select(0, train), y.index_select(0, train), x.index_select(0, test),
          y.index_select(0, test)};
}

// A bar that grows on one line as steps complete, without carriage returns, so that it
// reads the same in a terminal and in a CI log.
class Progress {
 public:
  Progress(bool shown, int epoch, int epochs, int steps) : on_(shown), steps_(steps) {
    if (on_) std::printf("epoch %d/%d [", epoch + 1, epochs), std::fflush(stdout);
  }
  void step(int done) {
    const int filled = kWidth * done / steps_;
    for (; on_ && shown_ < filled; ++shown_)
      std::putchar('#');
    if (on_) std::fflush(stdout);
  }
  void end(const std::string& text) {
    if (on_) std::printf("] %s\n", text.c_str()), std::fflush(stdout);
  }

 private:
  static constexpr int kWidth = 30;
  bool on_;
  int steps_;
  int shown_ = 0;
};

// Sums over ranks with skyring::torch's allreduce (int64 and f64 travel exact).
at::Tensor sumOverRanks(const at::Tensor& values, const std::string& name) {
  return skyring::torch::allreduce(values, name, skyring::AllreduceSpec{skyring::ReduceOp::sum});
}

using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

constexpr std::array kClasses = {skyring::topology::LinkClass::intraNode,
                                 skyring::topology::LinkClass::intraCloud,
                                 skyring::topology::LinkClass::crossCloud};

struct RunResult {
  std::string codec;
  double untrained = 0;  // test accuracy before the first step
  double accuracy = 0;
  double stepSeconds = 0;    // mean over rank 0's steps
  double medianSeconds = 0;  // their median: robust to a machine's hiccups
  double commShare = 0;      // of rank 0's step time, waiting in synchronize()
  std::array<std::uint64_t, kClasses.size()> bytes{}, messages{};  // all ranks
  std::array<double, kClasses.size()> dollars{};
};

double evaluate(::torch::nn::Sequential& model, const Digits& d, const std::string& name) {
  ::torch::NoGradGuard noGrad;
  model->eval();
  const std::int64_t n = d.xTest.size(0);
  const at::Tensor share = ::torch::arange(skyring::rank(), n, skyring::size());
  const at::Tensor predicted = model->forward(d.xTest.index_select(0, share)).argmax(1);
  const std::int64_t correct =
      predicted.eq(d.yTest.index_select(0, share)).sum().item<std::int64_t>();
  model->train();
  const at::Tensor counts = sumOverRanks(::torch::tensor({correct, share.size(0)}), name);
  return static_cast<double>(counts[0].item<std::int64_t>()) /
         static_cast<double>(counts[1].item<std::int64_t>());
}

RunResult train(const Options& o, const Digits& d, const std::string& codec) {
  const int rank = skyring::rank();
  const int size = skyring::size();
  const bool rank0 = rank == 0;
  // The same initial weights in every run of the launch (and rank 0's on every rank).
  ::torch::manual_seed(o.seed);
  ::torch::nn::Sequential model(::torch::nn::Linear(64, o.hidden), ::torch::nn::ReLU(),
                                ::torch::nn::Linear(o.hidden, 10));
  auto sgd = std::make_shared<::torch::optim::SGD>(
      model->parameters(), ::torch::optim::SGDOptions(o.lr * size).momentum(o.momentum));
  // Every rank starts from rank 0's weights and optimizer state.
  skyring::torch::broadcastParameters(*model, 0);
  skyring::torch::broadcastOptimizerState(*sgd, 0);
  skyring::torch::DistributedOptimizer optimizer(sgd, *model, {.compression = codec});
  if (rank0) {
    std::printf(
        "train_digits: %d ranks, %lld training and %lld test images, MLP 64-%d-10, SGD lr "
        "%g momentum %g, batch %d per rank, compression %s\n",
        size, static_cast<long long>(d.xTrain.size(0)), static_cast<long long>(d.xTest.size(0)),
        o.hidden, o.lr * size, o.momentum, o.batch, codec.c_str());
  }

  const skyring::transport::TrafficStats before = skyring::runtime().stats();
  const std::int64_t global = static_cast<std::int64_t>(o.batch) * size;
  const int steps = static_cast<int>(d.xTrain.size(0) / global);
  Clock::duration stepTime{}, commTime{};
  std::vector<double> stepTimes;
  RunResult result;
  result.codec = codec;
  result.untrained = evaluate(model, d, "test.counts");
  if (rank0) std::printf("untrained: test accuracy %.2f%%\n", 100 * result.untrained);
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    const auto epochStart = Clock::now();
    const at::Tensor order = ::torch::randperm(
        d.xTrain.size(0), at::make_generator<at::CPUGeneratorImpl>(o.seed + epoch + 1),
        ::torch::kInt64);
    Progress bar(rank0, epoch, o.epochs, steps);
    double lossSum = 0;
    for (int s = 0; s < steps; ++s) {
      const std::int64_t first = s * global + static_cast<std::int64_t>(rank) * o.batch;
      const at::Tensor idx = order.slice(0, first, first + o.batch);
      const at::Tensor x = d.xTrain.index_select(0, idx);
      const at::Tensor y = d.yTrain.index_select(0, idx);
      const auto t0 = Clock::now();
      optimizer.zero_grad();
      const at::Tensor loss = ::torch::nn::functional::cross_entropy(model->forward(x), y);
      loss.backward();
      const auto t1 = Clock::now();
      optimizer.synchronize();
      const auto t2 = Clock::now();
      optimizer.step();
      const auto t3 = Clock::now();
      stepTime += t3 - t0;
      stepTimes.push_back(seconds(t3 - t0));
      commTime += t2 - t1;
      lossSum += loss.item<double>();
      bar.step(s + 1);
    }
    const double meanLoss =
        sumOverRanks(::torch::tensor({lossSum / steps}, ::torch::kFloat64), "train.loss")
            .item<double>() /
        static_cast<double>(size);
    result.accuracy = evaluate(model, d, "test.counts");
    char text[160];
    std::snprintf(text, sizeof(text), "%d steps, loss %.4f, test accuracy %.2f%%, %.2fs", steps,
                  meanLoss, 100 * result.accuracy, seconds(Clock::now() - epochStart));
    bar.end(text);
  }
  const auto totalSteps = static_cast<double>(steps) * o.epochs;
  result.stepSeconds = seconds(stepTime) / totalSteps;
  std::nth_element(stepTimes.begin(), stepTimes.begin() + stepTimes.size() / 2, stepTimes.end());
  result.medianSeconds = stepTimes[stepTimes.size() / 2];
  result.commShare = seconds(commTime) / std::max(seconds(stepTime), 1e-12);

  // This run's traffic (the report's own sums below are not counted), summed over ranks.
  const skyring::transport::TrafficStats after = skyring::runtime().stats();
  std::vector<std::int64_t> mine;
  for (auto c : kClasses) {
    mine.push_back(static_cast<std::int64_t>(after.bytesOver(c) - before.bytesOver(c)));
    mine.push_back(static_cast<std::int64_t>(after.messagesOver(c) - before.messagesOver(c)));
  }
  const at::Tensor summed = sumOverRanks(::torch::tensor(mine), "report.counts");
  const auto* counts = summed.data_ptr<std::int64_t>();
  const auto& costs = skyring::runtime().topology().costs();
  for (std::size_t i = 0; i < kClasses.size(); ++i) {
    result.bytes[i] = static_cast<std::uint64_t>(counts[2 * i]);
    result.messages[i] = static_cast<std::uint64_t>(counts[2 * i + 1]);
    result.dollars[i] =
        static_cast<double>(result.bytes[i]) / 1e9 * costs[kClasses[i]].egressDollarsPerGB;
  }
  return result;
}

std::string withCommas(std::uint64_t v) {
  std::string digits = std::to_string(v);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3)
    digits.insert(i, ",");
  return digits;
}

// The runs side by side: one column each.
void report(const std::vector<RunResult>& runs) {
  const auto row = [&](const char* label, auto cell) {
    std::printf("  %-26s", label);
    for (const RunResult& r : runs)
      std::printf(" %16s", cell(r).c_str());
    std::printf("\n");
  };
  const auto fmt = [](const char* f, double v) {
    char text[64];
    std::snprintf(text, sizeof(text), f, v);
    return std::string(text);
  };
  std::printf("results (traffic: all ranks together, this run only):\n");
  row("compression", [](const RunResult& r) { return r.codec; });
  row("final test accuracy", [&](const RunResult& r) { return fmt("%.2f%%", 100 * r.accuracy); });
  row("step time, mean (rank 0)",
      [&](const RunResult& r) { return fmt("%.2f ms", 1e3 * r.stepSeconds); });
  row("step time, median",
      [&](const RunResult& r) { return fmt("%.2f ms", 1e3 * r.medianSeconds); });
  row("communicating (of mean)",
      [&](const RunResult& r) { return fmt("%.0f%%", 100 * r.commShare); });
  for (std::size_t i = 0; i < kClasses.size(); ++i) {
    const std::string name(skyring::topology::linkClassName(kClasses[i]));
    row((name + " bytes").c_str(), [&](const RunResult& r) { return withCommas(r.bytes[i]); });
    row((name + " messages").c_str(),
        [&](const RunResult& r) { return withCommas(r.messages[i]); });
    row((name + " egress $").c_str(),
        [&](const RunResult& r) { return fmt("%.8f", r.dollars[i]); });
  }
  row("total egress $", [&](const RunResult& r) {
    double sum = 0;
    for (double v : r.dollars)
      sum += v;
    return fmt("%.8f", sum);
  });
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  return skyring::cli::run("train_digits", kUsage, [&] {
    const Options o = parse(argc, argv);
    const skyring::Config config = skyring::cli::environment();
    // Several ranks share this machine's cores: one thread each.
    ::torch::set_num_threads(1);
    const Digits digits = load(o.data, o.seed);
    skyring::init(config);
    if (const int ranks = skyring::size(); o.batch * std::int64_t{ranks} > digits.xTrain.size(0)) {
      skyring::shutdown();
      skyring::cli::fail("--batch-size: ", o.batch, " x ", ranks, " ranks exceeds the ",
                         digits.xTrain.size(0), " training images");
    }
    const auto start = Clock::now();
    std::vector<RunResult> runs;
    for (const std::string& codec : o.codecs)
      runs.push_back(train(o, digits, codec));
    const bool rank0 = skyring::rank() == 0;
    if (rank0) {
      report(runs);
      std::printf("total time %.1fs\n", seconds(Clock::now() - start));
    }
    skyring::shutdown();
    int status = 0;
    for (const RunResult& r : runs) {
      if (r.accuracy >= o.minAccuracy) continue;
      if (rank0) {
        std::fprintf(
            stderr,
            "train_digits: error: test accuracy %.2f%% (%s) is below --min-accuracy %.2f%%\n",
            100 * r.accuracy, r.codec.c_str(), 100 * o.minAccuracy);
      }
      status = 1;
    }
    return status;
  });
}
