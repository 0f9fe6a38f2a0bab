// skyring::torch's tests, one binary (each translation unit that includes libtorch
// compiles slowly).
//
// Without arguments, GoogleTest in one process (a world of one): dtype mapping, the
// errors for bad input, the collectives' plumbing (in and out of place, non-contiguous,
// 0-d, async) and DistributedOptimizer's hooks and misuse errors.
//
// With a mode, one rank of a job under mpirun:
//   train     (4 ranks): the collectives' values (allgather of rank-different first
//             dimensions, a process set); broadcastParameters; DistributedOptimizer (SGD, momentum
//             0.9) on rank-different data leaves bit-identical parameters on every rank, equal (to
//             rounding) to one process training on the whole batch; broadcastOptimizerState
//             for SGD momentum and Adam with state only the root has; backwardPassesPerStep 2.
//   int8      (2 clouds, SKYRING_CLOUD per app context): the same training with int8 on the
//             cross-cloud hop: identical parameters everywhere, close to the exact run, and
//             fewer cross-cloud bytes than it.
//   mismatch  (4 ranks, rank 3's hidden layer wider): broadcastParameters and step() fail on
//             every rank with an error naming the parameter and the ranks.
// Exits non-zero (with a message naming the rank and check) on any failure.
#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "skyring/skyring.h"
#include "skyring/torch.h"

namespace st = skyring::torch;

namespace {

// The error message of what fn throws as E, or "" when it throws nothing (a failure).
template <typename E, typename Fn>
std::string messageOf(Fn&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

bool bitEqual(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

TEST(TorchDType, EveryDTypeRoundTrips) {
  for (skyring::DType d : skyring::kAllDTypes) {
    EXPECT_EQ(st::toDType(st::toScalarType(d)), d) << skyring::dtypeName(d);
    EXPECT_TRUE(st::isSupported(st::toScalarType(d)));
  }
  EXPECT_EQ(st::toDType(at::kFloat), skyring::DType::f32);
  EXPECT_EQ(st::toDType(at::kBFloat16), skyring::DType::bf16);
  EXPECT_EQ(st::toDType(at::kChar), skyring::DType::i8);
  EXPECT_EQ(st::toDType(at::kByte), skyring::DType::u8);
}

TEST(TorchDType, UnsupportedDTypesAreNamed) {
  for (at::ScalarType t : {at::kBool, at::kComplexFloat, at::kShort}) {
    EXPECT_FALSE(st::isSupported(t));
    const std::string msg = messageOf<skyring::InvalidArgument>([&] { st::toDType(t); });
    EXPECT_NE(msg.find(std::string("torch dtype ") + c10::toString(t)), std::string::npos) << msg;
  }
  at::Tensor b = at::ones({3}, at::kBool);
  const std::string msg = messageOf<skyring::InvalidArgument>([&] { st::allreduce(b, "b"); });
  EXPECT_NE(msg.find("Bool"), std::string::npos) << msg;
}

TEST(TorchCollectives, BadTensorsAreRefused) {
  at::Tensor undefined;
  EXPECT_THROW(st::allreduce(undefined, "u"), skyring::InvalidArgument);
  at::Tensor meta = at::empty({4}, at::device(at::kMeta));
  std::string msg = messageOf<skyring::InvalidArgument>([&] { st::allreduce(meta, "m"); });
  EXPECT_NE(msg.find("host (CPU) tensors only"), std::string::npos) << msg;
  at::Tensor sparse = at::ones({2, 2}).to_sparse();
  msg = messageOf<skyring::InvalidArgument>([&] { st::broadcast(sparse, 0, "s"); });
  EXPECT_NE(msg.find("dense"), std::string::npos) << msg;
  at::Tensor t = at::ones({2, 3}).t();  // non-contiguous
  msg = messageOf<skyring::InvalidArgument>([&] { st::allreduceAsync_(t, "t"); });
  EXPECT_NE(msg.find("contiguous"), std::string::npos) << msg;
  EXPECT_THROW(st::broadcastAsync_(t, 0, "t"), skyring::InvalidArgument);
  EXPECT_THROW(st::broadcast(at::ones({2}), 1, "root"), skyring::InvalidArgument);
}

TEST(TorchCollectives, AllreduceInAndOutOfPlace) {
  at::Tensor x = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor y = st::allreduce(x, "ar.out");
  EXPECT_TRUE(bitEqual(x, y));  // the average over one rank
  EXPECT_NE(x.data_ptr(), y.data_ptr());
  at::Tensor z = x.clone();
  EXPECT_EQ(&st::allreduce_(z, "ar.in", {skyring::ReduceOp::sum}), &z);
  EXPECT_TRUE(bitEqual(x, z));
  // Non-contiguous in place goes through a copy and back.
  at::Tensor big = at::arange(24, at::kDouble).reshape({4, 6});
  at::Tensor view = big.t();
  st::allreduce_(view, "ar.t", {skyring::ReduceOp::max});
  EXPECT_TRUE(bitEqual(big, at::arange(24, at::kDouble).reshape({4, 6})));
  // Every dtype, 0-d, empty, and async with and without a name.
  for (skyring::DType d : skyring::kAllDTypes) {
    at::Tensor t = at::ones({5}, st::toScalarType(d));
    EXPECT_TRUE(bitEqual(st::allreduce(t, {}, {skyring::ReduceOp::sum}), t));
  }
  at::Tensor scalar = at::scalar_tensor(3.5);
  EXPECT_TRUE(bitEqual(st::allreduce(scalar, "ar.0d"), scalar));
  EXPECT_EQ(st::allreduce(at::empty({0, 3}), "ar.empty").sizes(), (at::IntArrayRef{0, 3}));
  st::TensorHandle h = st::allreduceAsync(x, "ar.async");
  EXPECT_TRUE(bitEqual(h.wait(), x));
  EXPECT_TRUE(bitEqual(h.wait(), x));  // the same result again
  at::Tensor w = x.clone();
  st::allreduceAsync_(w, "ar.async_").wait();
  EXPECT_TRUE(bitEqual(w, x));
}

TEST(TorchCollectives, AllgatherAndBroadcast) {
  at::Tensor x = at::arange(6, at::kLong).reshape({2, 3});
  EXPECT_TRUE(bitEqual(st::allgather(x, "ag"), x));
  EXPECT_TRUE(bitEqual(st::allgather(x.t(), "ag.t"), x.t().contiguous()));
  at::Tensor s = st::allgather(at::scalar_tensor(2.0f), "ag.0d");
  EXPECT_EQ(s.sizes(), (at::IntArrayRef{1}));
  EXPECT_TRUE(bitEqual(st::allgatherAsync(x, "ag.async").wait(), x));
  EXPECT_TRUE(bitEqual(st::broadcast(x, 0, "bc"), x));
  at::Tensor y = x.clone();
  st::broadcast_(y, 0, "bc.in");
  EXPECT_TRUE(bitEqual(y, x));
  EXPECT_TRUE(bitEqual(st::broadcastAsync(x, 0, "bc.async").wait(), x));
}

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 2));
    unused = register_module("unused", torch::nn::Linear(2, 2));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2->forward(torch::relu(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, unused{nullptr};
};

TEST(TorchOptimizer, MatchesThePlainOptimizerInAWorldOfOne) {
  torch::manual_seed(1);
  auto a = std::make_shared<Net>();
  auto b = std::make_shared<Net>();
  for (std::size_t i = 0; i < a->parameters().size(); ++i) {
    torch::NoGradGuard g;
    b->parameters()[i].copy_(a->parameters()[i]);
  }
  auto opts = torch::optim::SGDOptions(0.1).momentum(0.9);
  torch::optim::SGD plain(b->parameters(), opts);
  st::DistributedOptimizer dist(std::make_shared<torch::optim::SGD>(a->parameters(), opts), *a,
                                {.namePrefix = "unit."});
  EXPECT_EQ(dist.gradientNames().front(), "unit.fc1.weight");
  at::Tensor x = torch::randn({16, 4});
  at::Tensor t = torch::randn({16, 2});
  for (int step = 0; step < 5; ++step) {
    dist.zero_grad();
    torch::mse_loss(a->forward(x), t).backward();
    dist.step();
    plain.zero_grad();
    torch::mse_loss(b->forward(x), t).backward();
    plain.step();
  }
  for (std::size_t i = 0; i < a->parameters().size(); ++i)
    EXPECT_TRUE(bitEqual(a->parameters()[i], b->parameters()[i])) << i;
  // The unused layer's gradient was submitted as zeros at step().
  ASSERT_TRUE(a->unused->weight.grad().defined());
  EXPECT_EQ(a->unused->weight.grad().abs().sum().item<float>(), 0.0f);
}

TEST(TorchOptimizer, MisuseIsReported) {
  auto net = std::make_shared<Net>();
  auto sgd = std::make_shared<torch::optim::SGD>(net->parameters(), 0.1);
  std::string msg = messageOf<skyring::InvalidArgument>([&] {
    st::DistributedOptimizer(sgd, st::NamedParameters{{"w", net->fc1->weight}});
  });
  EXPECT_NE(msg.find("does not name"), std::string::npos) << msg;
  msg = messageOf<skyring::InvalidArgument>([&] {
    st::DistributedOptimizer(sgd,
                             st::NamedParameters{{"w", net->fc1->weight}, {"w", net->fc1->bias}});
  });
  EXPECT_NE(msg.find("'w' appears twice"), std::string::npos) << msg;
  EXPECT_THROW(st::DistributedOptimizer(sgd, *net, {.backwardPassesPerStep = 0}),
               skyring::InvalidArgument);

  st::DistributedOptimizer opt(sgd, *net);
  at::Tensor x = torch::randn({4, 4});
  net->forward(x).sum().backward();
  // Gradients in flight: zero_grad() would race with their allreduce.
  msg = messageOf<skyring::InvalidArgument>([&] { opt.zero_grad(); });
  EXPECT_NE(msg.find("zero_grad() was called after backward"), std::string::npos) << msg;
  // A second backward before step() (backwardPassesPerStep = 1): the hook's error comes
  // out of backward() with its type.
  msg = messageOf<skyring::InvalidArgument>([&] { net->forward(x).sum().backward(); });
  EXPECT_NE(msg.find("more than backwardPassesPerStep (1) times before step()"), std::string::npos)
      << msg;
  opt.step();
  opt.zero_grad();
  net->forward(x).sum().backward();
  opt.step();

  // backwardPassesPerStep = 2: two passes accumulate, the third before step() is refused.
  auto net2 = std::make_shared<Net>();
  st::DistributedOptimizer opt2(std::make_shared<torch::optim::SGD>(net2->parameters(), 0.1), *net2,
                                {.backwardPassesPerStep = 2, .namePrefix = "two."});
  net2->forward(x).sum().backward();
  net2->forward(x).sum().backward();
  EXPECT_THROW(net2->forward(x).sum().backward(), skyring::InvalidArgument);
  opt2.step();
}

TEST(TorchOptimizer, BroadcastsAtTheRoot) {
  auto net = std::make_shared<Net>();
  at::Tensor before = net->fc1->weight.clone();
  st::broadcastParameters(*net, 0);
  EXPECT_TRUE(bitEqual(before, net->fc1->weight));
  torch::optim::Adam adam(net->parameters(), 0.01);
  st::broadcastOptimizerState(adam, 0);  // the root keeps its own
  EXPECT_THROW(st::broadcastParameters(*net, 3), skyring::InvalidArgument);
}

// ---- the modes under mpirun ----

int gRank = 0;

#define EXPECT(cond)                                                                          \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "rank %d: check failed at line %d: %s\n", gRank, __LINE__, #cond); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

struct MlpNet : torch::nn::Module {
  explicit MlpNet(int hidden = 32) {
    fc1 = register_module("fc1", torch::nn::Linear(16, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2->forward(torch::tanh(fc1->forward(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// Every parameter of net flattened into one vector.
at::Tensor flat(torch::nn::Module& net) {
  std::vector<at::Tensor> parts;
  for (const auto& p : net.parameters())
    parts.push_back(p.detach().reshape({-1}));
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
float trainDistributed(MlpNet& net, int steps, st::DistributedOptimizerOptions options, int rows) {
  auto [x, y] = dataOf(gRank, rows);
  st::DistributedOptimizer opt(std::make_shared<torch::optim::SGD>(
                                   net.parameters(), torch::optim::SGDOptions(0.05).momentum(0.9)),
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

// The collectives across ranks: values, an allgather whose first dimension differs per
// rank, a non-root broadcast, async forms, and a process set of two ranks.
void collectivesAcrossRanks() {
  const int n = skyring::size();
  const double r = gRank;
  at::Tensor x = at::full({2, 3}, r + 1, at::kDouble);
  EXPECT(at::equal(st::allreduce(x, "x.sum", {skyring::ReduceOp::sum}),
                   at::full({2, 3}, n * (n + 1) / 2.0, at::kDouble)));
  at::Tensor avg = x.t();  // non-contiguous, in place
  st::allreduce_(avg, "x.avg");
  EXPECT(at::equal(avg, at::full({3, 2}, (n + 1) / 2.0, at::kDouble)));
  // rank k contributes k + 1 rows of value k
  at::Tensor rows = at::full({gRank + 1, 2}, gRank, at::kInt);
  at::Tensor all = st::allgatherAsync(rows, "rows").wait();
  EXPECT(all.size(0) == n * (n + 1) / 2 && all.size(1) == 2);
  for (int k = 0, row = 0; k < n; row += ++k)
    EXPECT(at::equal(all.slice(0, row, row + k + 1), at::full({k + 1, 2}, k, at::kInt)));
  at::Tensor b = at::full({5}, r, at::kFloat);
  st::broadcastAsync_(b, 2, "b").wait();
  EXPECT(at::equal(b, at::full({5}, 2.0, at::kFloat)));
  skyring::ProcessSet pair = skyring::addProcessSet({1, 3});
  if (pair.included()) {
    at::Tensor s =
        st::allreduce(at::full({4}, r, at::kLong), "pair", {skyring::ReduceOp::sum}, pair);
    EXPECT(at::equal(s, at::full({4}, 4, at::kLong)));
  }
  skyring::removeProcessSet(pair);
}

void trainMode() {
  const int n = skyring::size();
  collectivesAcrossRanks();
  // Different initial weights per rank; broadcastParameters makes them root's.
  torch::manual_seed(static_cast<std::uint64_t>(1 + gRank));
  auto net = std::make_shared<MlpNet>();
  EXPECT(!sameEverywhere(flat(*net), "check.init"));
  st::broadcastParameters(*net, 0);
  EXPECT(sameEverywhere(flat(*net), "check.broadcast"));

  // One process training on every rank's data at once takes the same steps: the average
  // of the ranks' mean-loss gradients is the whole batch's mean-loss gradient.
  auto reference = std::make_shared<MlpNet>();
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
    st::DistributedOptimizer dist(adam, *net, {.namePrefix = "adam."});  // borrowed
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

  // A layer only the even ranks use: the odd ranks' hooks never fire for it, step()
  // submits zeros for them, and every rank still ends with the same weights.
  {
    auto [x, y] = dataOf(gRank, rows);
    torch::nn::Linear extra(4, 4);
    st::broadcastParameters(*extra, 0);
    st::NamedParameters named = st::namedParameters(*net);
    for (const auto& [name, p] : st::namedParameters(*extra))
      named.emplace_back("extra." + name, p);
    std::vector<at::Tensor> params = net->parameters();
    for (const auto& p : extra->parameters())
      params.push_back(p);
    st::DistributedOptimizer opt(std::make_shared<torch::optim::SGD>(params, 0.05), named,
                                 {.namePrefix = "unused."});
    for (int s = 0; s < 3; ++s) {
      opt.zero_grad();
      at::Tensor out = net->forward(x);
      if (gRank % 2 == 0) out = extra->forward(out);
      torch::mse_loss(out, y).backward();
      opt.step();
    }
    EXPECT(sameEverywhere(flat(*net), "check.unused.net"));
    EXPECT(sameEverywhere(flat(*extra), "check.unused.extra"));
  }
  std::printf("rank %d of %d: torch train checks passed\n", gRank, n);
}

void int8Mode() {
  torch::manual_seed(3);
  auto exact = std::make_shared<MlpNet>(64);
  auto int8 = std::make_shared<MlpNet>(64);
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
  auto net = std::make_shared<MlpNet>(gRank == last ? 33 : 32);
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
  const std::string mode = argc > 1 && argv[1][0] != '-' ? argv[1] : "";
  if (!mode.empty()) {
    skyring::init();
    gRank = skyring::rank();
    if (mode == "train") {
      trainMode();
    } else if (mode == "int8") {
      int8Mode();
    } else if (mode == "mismatch") {
      mismatchMode();
    } else {
      std::fprintf(stderr, "unknown mode %s (train, int8, mismatch)\n", mode.c_str());
      return 2;
    }
    skyring::shutdown();
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  // Before init: every call is refused.
  try {
    st::allreduce(at::ones({2}), "x");
    std::fprintf(stderr, "allreduce before init did not throw\n");
    return 1;
  } catch (const skyring::InvalidArgument&) {
  }
  skyring::init();
  const int rc = RUN_ALL_TESTS();
  skyring::shutdown();
  return rc;
}
