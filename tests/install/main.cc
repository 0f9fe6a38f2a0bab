// Links only the installed skyring: three in-process ranks allreduce and broadcast.
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
      ok[r] = v[999] == 6.0 && b[4] == 42;
    });
  }
  for (auto& t : threads)
    t.join();
  const bool good = ok[0] && ok[1] && ok[2];
  std::printf("installed skyring %s: %s\n", skyring::versionString(), good ? "OK" : "WRONG");
  return good ? 0 : 1;
}
