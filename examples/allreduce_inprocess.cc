// The first skyring program: N ranks as threads of this process (standing in for N
// nodes), each contributing a gradient-like vector, allreduce-averaged over the ring.
//
//   allreduce_inprocess [ranks=4] [count=1000000]
//
// Later versions of the demo run the same calls across processes (mpirun) and clouds.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "skyring/skyring.h"

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 4;
  const std::size_t count = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1000000;
  if (ranks < 1) {
    std::fprintf(stderr, "usage: %s [ranks>=1] [count]\n", argv[0]);
    return 2;
  }
  skyring::transport::InProcessWorld world(ranks);
  const skyring::Config config = skyring::Config::fromEnvironment();
  std::vector<std::thread> threads;
  std::vector<int> ok(static_cast<std::size_t>(ranks), 0);
  std::vector<double> seconds(static_cast<std::size_t>(ranks), 0);
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        skyring::Communicator comm(world.transport(r), config);
        // Rank r's "gradient": element i is r + i % 3. The average over ranks is
        // (ranks - 1) / 2 + i % 3.
        std::vector<float> grad(count);
        for (std::size_t i = 0; i < count; ++i)
          grad[i] = static_cast<float>(r) + static_cast<float>(i % 3);
        comm.barrier();
        const auto start = std::chrono::steady_clock::now();
        comm.allreduce(skyring::view(std::span(grad)), skyring::ReduceOp::avg);
        seconds[static_cast<std::size_t>(r)] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        bool good = true;
        for (std::size_t i = 0; i < count; ++i) {
          good &= grad[i] == static_cast<float>(ranks - 1) / 2.0f + static_cast<float>(i % 3);
        }
        ok[static_cast<std::size_t>(r)] = good ? 1 : 0;
      } catch (const skyring::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
    });
  }
  for (auto& t : threads)
    t.join();
  int good = 0;
  for (int v : ok)
    good += v;
  std::printf(
      "skyring %s: allreduce(avg) of %zu floats over %d in-process ranks: %s "
      "(%.2f ms, %d/%d ranks exact)\n",
      skyring::versionString(), count, ranks, good == ranks ? "OK" : "WRONG", seconds[0] * 1e3,
      good, ranks);
  return good == ranks ? 0 : 1;
}
