// engine_bench: one training step's gradient allreduce through skyring's engine, for the
// gradient lists of ResNet-50 and BERT-base (benchmarks/model_shapes.h), beside its peers
// in the same run.
//
//   mpirun -np 4 --oversubscribe engine_bench [--models resnet50,bert-base] [-n 10] [-w 2]
//          [--order backward|random] [--peers flat,mpi] [--gloo FILE] [--compression SPEC]
//   engine_bench --print-shapes > shapes.json     (for gloo_engine_peer.py; no job)
//
// A step: every rank fills its gradients, the ranks meet at a barrier, then each submits
// every tensor with skyring::allreduceAsync (sum) and waits for all of them. With
// --order backward (the default) the tensors go in reverse order (as backward hooks fire),
// each rank's list shuffled within windows of 8 by a seed of its own, so no two ranks
// submit in the same order; --order random shuffles each rank's whole list. Peers, timed
// in the same steps, on the same buffer: "flat", one skyring allreduce of the whole
// gradient buffer (the lower bound: no negotiation, no fusion copies); "mpi", one
// MPI_Allreduce per tensor in reverse order (what a naive program does; only under
// mpirun); "gloo", read from FILE, which benchmarks/gloo_engine_peer.py wrote from the
// same shapes (torch.distributed Gloo with DDP-style buckets). Time: per step the maximum
// over ranks; the median over the -n timed steps after -w warmup steps. "x flat" is the
// engine's time over the flat allreduce's; "peer/sky" a peer's time over the engine's
// (above 1: the engine is faster). #wrong counts wrong elements of one checked step.
// --compression SPEC: every gradient asks for that codec (AllreduceSpec::compression, as
// the frontends pass SKYRING_COMPRESSION for gradients), and the flat allreduce too
// (CollectiveOptions::compression); #wrong then counts elements off by more than 1%.
//
// A bad argument or SKYRING_* setting exits 2 with the usage, a failed run 1 (cli.h).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "model_shapes.h"
#include "skyring/skyring.h"

namespace {

using namespace skyring;
namespace cli = skyring::cli;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "mpirun -np N engine_bench [--models resnet50,bert-base] [-n STEPS] [-w WARMUP] "
    "[--order backward|random] [--peers flat,mpi] [--gloo FILE] [--compression SPEC] "
    "[--seed S] | "
    "engine_bench --print-shapes";

struct Options {
  std::vector<bench::Model> models = bench::allModels();
  int steps = 10;
  int warmup = 2;
  bool randomOrder = false;
  bool peerMpi = true;
  std::string glooFile;
  std::string compression;  // empty: full precision
  unsigned seed = 1;
  bool printShapes = false;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (cli::isHelp(a)) throw cli::Help{};
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) cli::fail("option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--models") {
      const auto all = bench::allModels();
      o.models.clear();
      for (const std::string& name : cli::list("--models", next())) {
        const auto it = std::find_if(all.begin(), all.end(),
                                     [&](const bench::Model& m) { return m.name == name; });
        if (it == all.end())
          cli::fail("--models: unknown model '", name, "' (resnet50, bert-base)");
        o.models.push_back(*it);
      }
    } else if (a == "-n") {
      o.steps = static_cast<int>(cli::integer("-n", next(), 1, 100000));
    } else if (a == "-w") {
      o.warmup = static_cast<int>(cli::integer("-w", next(), 0, 100000));
    } else if (a == "--order") {
      const std::string order = next();
      if (order != "backward" && order != "random") {
        cli::fail("--order: '", order, "' is neither backward nor random");
      }
      o.randomOrder = order == "random";
    } else if (a == "--peers") {
      o.peerMpi = false;
      for (const std::string& peer : cli::list("--peers", next())) {
        if (peer == "mpi") {
          o.peerMpi = true;
        } else if (peer != "flat") {
          cli::fail("--peers: unknown peer '", peer, "' (flat, mpi; gloo comes from --gloo)");
        }
      }
    } else if (a == "--gloo") {
      o.glooFile = next();
    } else if (a == "--compression") {
      o.compression = next();
    } else if (a == "--seed") {
      o.seed = static_cast<unsigned>(cli::integer("--seed", next(), 0, 1000000000));
    } else if (a == "--print-shapes") {
      o.printShapes = true;
    } else {
      cli::fail("unknown option ", a);
    }
  }
  return o;
}

// {"resnet50": [{"name": "conv1.weight", "shape": [64, 3, 7, 7]}, ...], ...}
void printShapes() {
  std::printf("{");
  const auto models = bench::allModels();
  for (std::size_t m = 0; m < models.size(); ++m) {
    std::printf("%s\n  \"%s\": [", m ? "," : "", models[m].name.c_str());
    for (std::size_t p = 0; p < models[m].params.size(); ++p) {
      const bench::Param& param = models[m].params[p];
      std::printf("%s\n    {\"name\": \"%s\", \"shape\": [", p ? "," : "", param.name.c_str());
      for (std::size_t d = 0; d < param.shape.size(); ++d) {
        std::printf("%s%lld", d ? ", " : "", static_cast<long long>(param.shape[d]));
      }
      std::printf("]}");
    }
    std::printf("\n  ]");
  }
  std::printf("\n}\n");
}

// Lines "MODEL SECONDS" as gloo_engine_peer.py writes them; a missing file is a usage error.
std::map<std::string, double> readGloo(const std::string& path) {
  std::map<std::string, double> times;
  if (path.empty()) return times;
  std::ifstream in(path);
  if (!in) cli::fail("--gloo: cannot read '", path, "'");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string model;
    std::string secs;
    if (!(fields >> model >> secs)) cli::fail("--gloo: '", path, "': bad line '", line, "'");
    times[model] = cli::number("--gloo time", secs, 0, 1e6, true);
  }
  return times;
}

struct Grads {
  std::vector<float> data;          // every gradient, one after the other
  std::vector<std::int64_t> start;  // parameter i is data[start[i], start[i] + count)
};

Grads allocate(const bench::Model& m) {
  Grads g;
  g.data.resize(static_cast<std::size_t>(m.count()));
  std::int64_t at = 0;
  for (const bench::Param& p : m.params) {
    g.start.push_back(at);
    at += p.count();
  }
  return g;
}

// This rank's submission order for one step (see the file comment).
std::vector<std::size_t> submissionOrder(std::size_t n, bool random, unsigned seed, int rank,
                                         int step) {
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i)
    order[i] = n - 1 - i;
  std::mt19937 rng(seed * 1000003u + static_cast<unsigned>(rank) * 7919u +
                   static_cast<unsigned>(step));
  if (random) {
    std::shuffle(order.begin(), order.end(), rng);
  } else {
    constexpr std::size_t kWindow = 8;
    for (std::size_t w = 0; w < n; w += kWindow) {
      std::shuffle(order.begin() + static_cast<std::ptrdiff_t>(w),
                   order.begin() + static_cast<std::ptrdiff_t>(std::min(n, w + kWindow)), rng);
    }
  }
  return order;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Seconds of fn between a barrier and its end, maximum over ranks.
template <typename Fn>
double timeStep(Communicator& comm, Fn&& fn) {
  comm.barrier();
  const auto start = Clock::now();
  fn();
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  comm.allreduce(BufferView{&secs, 1, DType::f64, MemoryKind::host}, ReduceOp::max);
  return secs;
}

struct Row {
  double engine = 0;
  double flat = 0;
  double mpi = 0;
  long long wrong = 0;
};

Row measure(const bench::Model& m, const Options& o, bool mpi) {
  Communicator& comm = runtime().world();
  const int rank = comm.rank();
  Grads g = allocate(m);
  const auto fill = [&](float v) { std::fill(g.data.begin(), g.data.end(), v); };
  const auto tensor = [&](std::size_t i) {
    const bench::Param& p = m.params[i];
    return Tensor{BufferView{g.data.data() + g.start[i], static_cast<std::size_t>(p.count()),
                             DType::f32, MemoryKind::host},
                  p.shape, nullptr};
  };
  const auto engineStep = [&](int step) {
    const auto order = submissionOrder(m.params.size(), o.randomOrder, o.seed, rank, step);
    std::vector<Handle> handles;
    handles.reserve(order.size());
    for (const std::size_t i : order) {
      AllreduceSpec spec;
      spec.compression = o.compression;
      handles.push_back(allreduceAsync(m.name + "." + m.params[i].name, tensor(i), spec));
    }
    for (const Handle& h : handles)
      h.wait();
  };
  const BufferView flat{g.data.data(), g.data.size(), DType::f32, MemoryKind::host};
  CollectiveOptions flatOptions;
  flatOptions.compression = o.compression;
  std::vector<double> engineT;
  std::vector<double> flatT;
  std::vector<double> mpiT;
  // Interleaved, step by step, so that the shared machine's slow moments fall on all alike.
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    const bool timed = step >= o.warmup;
    fill(1);
    const double e = timeStep(comm, [&] { engineStep(step); });
    fill(1);
    const double f = timeStep(comm, [&] { comm.allreduce(flat, ReduceOp::sum, flatOptions); });
    double p = 0;
    if (mpi) {
      fill(1);
      p = timeStep(comm, [&] {
        for (std::size_t i = m.params.size(); i-- > 0;) {
          MPI_Allreduce(MPI_IN_PLACE, g.data.data() + g.start[i],
                        static_cast<int>(m.params[i].count()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        }
      });
    }
    if (timed) {
      engineT.push_back(e);
      flatT.push_back(f);
      mpiT.push_back(p);
    }
  }
  // One checked engine step: rank r gives r + 1 everywhere, so the sum is n(n+1)/2 exactly.
  fill(static_cast<float>(rank + 1));
  engineStep(o.warmup + o.steps);
  const int n = comm.size();
  const float want = static_cast<float>(n * (n + 1) / 2);
  const float slack = o.compression.empty() ? 0.0f : 0.01f * want;  // a codec is lossy
  long long wrong = std::count_if(g.data.begin(), g.data.end(),
                                  [&](float v) { return !(std::abs(v - want) <= slack); });
  comm.allreduce(BufferView{&wrong, 1, DType::i64, MemoryKind::host}, ReduceOp::sum);
  return {median(engineT), median(flatT), mpi ? median(mpiT) : 0, wrong};
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run("engine_bench", kUsage, [&] {
    const Options o = parse(argc, argv);
    if (o.printShapes) {
      printShapes();
      return 0;
    }
    const auto gloo = readGloo(o.glooFile);
    long double largest = 0;
    for (const bench::Model& m : o.models)
      largest = std::max(largest, static_cast<long double>(m.count()) * 4);
    cli::checkFits("the largest model's gradients (per rank, with the fusion buffer)", largest * 2);
    const Config config = cli::environment();  // a bad SKYRING_* setting is a usage error
    init(config);
    int mpiUp = 0;
    MPI_Initialized(&mpiUp);
    const bool mpi = o.peerMpi && mpiUp;
    const bool root = rank() == 0;
    if (root) {
      std::printf(
          "# skyring engine_bench: %d ranks, f32 sum, %s order, median of %d steps "
          "after %d warmup (ms; a step's time is the slowest rank's)%s%s\n",
          size(), o.randomOrder ? "random" : "backward", o.steps, o.warmup,
          o.compression.empty() ? "" : "; skyring and flat compressed with ",
          o.compression.c_str());
      if (o.peerMpi && !mpiUp) std::printf("# mpi: not launched by mpirun, so n/a\n");
      std::printf("#%10s %8s %12s %10s %10s %8s %10s %8s %10s %8s %7s\n", "model", "tensors",
                  "bytes", "skyring", "flat", "x flat", "mpi", "mpi/sky", "gloo", "gloo/sky",
                  "#wrong");
    }
    for (const bench::Model& m : o.models) {
      const Row r = measure(m, o, mpi);
      if (!root) continue;
      char mpiCols[40] = "       n/a      n/a";
      if (mpi)
        std::snprintf(mpiCols, sizeof(mpiCols), "%10.2f %8.2f", r.mpi * 1e3, r.mpi / r.engine);
      char glooCols[40] = "       n/a      n/a";
      if (const auto it = gloo.find(m.name); it != gloo.end()) {
        std::snprintf(glooCols, sizeof(glooCols), "%10.2f %8.2f", it->second * 1e3,
                      it->second / r.engine);
      }
      std::printf(" %10s %8zu %12lld %10.2f %10.2f %8.2f %s %s %7lld\n", m.name.c_str(),
                  m.params.size(), static_cast<long long>(m.count() * 4), r.engine * 1e3,
                  r.flat * 1e3, r.engine / r.flat, mpiCols, glooCols, r.wrong);
      std::fflush(stdout);
    }
    shutdown();
    return 0;
  });
}
