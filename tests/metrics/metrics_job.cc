// A short training-like job for the Prometheus scrape test (tests/metrics/prometheus_scrape.sh):
// every step allreduces three gradients through the engine (two small ones that fuse, one
// large one compressed with the job's codec), until the stop file appears or the time runs
// out, so that /metrics has bytes, latencies, queue depth and codec counts to show.
//
//   metrics_job STOP_FILE MAX_SECONDS
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "skyring/runtime.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s STOP_FILE MAX_SECONDS\n", argv[0]);
    return 2;
  }
  const std::string stopFile = argv[1];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(std::atoi(argv[2]));
  try {
    auto rt = skyring::Runtime::init();
    skyring::Engine& engine = rt->engine();
    std::vector<float> a(1000), b(5000), big(256 * 1024);
    int steps = 0;
    bool stop = false;
    while (!stop) {
      for (auto* v : {&a, &b, &big})
        std::fill(v->begin(), v->end(), static_cast<float>(rt->rank() + steps));
      skyring::AllreduceSpec grads{skyring::ReduceOp::avg};
      grads.compression = std::string(skyring::kDefaultCompression);
      auto ha = engine.allreduceAsync("a", skyring::Tensor::of(a), {skyring::ReduceOp::avg});
      auto hb = engine.allreduceAsync("b", skyring::Tensor::of(b), {skyring::ReduceOp::avg});
      auto hbig = engine.allreduceAsync("big", skyring::Tensor::of(big), grads);
      ha.wait();
      hb.wait();
      hbig.wait();
      ++steps;
      // Every rank stops at the same step: rank 0 decides, the others follow its flag.
      float flag = rt->rank() == 0 && (access(stopFile.c_str(), F_OK) == 0 ||
                                       std::chrono::steady_clock::now() > deadline)
                       ? 1.0f
                       : 0.0f;
      engine
          .allreduceAsync("stop", skyring::Tensor::of(std::span(&flag, 1)),
                          {skyring::ReduceOp::max})
          .wait();
      stop = flag > 0;
      // The machine is shared: leave it room (a training step does compute here).
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::printf("rank %d: %d steps, metrics on port %d\n", rt->rank(), steps, rt->metricsPort());
  } catch (const skyring::Error& e) {
    std::fprintf(stderr, "metrics_job: %s\n", e.what());
    return 1;
  }
  return 0;
}
