// allreduce_perf: nccl-tests' all_reduce_perf for skyring over host memory, with Open
// MPI's MPI_Allreduce as the peer measured on the same buffers in the same run.
//
//   mpirun -np 4 --oversubscribe allreduce_perf -b 8 -e 256M -f 2 [-n 20] [-w 5]
//          [-c 1] [-d float] [-o sum] [--peer mpi]
//
// Options and columns follow nccl-tests: -b/-e min/max bytes (K, M, G suffixes, 1 to
// 64G), -f multiplication factor (2 to 1024), -n timed iterations (1 to 10^6), -w warmup
// iterations (0 to 10^6), -c check results (0 or 1: exact-sum inputs, #wrong counts wrong
// elements), -d dtype (float, half, bfloat16, double, int8, uint8, int32, int64), -o op
// (sum, prod, min, max, avg). Time is the mean over iterations, maximum over ranks;
// algbw = size / time; busbw = algbw * 2(n-1)/n. A bad argument or SKYRING_* setting exits
// 2 with the usage, a failed run 1 (benchmarks/cli.h).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "cli.h"
#include "common/exact_data.h"
#include "skyring/runtime.h"

namespace {

using namespace skyring;
namespace cli = skyring::cli;
using Clock = std::chrono::steady_clock;

struct Options {
  std::size_t minBytes = 8;
  std::size_t maxBytes = 256u << 20;
  std::size_t factor = 2;
  int iters = 20;
  int warmup = 5;
  bool check = true;
  DType dtype = DType::f32;
  ReduceOp op = ReduceOp::sum;
  bool peerMpi = false;
};

constexpr const char* kUsage =
    "mpirun -np N allreduce_perf [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-n ITERS] [-w WARMUP] "
    "[-c 0|1] [-d float|half|bfloat16|double|int8|uint8|int32|int64] [-o sum|prod|min|max|avg] "
    "[--peer mpi]";

const std::map<std::string, DType, std::less<>> kTypes = {
    {"float", DType::f32}, {"half", DType::f16}, {"bfloat16", DType::bf16}, {"double", DType::f64},
    {"int8", DType::i8},   {"uint8", DType::u8}, {"int32", DType::i32},     {"int64", DType::i64}};

// Every argument checked before the job starts (sizes up to 64 GiB, and what the largest
// size allocates must fit in memory), so a bad one is a usage error on every rank.
Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (cli::isHelp(a)) throw cli::Help{};
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) cli::fail("option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "-b") {
      o.minBytes = cli::bytes("-b", next(), 1, std::size_t{64} << 30);
    } else if (a == "-e") {
      o.maxBytes = cli::bytes("-e", next(), 1, std::size_t{64} << 30);
    } else if (a == "-f") {
      o.factor = static_cast<std::size_t>(cli::integer("-f", next(), 2, 1024));
    } else if (a == "-n") {
      o.iters = static_cast<int>(cli::integer("-n", next(), 1, 1000000));
    } else if (a == "-w") {
      o.warmup = static_cast<int>(cli::integer("-w", next(), 0, 1000000));
    } else if (a == "-c") {
      o.check = cli::integer("-c", next(), 0, 1) != 0;
    } else if (a == "-d") {
      const std::string t = next();
      const auto it = kTypes.find(t);
      if (it == kTypes.end()) cli::fail("-d: unknown type '", t, "'");
      o.dtype = it->second;
    } else if (a == "-o") {
      const std::string op = next();
      try {
        o.op = parseReduceOp(op);
      } catch (const InvalidArgument&) {
        cli::fail("-o: unknown op '", op, "' (sum, prod, min, max or avg)");
      }
    } else if (a == "--peer") {
      if (next() != "mpi") cli::fail("--peer takes 'mpi'");
      o.peerMpi = true;
    } else {
      cli::fail("unknown option ", a);
    }
  }
  if (o.minBytes > o.maxBytes) cli::fail("-b ", o.minBytes, " is larger than -e ", o.maxBytes);
  if (o.peerMpi && o.maxBytes / dtypeSize(o.dtype) > std::numeric_limits<int>::max()) {
    cli::fail("--peer mpi: MPI_Allreduce counts are int, so -e may be at most ",
              std::numeric_limits<int>::max(), " elements");
  }
  // Input, output and (with -c 1) the expected result of the largest size, per rank.
  cli::checkFits("-e " + cli::formatBytes(o.maxBytes) + " (" + (o.check ? "3" : "2") +
                     " buffers of it per rank)",
                 static_cast<long double>(o.maxBytes) * (o.check ? 3 : 2));
  return o;
}

MPI_Datatype mpiType(DType d) {
  switch (d) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i8:
      return MPI_INT8_T;
    case DType::u8:
      return MPI_UINT8_T;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    default:
      return MPI_DATATYPE_NULL;  // MPI has no f16 / bf16
  }
}

MPI_Op mpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::prod:
      return MPI_PROD;
    case ReduceOp::min:
      return MPI_MIN;
    case ReduceOp::max:
      return MPI_MAX;
    default:
      return MPI_SUM;  // avg: sum, as nccl-tests' MPI reference does
  }
}

// Mean seconds per call over iters, maximum over ranks.
template <typename Fn>
double timeIt(Communicator& comm, int warmup, int iters, Fn&& fn) {
  for (int i = 0; i < warmup; ++i)
    fn();
  comm.barrier();
  const auto start = Clock::now();
  for (int i = 0; i < iters; ++i)
    fn();
  double secs = std::chrono::duration<double>(Clock::now() - start).count() / iters;
  comm.allreduce(BufferView{&secs, 1, DType::f64, MemoryKind::host}, ReduceOp::max);
  return secs;
}

std::size_t countWrong(const std::vector<std::byte>& got, const std::vector<std::byte>& want,
                       std::size_t elem) {
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < got.size(); i += elem) {
    wrong += std::memcmp(got.data() + i, want.data() + i, elem) != 0;
  }
  return wrong;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run("allreduce_perf", kUsage, [&] {
    const Options o = parse(argc, argv);
    cli::environment();  // a bad SKYRING_* setting is a usage error, before MPI starts
    auto rt = Runtime::init();
    Communicator& comm = rt->world();
    const int n = comm.size();
    const bool root = comm.rank() == 0;
    const bool mpiPeer = o.peerMpi && mpiType(o.dtype) != MPI_DATATYPE_NULL;
    if (o.peerMpi) {
      int inited = 0;
      MPI_Initialized(&inited);
      if (!inited) cli::fail("--peer mpi needs the job to be launched with mpirun");
    }
    const std::size_t elem = dtypeSize(o.dtype);
    const double busFactor = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    if (root) {
      std::printf("# skyring allreduce_perf: %d ranks, dtype %s, op %s, %d iters, %d warmup\n", n,
                  dtypeName(o.dtype).data(), reduceOpName(o.op).data(), o.iters, o.warmup);
      std::printf("#%12s %12s %8s %6s %10s %8s %8s %7s", "size", "count", "type", "redop",
                  "time(us)", "algbw", "busbw", "#wrong");
      if (mpiPeer) std::printf(" %10s %8s %8s", "mpi(us)", "mpi_bus", "ratio");
      std::printf("\n");
    }
    double busSum = 0;
    int rows = 0;
    for (std::size_t bytes = o.minBytes; bytes <= o.maxBytes; bytes *= o.factor) {
      const std::size_t count = std::max<std::size_t>(bytes / elem, 1);
      auto input = testing::makeInput(o.op, o.dtype, comm.rank(), count);
      std::vector<std::byte> output(input.size());
      const BufferView in = testing::viewOf(input, o.dtype);
      const BufferView out = testing::viewOf(output, o.dtype);
      const double t = timeIt(comm, o.warmup, o.iters, [&] { comm.allreduce(in, out, o.op); });
      std::size_t wrong = 0;
      if (o.check) {
        comm.allreduce(in, out, o.op);
        wrong = countWrong(output, testing::expectedResult(o.op, o.dtype, n, count), elem);
        comm.allreduce(BufferView{&wrong, 1, DType::i64, MemoryKind::host}, ReduceOp::sum);
      }
      const double algbw = static_cast<double>(count * elem) / t / 1e9;
      busSum += algbw * busFactor;
      ++rows;
      double tMpi = 0;
      if (mpiPeer) {
        tMpi = timeIt(comm, o.warmup, o.iters, [&] {
          MPI_Allreduce(input.data(), output.data(), static_cast<int>(count), mpiType(o.dtype),
                        mpiOp(o.op), MPI_COMM_WORLD);
        });
      }
      if (root) {
        std::printf(" %12zu %12zu %8s %6s %10.2f %8.3f %8.3f %7zu", count * elem, count,
                    dtypeName(o.dtype).data(), reduceOpName(o.op).data(), t * 1e6, algbw,
                    algbw * busFactor, wrong);
        if (mpiPeer) {
          const double mpiBus = static_cast<double>(count * elem) / tMpi / 1e9 * busFactor;
          std::printf(" %10.2f %8.3f %8.2f", tMpi * 1e6, mpiBus, tMpi / t);
        }
        std::printf("\n");
      }
    }
    if (root) std::printf("# Avg bus bandwidth    : %g\n", rows ? busSum / rows : 0.0);
    return 0;
  });
}
