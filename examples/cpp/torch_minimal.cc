// The smallest complete training program on skyring::torch (docs/libtorch.md): every rank
// trains one MLP on its own share of a synthetic regression task; DistributedOptimizer
// averages the gradients as backward produces them, so all ranks keep identical weights.
//
//   mpirun -np 2 ./torch_minimal            # or alone: ./torch_minimal
//   # two emulated clouds, int8 between them (one command line):
//   SKYRING_COMPRESSION=int8 mpirun -np 2 -x SKYRING_CLOUD=aws ./torch_minimal
//                                 : -np 2 -x SKYRING_CLOUD=gcp ./torch_minimal
#include <torch/torch.h>

#include <cstdio>
#include <memory>

#include <skyring/skyring.h>
#include <skyring/torch.h>

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

int main() {
  skyring::init();  // under mpirun, torchrun-style variables, or alone
  const int rank = skyring::rank();

  torch::manual_seed(rank);  // different data (and initial weights) on every rank
  torch::Tensor x = torch::randn({256, 8});
  torch::Tensor y = x.sum(1, /*keepdim=*/true).sin();

  auto model = std::make_shared<Net>();
  skyring::torch::broadcastParameters(*model, /*root=*/0);  // everyone starts from rank 0's
  // Gradients travel with the job's codec (SKYRING_COMPRESSION) unless options say otherwise.
  skyring::torch::DistributedOptimizer optimizer(
      std::make_shared<torch::optim::SGD>(model->parameters(),
                                          torch::optim::SGDOptions(0.05).momentum(0.9)),
      *model);

  for (int step = 0; step < 100; ++step) {
    optimizer.zero_grad();
    torch::Tensor loss = torch::mse_loss(model->forward(x), y);
    loss.backward();   // each gradient leaves for the allreduce as soon as it is ready
    optimizer.step();  // waits for the averaged gradients, then updates
    if (rank == 0 && step % 20 == 0) std::printf("step %3d  loss %.4f\n", step, loss.item<float>());
  }
  // The same weights everywhere: the average over ranks equals this rank's bits.
  torch::Tensor w = model->fc1->weight.detach();
  const bool same = torch::equal(skyring::torch::allreduce(w, "check.fc1.weight"), w);
  if (rank == 0)
    std::printf("%d ranks trained; weights identical on every rank: %s\n", skyring::size(),
                same ? "yes" : "NO");
  skyring::shutdown();
  return same ? 0 : 1;
}
