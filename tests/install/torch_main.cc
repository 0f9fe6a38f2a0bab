// Links only the installed skyring::torch (find_package(skyring COMPONENTS torch)): a world
// of one allreduces a tensor and steps a DistributedOptimizer. It includes skyring/torch.h
// and libtorch's smaller headers only, to keep this translation unit quick to compile.
#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include <cstdio>
#include <memory>

#include <skyring/skyring.h>
#include <skyring/torch.h>

int main() {
  skyring::init(skyring::Config{});  // a world of one, whatever the environment says
  at::Tensor x = at::ones({3, 2});
  const bool reduced = at::equal(skyring::torch::allreduce(x, "x"), x);
  torch::nn::Linear fc(2, 1);
  skyring::torch::DistributedOptimizer opt(
      std::make_shared<torch::optim::SGD>(fc->parameters(), 0.1), *fc);
  opt.zero_grad();
  fc->forward(x).sum().backward();
  opt.step();
  skyring::shutdown();
  std::printf("installed skyring::torch: %s\n", reduced ? "OK" : "WRONG");
  return reduced ? 0 : 1;
}
