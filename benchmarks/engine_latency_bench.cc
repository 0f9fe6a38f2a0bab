// engine_latency_bench: what the engine adds to a step's data time, with ranks as threads of
// one process (in-process transport), beside one allreduce of the whole buffer in the same
// run (the lower bound: no negotiation, no fusion copies).
//
//   engine_latency_bench --overhead [--ranks N] [--tensors 1000] [--bytes 4K]
//     N ranks (default 4), unshaped: per-tensor engine overhead, (engine - flat) / tensors,
//     in microseconds (issue 12's target: at most 5 us per 4 KiB tensor).
//   engine_latency_bench --wan GxC [--latency-ms 40] [--link-gbit 1] [--tensors 100]
//                        [--bytes 64K]
//     G clouds of C ranks, the cross-cloud hop shaped by ShapingTransport (one-way latency,
//     bandwidth per rank): the step in steady state (the response cache warm) against one
//     hierarchical allreduce of the whole buffer (target: within 1.2x).
//
// Each rank submits every tensor of the step (in reverse order, as backward hooks do) and
// waits for all; a step's time is the slowest rank's, from a barrier to its last handle.
// The table gives medians over -n steps after -w warmup steps (default 20 and 3). Both
// modes check the sums (every element of every tensor) and print #wrong.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cli.h"
#include "skyring/communicator.h"
#include "skyring/engine.h"
#include "skyring/inprocess_transport.h"
#include "skyring/shaping_transport.h"
#include "skyring/topology.h"

namespace {

using namespace skyring;
namespace cli = skyring::cli;
using Clock = std::chrono::steady_clock;

struct Options {
  bool wan = false;
  int clouds = 1;
  int ranksPerCloud = 4;
  int tensors = 1000;
  std::size_t bytes = 4096;
  double latencyMs = 40;
  double linkGbit = 1;
  int iters = 20;
  int warmup = 3;
};

constexpr const char* kUsage =
    "engine_latency_bench --overhead [--ranks N] | --wan GxC [--latency-ms L] [--link-gbit R] "
    "[--tensors T] [--bytes B] [-n STEPS] [-w WARMUP]";

Options parse(int argc, char** argv) {
  Options o;
  bool mode = false;
  bool tensorsGiven = false;
  bool bytesGiven = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (cli::isHelp(a)) throw cli::Help{};
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) cli::fail(a, ": missing value");
      return argv[++i];
    };
    if (a == "--overhead") {
      mode = true;
    } else if (a == "--wan") {
      mode = true;
      o.wan = true;
      std::tie(o.clouds, o.ranksPerCloud) = cli::shape("--wan", value(), 16, 16, 64);
    } else if (a == "--ranks") {
      o.ranksPerCloud = static_cast<int>(cli::integer("--ranks", value(), 1, 64));
    } else if (a == "--tensors") {
      o.tensors = static_cast<int>(cli::integer("--tensors", value(), 1, 100000));
      tensorsGiven = true;
    } else if (a == "--bytes") {
      o.bytes = cli::bytes("--bytes", value(), 4, std::size_t{256} << 20);
      bytesGiven = true;
    } else if (a == "--latency-ms") {
      o.latencyMs = cli::number("--latency-ms", value(), 0, 10000);
    } else if (a == "--link-gbit") {
      o.linkGbit = cli::number("--link-gbit", value(), 0, 1000, /*minExclusive=*/true);
    } else if (a == "-n") {
      o.iters = static_cast<int>(cli::integer("-n", value(), 1, 100000));
    } else if (a == "-w") {
      o.warmup = static_cast<int>(cli::integer("-w", value(), 0, 100000));
    } else {
      cli::fail("unknown argument '", a, "'");
    }
  }
  if (!mode) cli::fail("give --overhead or --wan GxC");
  if (o.wan && !tensorsGiven) o.tensors = 100;
  if (o.wan && !bytesGiven) o.bytes = 64 * 1024;
  if (o.bytes % sizeof(float) != 0) cli::fail("--bytes: ", o.bytes, " is not whole floats");
  cli::checkFits("the tensors of every rank",
                 static_cast<long double>(o.bytes) * o.tensors * o.clouds * o.ranksPerCloud * 2);
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A barrier the threads of this process meet at; returns when all n have arrived.
class ThreadBarrier {
 public:
  explicit ThreadBarrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock lock(mu_);
    const int generation = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int arrived_ = 0;
  int generation_ = 0;
};

struct Results {
  std::mutex mu;
  std::vector<std::vector<double>> engine, flat;  // [step][rank] seconds
  long wrong = 0;
  std::string failure;
};

// One rank: alternating steps of the engine and of the flat allreduce, so that both see
// the same machine.
void rank(const Options& o, Communicator& comm, ThreadBarrier& sync, Results& out) {
  const int n = comm.size();
  const std::size_t count = o.bytes / sizeof(float);
  std::vector<std::vector<float>> grads(static_cast<std::size_t>(o.tensors),
                                        std::vector<float>(count));
  std::vector<float> flat(count * static_cast<std::size_t>(o.tensors));
  std::vector<std::string> names;
  for (int t = 0; t < o.tensors; ++t)
    names.push_back("layer" + std::to_string(t) + ".grad");
  Engine engine(comm);
  long wrong = 0;
  const float mine = static_cast<float>(comm.rank() + 1);
  const float want = static_cast<float>(n * (n + 1) / 2);
  for (int step = 0; step < o.warmup + o.iters; ++step) {
    for (auto& g : grads)
      std::fill(g.begin(), g.end(), mine);
    sync.wait();
    auto begin = Clock::now();
    std::vector<Handle> handles;
    handles.reserve(grads.size());
    for (int t = o.tensors - 1; t >= 0; --t) {
      handles.push_back(engine.allreduceAsync(names[static_cast<std::size_t>(t)],
                                              Tensor::of(grads[static_cast<std::size_t>(t)])));
    }
    for (auto& h : handles)
      h.wait();
    const double engineSeconds = std::chrono::duration<double>(Clock::now() - begin).count();
    for (const auto& g : grads)
      wrong += std::count_if(g.begin(), g.end(), [&](float v) { return v != want; });

    std::fill(flat.begin(), flat.end(), mine);
    sync.wait();
    begin = Clock::now();
    comm.allreduce(view(std::span(flat)), ReduceOp::sum);
    const double flatSeconds = std::chrono::duration<double>(Clock::now() - begin).count();
    wrong += std::count_if(flat.begin(), flat.end(), [&](float v) { return v != want; });
    if (step >= o.warmup) {
      std::lock_guard lock(out.mu);
      const auto s = static_cast<std::size_t>(step - o.warmup);
      out.engine[s][static_cast<std::size_t>(comm.rank())] = engineSeconds;
      out.flat[s][static_cast<std::size_t>(comm.rank())] = flatSeconds;
    }
  }
  engine.shutdown();
  std::lock_guard lock(out.mu);
  out.wrong += wrong;
}

int run(const Options& o) {
  const int n = o.clouds * o.ranksPerCloud;
  std::vector<topology::RankRecord> records;
  for (int r = 0; r < n; ++r) {
    const std::string cloud = "cloud" + std::to_string(r / o.ranksPerCloud);
    records.push_back({cloud + "-node" + std::to_string(r), cloud, ""});
  }
  Config config = cli::environment();
  config.crossCloudLink.gbitPerSec = o.linkGbit;
  config.crossCloudLink.latencyMs = o.latencyMs;
  auto topo =
      std::make_shared<const topology::Topology>(std::move(records), topology::CostModel(config));
  transport::LinkShapes shapes{};
  shapes[topology::index(topology::LinkClass::crossCloud)] = {
      o.linkGbit * 1e9 / 8, std::chrono::duration_cast<transport::Clock::duration>(
                                std::chrono::duration<double, std::milli>(o.latencyMs))};
  transport::InProcessWorld world(n);
  ThreadBarrier sync(n);
  Results results;
  results.engine.assign(static_cast<std::size_t>(o.iters), std::vector<double>(n));
  results.flat.assign(static_cast<std::size_t>(o.iters), std::vector<double>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      std::shared_ptr<transport::Transport> t = world.transport(r);
      if (o.wan) t = std::make_shared<transport::ShapingTransport>(t, topo, shapes);
      try {
        Communicator comm(t, config, nullptr, o.wan ? topo : nullptr);
        rank(o, comm, sync, results);
      } catch (const std::exception& e) {
        t->abort(ErrorKind::aborted, e.what());
        std::lock_guard lock(results.mu);
        if (results.failure.empty()) results.failure = e.what();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  if (!results.failure.empty()) throw std::runtime_error(results.failure);
  std::vector<double> engineSteps, flatSteps;
  for (int s = 0; s < o.iters; ++s) {
    engineSteps.push_back(*std::max_element(results.engine[static_cast<std::size_t>(s)].begin(),
                                            results.engine[static_cast<std::size_t>(s)].end()));
    flatSteps.push_back(*std::max_element(results.flat[static_cast<std::size_t>(s)].begin(),
                                          results.flat[static_cast<std::size_t>(s)].end()));
  }
  const double e = median(engineSteps) * 1e3;
  const double f = median(flatSteps) * 1e3;
  std::printf(
      "# engine_latency_bench: %s, %d ranks (%dx%d), %d tensors of %s, f32 sum, "
      "median of %d steps after %d warmup (ms; a step's time is the slowest rank's)\n",
      o.wan ? "shaped cross-cloud hop" : "unshaped", n, o.clouds, o.ranksPerCloud, o.tensors,
      cli::formatBytes(o.bytes).c_str(), o.iters, o.warmup);
  if (o.wan) {
    std::printf("# cross-cloud link: %.1f ms one way, %.2f Gbit/s per rank\n", o.latencyMs,
                o.linkGbit);
  }
  std::printf("%10s %10s %8s %14s %8s\n", "engine", "flat", "x flat", "us/tensor more", "#wrong");
  std::printf("%10.3f %10.3f %8.2f %14.2f %8ld\n", e, f, e / f, (e - f) * 1e3 / o.tensors,
              results.wrong);
  return results.wrong == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run("engine_latency_bench", kUsage, [&] { return run(parse(argc, argv)); });
}
