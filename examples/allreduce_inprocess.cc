// The first skyring program: N ranks as threads of this process (standing in for N
// nodes), each contributing a gradient-like vector, allreduce-averaged over the ring.
//
//   allreduce_inprocess [ranks=4] [count=1000000]
//
// ranks: 1 to 256; count: floats per rank, 0 to 2^30, and all ranks' together must fit in
// half of the machine's memory. Exit status: 0 when every rank got the exact average, 1
// when a rank failed or got a wrong result, 2 for a bad argument or SKYRING_* setting.
//
// Later versions of the demo run the same calls across processes (mpirun) and clouds.
#include <chrono>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cli.h"
#include "skyring/skyring.h"

namespace {

constexpr const char* kUsage =
    "allreduce_inprocess [ranks (1-256, default 4)] [count (floats "
    "per rank, 0-1073741824, default 1000000)]";

int demo(int argc, char** argv) {
  namespace cli = skyring::cli;
  for (int i = 1; i < argc; ++i)
    if (cli::isHelp(argv[i])) throw cli::Help{};
  if (argc > 3) cli::fail("expected at most 2 arguments, got ", argc - 1);
  const int ranks = argc > 1 ? static_cast<int>(cli::integer("ranks", argv[1], 1, 256)) : 4;
  const auto count =
      argc > 2 ? static_cast<std::size_t>(cli::integer("count", argv[2], 0, 1ll << 30)) : 1000000;
  cli::checkFits(std::to_string(ranks) + " ranks x " + std::to_string(count) + " floats",
                 static_cast<long double>(ranks) * count * sizeof(float));
  const skyring::Config config = cli::environment();

  skyring::transport::InProcessWorld world(ranks);
  std::vector<std::thread> threads;
  std::vector<int> ok(static_cast<std::size_t>(ranks), 0);
  std::vector<double> seconds(static_cast<std::size_t>(ranks), 0);
  std::mutex mu;
  std::string failure;  // the first rank's error: the others' usually echo it
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      const auto transport = world.transport(r);
      try {
        skyring::Communicator comm(transport, config);
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
      } catch (const std::exception& e) {
        // No exception may leave a thread: abort the group so nobody waits for this rank.
        transport->abort(skyring::ErrorKind::aborted, e.what());
        std::lock_guard lock(mu);
        if (failure.empty()) failure = e.what();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  if (!failure.empty()) throw std::runtime_error(failure);
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

}  // namespace

int main(int argc, char** argv) {
  return skyring::cli::run("allreduce_inprocess", kUsage, [&] { return demo(argc, argv); });
}
