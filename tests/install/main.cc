// Links only the installed skyring: three in-process ranks allreduce and broadcast, directly
// and through the engine; then the process-wide API alone.
#include <cstdio>
#include <thread>
#include <vector>

#include <skyring/skyring.h>

int main() {
  skyring::transport::InProcessWorld world(3);
  std::vector<std::thread> threads;
  std::vector<int> ok(3, 0);
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      skyring::Communicator comm(world.transport(r));
      std::vector<double> v(1000, r + 1.0);
      comm.allreduce(skyring::view(std::span(v)), skyring::ReduceOp::sum);
      std::vector<std::int32_t> b(5, r == 2 ? 42 : 0);
      comm.broadcast(skyring::view(std::span(b)), 2);
      skyring::Engine engine(comm);
      std::vector<float> g(7, 1.0f);
      engine.allreduceAsync("g", skyring::Tensor::of(g)).wait();
      ok[r] = v[999] == 6.0 && b[4] == 42 && g[6] == 3.0f;
    });
  }
  for (auto& t : threads)
    t.join();
  skyring::init(skyring::Config{});  // a world of one, whatever the environment says
  std::vector<double> alone(4, 2.0);
  skyring::allreduceAsync("alone", skyring::Tensor::of(alone)).wait();
  skyring::shutdown();
  const bool good = ok[0] && ok[1] && ok[2] && alone[3] == 2.0;
  std::printf("installed skyring %s: %s\n", skyring::versionString(), good ? "OK" : "WRONG");
  return good ? 0 : 1;
}
