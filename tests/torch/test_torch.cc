// skyring::torch in one process (a world of one): dtype mapping, the errors for bad
// input, the collectives' plumbing (in and out of place, non-contiguous, 0-d, async) and
// DistributedOptimizer's hooks and misuse errors. The multirank behaviour is in
// train_main.cc under mpirun.
#include <gtest/gtest.h>
#include <torch/torch.h>

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

}  // namespace

int main(int argc, char** argv) {
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
