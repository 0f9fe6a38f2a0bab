// skyring::torch under mpirun. Modes (argv[1]):
//   train     (4 ranks): broadcastParameters; DistributedOptimizer (SGD, momentum 0.9) on
//             rank-different data leaves bit-identical parameters on every rank, equal (to
//             rounding) to one process training on the whole batch; broadcastOptimizerState
//             for SGD momentum and Adam with state only the root has; backwardPassesPerStep 2.
//   int8      (2 clouds, SKYRING_CLOUD per app context): the same training with int8 on the
//             cross-cloud hop: identical parameters everywhere, close to the exact run, and
//             fewer cross-cloud bytes than it.
//   mismatch  (4 ranks, rank 3's hidden layer wider): broadcastParameters and step() fail on
//             every rank with an error naming the parameter and the ranks.
// Exits non-zero (with a message naming the rank and check) on any failure.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "skyring/skyring.h"
#include "skyring/torch.h"

namespace st = skyring::torch;

namespace {

int gRank = 0;

#define EXPECT(cond)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "rank %d: check failed at line %d: %s\n", gRank,     \
                   __LINE__, #cond);                                            \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

struct Net : torch::nn::Module {
  explicit Net(int hidden = 32) {
    fc1 = register_module("fc1", torch::nn::Linear(16, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// Every parameter of net flattened into one vector.
at::Tensor flat(torch::nn::Module& net) {
  std::vector<at::Tensor> parts;
  for (const auto& p : net.parameters()) parts.push_back(p.detach().reshape({-1}));
  return at::cat(parts);
}

// True when t is bit-identical on every rank (every rank's copy gathered and compared).
bool sameEverywhere(const at::Tensor& t, const std::string& name) {
  at::Tensor all = st::allgather(t.reshape({1, -1}), name);
  for (int r = 1; r < all.size(0); ++r)
    if (!at::equal(all[r], all[0])) return false;
  return true;
}

// This rank's data (different per rank) and a fixed teacher's targets.
std::pair<at::Tensor, at::Tensor> dataOf(int rank, int rows) {
  at::Generator teacherGen = at::make_generator<at::CPUGeneratorImpl>(7);
  at::Tensor teacher = at::randn({16, 4}, teacherGen);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(100 + rank);
  at::Tensor x = at::randn({rows, 16}, gen);
  return {x, torch::sin(x.matmul(teacher))};
}

void copyParameters(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard noGrad;
  for (std::size_t i = 0; i < from.parameters().size(); ++i)
    to.parameters()[i].copy_(from.parameters()[i]);
}

// Trains net with a DistributedOptimizer over SGD for steps steps on this rank's data;
// returns the last loss.
float trainDistributed(Net& net, int steps, st::DistributedOptimizerOptions options, int rows) {
  auto [x, y] = dataOf(gRank, rows);
  st::DistributedOptimizer opt(
      std::make_shared<torch::optim::SGD>(net.parameters(),
                                          torch::optim::SGDOptions(0.05).momentum(0.9)),
      net, std::move(options));
  float loss = 0;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    at::Tensor l = torch::mse_loss(net.forward(x), y);
    l.backward();
    opt.step();
    loss = l.item<float>();
  }
  return loss;
}

std::string stateKey(const at::Tensor& p) {
  return c10::guts::to_string(p.unsafeGetTensorImpl());
}

void trainMode() {
  const int n = skyring::size();
  // Different initial weights per rank; broadcastParameters makes them root's.
  torch::manual_seed(static_cast<std::uint64_t>(1 + gRank));
  auto net = std::make_shared<Net>();
  EXPECT(!sameEverywhere(flat(*net), "check.init"));
  st::broadcastParameters(*net, 0);
  EXPECT(sameEverywhere(flat(*net), "check.broadcast"));

  // One process training on every rank's data at once takes the same steps: the average
  // of the ranks' mean-loss gradients is the whole batch's mean-loss gradient.
  auto reference = std::make_shared<Net>();
  copyParameters(*net, *reference);
  const int rows = 32;
  trainDistributed(*net, 20, {}, rows);
  EXPECT(sameEverywhere(flat(*net), "check.trained"));
  {
    std::vector<at::Tensor> xs, ys;
    for (int r = 0; r < n; ++r) {
      auto [x, y] = dataOf(r, rows);
      xs.push_back(x);
      ys.push_back(y);
    }
    at::Tensor x = at::cat(xs), y = at::cat(ys);
    torch::optim::SGD sgd(reference->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    for (int s = 0; s < 20; ++s) {
      sgd.zero_grad();
      torch::mse_loss(reference->forward(x), y).backward();
      sgd.step();
    }
    EXPECT(at::allclose(flat(*net), flat(*reference), 1e-4, 1e-5));
  }

  // broadcastOptimizerState: state only root (rank 1) has, for SGD momentum and Adam.
  const int root = 1;
  {
    auto [x, y] = dataOf(gRank, rows);
    torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
    torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.001));
    if (gRank == root) {
      for (torch::optim::Optimizer* o : {static_cast<torch::optim::Optimizer*>(&sgd),
                                         static_cast<torch::optim::Optimizer*>(&adam)}) {
        o->zero_grad();
        torch::mse_loss(net->forward(x), y).backward();
        o->step();
      }
    }
    EXPECT(sgd.state().empty() == (gRank != root));
    st::broadcastOptimizerState(sgd, root);
    st::broadcastOptimizerState(adam, root);
    st::broadcastParameters(*net, root);
    EXPECT(sgd.state().size() == net->parameters().size());
    EXPECT(adam.state().size() == net->parameters().size());
    for (const auto& p : net->parameters()) {
      auto& m = static_cast<torch::optim::SGDParamState&>(*sgd.state().at(stateKey(p)));
      EXPECT(sameEverywhere(m.momentum_buffer(), "check.momentum"));
      auto& a = static_cast<torch::optim::AdamParamState&>(*adam.state().at(stateKey(p)));
      EXPECT(a.step() == 1);
      EXPECT(sameEverywhere(a.exp_avg(), "check.exp_avg"));
      EXPECT(sameEverywhere(a.exp_avg_sq(), "check.exp_avg_sq"));
    }
    // Training on from the broadcast state keeps every rank in step.
    st::DistributedOptimizer dist(std::shared_ptr<torch::optim::Optimizer>(
                                      &adam, [](torch::optim::Optimizer*) {}),
                                  *net, {.namePrefix = "adam."});
    for (int s = 0; s < 3; ++s) {
      dist.zero_grad();
      torch::mse_loss(net->forward(x), y).backward();
      dist.step();
    }
    EXPECT(sameEverywhere(flat(*net), "check.adam"));
  }

  // backwardPassesPerStep = 2: two half batches accumulate locally, one allreduce.
  {
    auto [x, y] = dataOf(gRank, rows);
    st::DistributedOptimizer opt(
        std::make_shared<torch::optim::SGD>(net->parameters(),
                                            torch::optim::SGDOptions(0.05).momentum(0.9)),
        *net, {.backwardPassesPerStep = 2, .namePrefix = "bpps2."});
    for (int s = 0; s < 5; ++s) {
      opt.zero_grad();
      torch::mse_loss(net->forward(x.slice(0, 0, rows / 2)), y.slice(0, 0, rows / 2)).backward();
      torch::mse_loss(net->forward(x.slice(0, rows / 2)), y.slice(0, rows / 2)).backward();
      opt.step();
    }
    EXPECT(sameEverywhere(flat(*net), "check.bpps2"));
  }
  std::printf("rank %d of %d: torch train checks passed\n", gRank, n);
}

void int8Mode() {
  torch::manual_seed(3);
  auto exact = std::make_shared<Net>(64);
  auto int8 = std::make_shared<Net>(64);
  st::broadcastParameters(*exact, 0);
  copyParameters(*exact, *int8);
  auto crossCloud = [] {
    return skyring::runtime().stats().bytesOver(skyring::topology::LinkClass::crossCloud);
  };
  const auto b0 = crossCloud();
  const float exactLoss = trainDistributed(*exact, 15, {.compression = "none"}, 64);
  const auto b1 = crossCloud();
  const float int8Loss =
      trainDistributed(*int8, 15, {.compression = "int8", .namePrefix = "int8."}, 64);
  const auto b2 = crossCloud();
  EXPECT(sameEverywhere(flat(*exact), "check.exact"));
  EXPECT(sameEverywhere(flat(*int8), "check.int8"));
  EXPECT(!at::equal(flat(*exact), flat(*int8)));  // the codec was applied
  EXPECT(std::abs(int8Loss - exactLoss) < 0.05f * exactLoss + 1e-3f);
  std::printf("rank %d: exact loss %.5f, int8 loss %.5f; cross-cloud bytes exact %llu, int8 %llu\n",
              gRank, exactLoss, int8Loss, static_cast<unsigned long long>(b1 - b0),
              static_cast<unsigned long long>(b2 - b1));
  // Ranks that send across clouds send fewer bytes with int8 (the leaders; others none).
  if (b1 > b0) EXPECT(b2 - b1 < (b1 - b0) * 3 / 4);
  std::printf("rank %d of %d: torch int8 checks passed\n", gRank, skyring::size());
}

void mismatchMode() {
  const int last = skyring::size() - 1;
  auto net = std::make_shared<Net>(gRank == last ? 33 : 32);
  const std::string others = "ranks 0," + std::to_string(last - 2) + "," + std::to_string(last - 1);
  auto expectNamed = [&](const skyring::Error& e, const std::string& what) {
    const std::string msg = e.what();
    std::printf("rank %d: %s: %s\n", gRank, what.c_str(), msg.c_str());
    EXPECT(msg.find("fc1.weight") != std::string::npos);
    EXPECT(msg.find(others) != std::string::npos);
    EXPECT(msg.find("rank " + std::to_string(last) + " ") != std::string::npos);
  };
  bool threw = false;
  try {
    st::broadcastParameters(*net, 0);
  } catch (const skyring::TransportError& e) {
    threw = true;
    expectNamed(e, "broadcastParameters");
  }
  EXPECT(threw);
  st::DistributedOptimizer opt(
      std::make_shared<torch::optim::SGD>(net->parameters(), torch::optim::SGDOptions(0.1)), *net);
  auto [x, y] = dataOf(gRank, 8);
  torch::mse_loss(net->forward(x), y).backward();
  threw = false;
  try {
    opt.step();
  } catch (const skyring::TransportError& e) {
    threw = true;
    expectNamed(e, "step");
    EXPECT(std::string(e.what()).find("parameter 'fc1.weight'") != std::string::npos);
  }
  EXPECT(threw);
  std::printf("rank %d of %d: torch mismatch checks passed\n", gRank, skyring::size());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "train";
  skyring::init();
  gRank = skyring::rank();
  if (mode == "train") {
    trainMode();
  } else if (mode == "int8") {
    int8Mode();
  } else if (mode == "mismatch") {
    mismatchMode();
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  skyring::shutdown();
  return 0;
}
