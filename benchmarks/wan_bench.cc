// wan_bench: allreduce across emulated clouds. Flat ring (in rank order, and in topology
// order) beside hierarchical, optionally with a codec on the cross-cloud hop, printing
// what crosses clouds and how well the WAN link is used.
//
// Two ways to run it:
//   benchmarks/wan_netns.sh --clouds 2 --ranks-per-cloud 4 --order interleaved
//       -- wan_bench --link-gbit 1 [options]
//     real processes, one network namespace per cloud joined by tc-tbf-shaped links
//     (UCX over TCP); any launcher that sets SKYRING_CLOUD per rank works the same. Tell
//     the cost model what the link is (--env SKYRING_LINK_CROSS_CLOUD_GBPS=1 --env
//     SKYRING_LINK_CROSS_CLOUD_LATENCY_MS=0.1 for the script's default): large calls are
//     pipelined only when it says the WAN is bandwidth-bound.
//   wan_bench --inprocess 2x4 [--order interleaved] --link-gbit 1 --latency-ms 40 [options]
//     threads of one process over the in-process transport, the cross-cloud hop shaped
//     by ShapingTransport (bandwidth per rank and one-way latency): deterministic, and the
//     only way to get latency here (this kernel has no netem).
//
// Options: --sizes 1M,4M,... (bytes, K/M/G suffixes, whole floats up to 64G),
// --algorithms ring,topology_ring,hierarchical, --compression none,fp16,... (codecs for
// hierarchical; each adds a row), -n timed iterations (default 5), -w warmup iterations
// (default 1), --inprocess GxC (at most 64 clouds and 256 ranks in all), --link-gbit
// (above 0, default 1), --latency-ms (default 0). Every argument, codec and SKYRING_*
// setting is checked before any rank starts: a bad one exits 2 with the usage, a failed
// run 1 (benchmarks/cli.h).
//
// Columns, one row per algorithm, codec and size (rank 0 prints):
//   time_ms    median over iterations of the slowest rank's time
//   busbw      2(N-1)/N * S / time, GB/s (nccl-tests' bus bandwidth)
//   wan_MB     bytes one cloud sent to other clouds per allreduce, the largest over clouds
//              (per direction: what its uplink carried), in MB (1e6)
//   /bound     wan_MB / (2(G-1)/G * S), the least any uncompressed allreduce must send
//   util%      wan bytes / (time * link rate): how busy that cloud's uplink was
//   usd/1k     egress the whole job pays per 1000 allreduces, every rank's bytes priced by
//              its link class (SKYRING_LINK_*_DOLLARS_PER_GB, docs/configuration.md)
//   floor_ms   (--latency-ms, hierarchical rows) 2(G-1) latencies + this rank's WAN bytes / link
//   rate:
//              the least a hierarchical allreduce can take under the shaping model
// After the rows, one line per link class: bytes every rank sent over it during the whole
// run (warmups and the benchmark's own small allreduces included) and their egress price.
// With --inprocess the link rate is per rank (each rank its own WAN NIC), so util% and
// wan_MB are per rank too: the busiest rank.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cli.h"
#include "skyring/compression.h"
#include "skyring/inprocess_transport.h"
#include "skyring/metering_transport.h"
#include "skyring/runtime.h"
#include "skyring/shaping_transport.h"

namespace {

using namespace skyring;
namespace cli = skyring::cli;
using Clock = std::chrono::steady_clock;
using topology::LinkClass;

struct Options {
  std::vector<std::size_t> sizes{1u << 20, 4u << 20, 16u << 20, 64u << 20, 256u << 20};
  std::vector<std::string> algorithms{"ring", "topology_ring", "hierarchical"};
  std::vector<std::string> codecs;  // empty: none only
  int iters = 5;
  int warmup = 1;
  double linkGbit = 1;
  double latencyMs = 0;
  int inprocessClouds = 0;  // 0: real processes
  int inprocessRanks = 0;
  bool interleaved = false;  // --inprocess: rank r in cloud r % G instead of r / C
};

constexpr const char* kUsage =
    "wan_bench [--inprocess GxC [--order blocked|interleaved]] [--link-gbit R] "
    "[--latency-ms L] [--sizes 1M,4M] [--algorithms ring,topology_ring,hierarchical] "
    "[--compression none,fp16,int8,...] [-n ITERS] [-w WARMUP]";

AllreduceAlgorithm algorithmNamed(const std::string& name) {
  if (name == "ring") return AllreduceAlgorithm::ring;
  if (name == "topology_ring") return AllreduceAlgorithm::topologyRing;
  if (name == "hierarchical") return AllreduceAlgorithm::hierarchical;
  cli::fail("--algorithms: unknown algorithm '", name, "' (ring, topology_ring or hierarchical)");
}

// Every argument checked before any rank starts, so that a bad one is a usage error and
// never a failure half-way through the run.
Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (cli::isHelp(a)) throw cli::Help{};
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) cli::fail("option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--sizes") {
      o.sizes.clear();
      for (const auto& s : cli::list(a, value())) {
        const std::size_t bytes = cli::bytes(a, s, sizeof(float), std::size_t{64} << 30);
        if (bytes % sizeof(float) != 0) cli::fail(a, ": ", s, " is not a whole number of floats");
        o.sizes.push_back(bytes);
      }
    } else if (a == "--algorithms") {
      o.algorithms = cli::list(a, value());
      for (const auto& name : o.algorithms)
        algorithmNamed(name);
    } else if (a == "--compression") {
      o.codecs = cli::list(a, value());
      for (const auto& spec : o.codecs) {
        try {
          compression::makeCompressor(spec);
        } catch (const InvalidArgument& e) {
          cli::fail(a, ": ", e.detail());
        }
      }
    } else if (a == "-n") {
      o.iters = static_cast<int>(cli::integer(a, value(), 1, 1000000));
    } else if (a == "-w") {
      o.warmup = static_cast<int>(cli::integer(a, value(), 0, 1000000));
    } else if (a == "--link-gbit") {
      o.linkGbit = cli::number(a, value(), 0, 1e6, /*minExclusive=*/true);
    } else if (a == "--latency-ms") {
      o.latencyMs = cli::number(a, value(), 0, 1e5);
    } else if (a == "--order") {
      const std::string v = value();
      if (v != "blocked" && v != "interleaved") cli::fail("--order wants blocked or interleaved");
      o.interleaved = v == "interleaved";
    } else if (a == "--inprocess") {
      // Every rank is a thread: at most 256 of them, in at most 64 clouds.
      std::tie(o.inprocessClouds, o.inprocessRanks) = cli::shape(a, value(), 64, 256, 256);
    } else {
      cli::fail("unknown option ", a);
    }
  }
  // Each rank holds the input and the buffer of the largest size.
  std::size_t largest = 0;
  for (std::size_t s : o.sizes)
    largest = std::max(largest, s);
  const int ranksHere = o.inprocessClouds > 0 ? o.inprocessClouds * o.inprocessRanks : 1;
  cli::checkFits(std::to_string(ranksHere) + " rank(s) x 2 buffers of " + cli::formatBytes(largest),
                 static_cast<long double>(ranksHere) * 2 * largest);
  return o;
}

// One rank's view of the job: its communicator, where everyone is, and its traffic meter.
struct RankContext {
  Communicator& comm;
  const topology::Topology& topo;
  std::function<transport::TrafficStats()> stats;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double seconds() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// Every rank starts the timed allreduce at the same moment of the machine's monotonic clock
// (shared by all processes of one machine, as in the namespace and in-process runs): the
// latest barrier exit plus a margin that covers the agreement's own delivery. Times are
// then measured from that start to each rank's end, without the barrier's exit skew.
double commonStart(Communicator& comm, const Options& o) {
  comm.barrier();
  double exitAt = seconds();
  CollectiveOptions exact;
  exact.compression = "none";
  comm.allreduce(view(std::span(&exitAt, 1)), ReduceOp::max, exact);
  return exitAt + 4 * o.latencyMs / 1e3 + 0.02;
}

// Runs every configuration on one rank (collectively); rank 0 prints the rows.
void runBench(const Options& o, RankContext& ctx, bool perRankLink) {
  Communicator& comm = ctx.comm;
  const int n = comm.size();
  const int me = comm.rank();
  const int g = ctx.topo.clouds();
  const double linkBytesPerSec = o.linkGbit * 1e9 / 8;
  if (me == 0) {
    std::string order;
    for (int r = 0; r < n; ++r)
      order +=
          std::to_string(ctx.topo.groupIndex(topology::Level::cloud, r)) + (r + 1 < n ? "," : "");
    char latency[64] = "";
    if (o.latencyMs > 0) std::snprintf(latency, sizeof(latency), ", %g ms one way", o.latencyMs);
    std::printf(
        "# wan_bench: %d clouds, %d ranks (cloud of each rank: %s); cross-cloud link %.3g "
        "Gbit/s%s%s, %d iterations (median), %d warmup\n",
        g, n, order.c_str(), o.linkGbit, perRankLink ? " per rank" : " per cloud", latency, o.iters,
        o.warmup);
    std::printf("%-14s %-18s %10s %10s %9s %9s %7s %6s %8s%s\n", "algorithm", "codec", "size",
                "time_ms", "busbw", "wan_MB", "/bound", "util%", "usd/1k",
                o.latencyMs > 0 ? "  floor_ms  /floor" : "");
  }
  std::vector<std::pair<std::string, std::string>> rows;  // (algorithm, codec)
  for (const auto& a : o.algorithms) {
    if (a == "hierarchical" && !o.codecs.empty()) {
      for (const auto& c : o.codecs)
        rows.emplace_back(a, c);
    } else {
      rows.emplace_back(a, "none");
    }
  }
  for (std::size_t bytes : o.sizes) {
    const std::size_t count = bytes / sizeof(float);
    std::vector<float> input(count);
    for (std::size_t i = 0; i < count; ++i)
      input[i] = static_cast<float>((i * 7 + static_cast<std::size_t>(me)) % 97) * 0.01f;
    std::vector<float> buffer(count);
    for (const auto& [algorithm, codec] : rows) {
      CollectiveOptions options;
      options.algorithm = algorithmNamed(algorithm);
      options.compression = codec;
      options.tensorKey = 1 + bytes;
      std::vector<double> times;
      double late = 0;
      std::uint64_t wanBefore = 0;
      double egressBefore = 0;
      for (int it = 0; it < o.warmup + o.iters; ++it) {
        buffer = input;
        const double start = commonStart(comm, o);
        if (it == o.warmup) {
          const auto before = ctx.stats();
          wanBefore = before.bytesOver(LinkClass::crossCloud);
          egressBefore = before.egressDollars;
        }
        std::this_thread::sleep_until(Clock::time_point(
            std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(start))));
        late = std::max(late, seconds() - start);
        comm.allreduce(view(std::span(buffer)), ReduceOp::sum, options);
        if (it >= o.warmup) times.push_back(seconds() - start);
      }
      const auto after = ctx.stats();
      const double wanMine =
          static_cast<double>(after.bytesOver(LinkClass::crossCloud) - wanBefore) / o.iters;
      double egress = (after.egressDollars - egressBefore) / o.iters;
      // Slowest rank per iteration, and the WAN bytes of every rank (one allreduce each).
      comm.allreduce(view(std::span(times)), ReduceOp::max);
      comm.allreduce(view(std::span(&late, 1)), ReduceOp::max);
      if (me == 0 && late > 5e-3) {
        std::fprintf(stderr, "wan_bench: a rank started up to %.1f ms late (busy machine?)\n",
                     late * 1e3);
      }
      std::vector<double> wan(static_cast<std::size_t>(n), 0.0);
      wan[static_cast<std::size_t>(me)] = wanMine;
      comm.allreduce(view(std::span(wan)), ReduceOp::sum);
      comm.allreduce(view(std::span(&egress, 1)), ReduceOp::sum);
      if (me != 0) continue;
      double wanMax = 0;  // per direction: the busiest cloud's uplink (or rank's)
      if (perRankLink) {
        wanMax = *std::max_element(wan.begin(), wan.end());
      } else {
        std::vector<double> perCloud(static_cast<std::size_t>(g), 0.0);
        for (int r = 0; r < n; ++r)
          perCloud[static_cast<std::size_t>(ctx.topo.groupIndex(topology::Level::cloud, r))] +=
              wan[static_cast<std::size_t>(r)];
        wanMax = *std::max_element(perCloud.begin(), perCloud.end());
      }
      const double t = median(times);
      const double s = static_cast<double>(count * sizeof(float));
      const double busbw = 2.0 * (n - 1) / n * s / t / 1e9;
      // The least an uncompressed allreduce sends per cloud; per rank, that divided by c.
      double bound = 2.0 * (g - 1) / g * s;
      if (perRankLink) bound /= static_cast<double>(n) / g;
      std::printf("%-14s %-18s %10zu %10.2f %9.4f %9.3f %7.3f %6.1f %8.3f", algorithm.c_str(),
                  codec.c_str(), count * sizeof(float), t * 1e3, busbw, wanMax / 1e6,
                  g > 1 ? wanMax / bound : 0.0, 100.0 * wanMax / (t * linkBytesPerSec),
                  egress * 1e3);
      if (o.latencyMs > 0 && algorithm == "hierarchical") {
        const double floor = 2.0 * (g - 1) * o.latencyMs / 1e3 + wanMax / linkBytesPerSec;
        std::printf("  %8.2f %7.3f", floor * 1e3, t / floor);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  // Bytes per link class over the whole run, summed over ranks, and the egress bill.
  const auto total = ctx.stats();
  std::vector<double> perClass(topology::kLinkClassCount + 1, 0.0);
  for (std::size_t c = 0; c < topology::kLinkClassCount; ++c)
    perClass[c] = static_cast<double>(total.bytes[c]);
  perClass.back() = total.egressDollars;
  comm.allreduce(view(std::span(perClass)), ReduceOp::sum);
  if (me != 0) return;
  for (std::size_t c = 0; c < topology::kLinkClassCount; ++c) {
    std::printf("# traffic %-11s %14.0f bytes\n",
                std::string(topology::linkClassName(static_cast<LinkClass>(c))).c_str(),
                perClass[c]);
  }
  std::printf("# egress estimate for the whole run: $%.4f\n", perClass.back());
}

int runInProcess(const Options& o) {
  const int g = o.inprocessClouds;
  const int c = o.inprocessRanks;
  const int n = g * c;
  std::vector<topology::RankRecord> records;
  for (int r = 0; r < n; ++r) {
    const int cloudIndex = o.interleaved ? r % g : r / c;
    const std::string cloud = "cloud" + std::to_string(cloudIndex);
    records.push_back({cloud + "-node" + std::to_string(r), cloud, ""});
  }
  // The cost model describes the emulated link (it decides, e.g., how the hierarchy
  // pipelines large calls).
  Config config = cli::environment();
  config.crossCloudLink.gbitPerSec = o.linkGbit;
  config.crossCloudLink.latencyMs = o.latencyMs;
  auto topo =
      std::make_shared<const topology::Topology>(std::move(records), topology::CostModel(config));
  transport::LinkShapes shapes{};
  shapes[topology::index(LinkClass::crossCloud)] = {
      o.linkGbit * 1e9 / 8, std::chrono::duration_cast<transport::Clock::duration>(
                                std::chrono::duration<double, std::milli>(o.latencyMs))};
  transport::InProcessWorld world(n);
  std::mutex mu;
  std::string failure;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto shaped = std::make_shared<transport::ShapingTransport>(world.transport(r), topo, shapes);
      auto meter = std::make_shared<transport::MeteringTransport>(shaped, topo);
      try {
        Communicator comm(meter, config, nullptr, topo);
        RankContext ctx{comm, *topo, [&] { return meter->stats(); }};
        runBench(o, ctx, /*perRankLink=*/true);
      } catch (const std::exception& e) {
        meter->abort(ErrorKind::aborted, e.what());
        std::lock_guard lock(mu);
        if (failure.empty()) failure = e.what();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  if (!failure.empty()) throw std::runtime_error(failure);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run("wan_bench", kUsage, [&] {
    const Options o = parse(argc, argv);
    if (o.inprocessClouds > 0) return runInProcess(o);
    cli::environment();  // a bad SKYRING_* setting is a usage error, before the job starts
    auto rt = Runtime::init();
    RankContext ctx{rt->world(), rt->topology(), [&] { return rt->stats(); }};
    runBench(o, ctx, /*perRankLink=*/false);
    return 0;
  });
}
