// Runs every collective bit for bit in real processes joined by Runtime::init() (under
// mpirun, or torchrun-style variables). Exit code 0 when every check passed.
//
//   collectives_main                 all collectives, several dtypes, ops and counts
//   collectives_main --kill RANK     RANK kills itself (SIGKILL) during an allreduce; the
//                                    others must fail with an error naming it (exit 3)
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/exact_data.h"
#include "skyring/runtime.h"

namespace {

using namespace skyring;
using testing::expectedResult;
using testing::makeInput;
using testing::viewOf;

int checks = 0;

void expectSame(const std::vector<std::byte>& got, const std::vector<std::byte>& want,
                const std::string& what, int rank) {
  ++checks;
  if (got != want) {
    std::fprintf(stderr, "rank %d: WRONG result: %s\n", rank, what.c_str());
    std::exit(1);
  }
}

void runAll(Runtime& rt) {
  Communicator& comm = rt.world();
  const int n = comm.size();
  const int me = comm.rank();
  for (DType d : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::f64, DType::u8}) {
    for (ReduceOp op : kAllReduceOps) {
      for (std::size_t count :
           {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{1000003}}) {
        const std::string what = std::string(dtypeName(d)) + " " + std::string(reduceOpName(op)) +
                                 " " + std::to_string(count);
        auto in = makeInput(op, d, me, count);
        std::vector<std::byte> out(in.size());
        comm.allreduce(viewOf(in, d), viewOf(out, d), op);
        expectSame(out, expectedResult(op, d, n, count), "allreduce " + what, me);
        auto rsIn = makeInput(op, d, me, count * static_cast<std::size_t>(n));
        std::vector<std::byte> rsOut(count * dtypeSize(d));
        comm.reduceScatter(viewOf(rsIn, d), viewOf(rsOut, d), op);
        expectSame(rsOut, expectedResult(op, d, n, count, count * static_cast<std::size_t>(me)),
                   "reduce_scatter " + what, me);
      }
    }
    for (std::size_t count : {std::size_t{0}, std::size_t{5}, std::size_t{300007}}) {
      std::vector<std::byte> want;
      for (int r = 0; r < n; ++r) {
        auto b = makeInput(ReduceOp::sum, d, r, count);
        want.insert(want.end(), b.begin(), b.end());
      }
      auto in = makeInput(ReduceOp::sum, d, me, count);
      std::vector<std::byte> out(want.size());
      comm.allgather(viewOf(in, d), viewOf(out, d));
      expectSame(out, want, "allgather " + std::to_string(count), me);
      for (int root = 0; root < n; ++root) {
        auto buf = me == root ? makeInput(ReduceOp::sum, d, root, count)
                              : std::vector<std::byte>(count * dtypeSize(d));
        comm.broadcast(viewOf(buf, d), root);
        expectSame(buf, makeInput(ReduceOp::sum, d, root, count), "broadcast", me);
      }
    }
  }
  comm.barrier();
}

int runKill(Runtime& rt, int victim) {
  Communicator& comm = rt.world();
  std::vector<float> data(1 << 20, 1.0f);
  const auto start = std::chrono::steady_clock::now();
  try {
    // The victim dies as soon as its first allreduce returns; a slower rank may still be
    // finishing that same call when the news arrives, so it is inside the try too.
    comm.allreduce(view(std::span(data)), ReduceOp::sum);
    if (comm.rank() == victim) ::raise(SIGKILL);
    for (int i = 0; i < 1000; ++i)
      comm.allreduce(view(std::span(data)), ReduceOp::sum);
  } catch (const Error& e) {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const bool named =
        std::string(e.what()).find("rank " + std::to_string(victim)) != std::string::npos;
    const bool typed = dynamic_cast<const TransportError*>(&e) != nullptr ||
                       dynamic_cast<const Timeout*>(&e) != nullptr;
    std::fprintf(stderr, "rank %d: failed after %.2f s as expected: %s\n", comm.rank(), s,
                 e.what());
    return named && typed ? 3 : 4;
  }
  std::fprintf(stderr, "rank %d: no error although rank %d died\n", comm.rank(), victim);
  return 5;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    auto rt = Runtime::init();
    if (argc == 3 && std::strcmp(argv[1], "--kill") == 0) return runKill(*rt, std::atoi(argv[2]));
    runAll(*rt);
    // The node level: in a job of several nodes a tag-0 allreduce sends node-mates nothing
    // over the transport (they share memory), with a codec (a gradient's) too.
    const auto before = rt->stats().bytesOver(topology::LinkClass::intraNode);
    std::vector<float> big(1 << 20, 1.0f);
    rt->world().allreduce(view(std::span(big)), ReduceOp::sum);
    CollectiveOptions int8;
    int8.compression = "int8";
    rt->world().allreduce(view(std::span(big)), ReduceOp::sum, int8);
    std::printf("rank %d: allreduce sent node-mates %llu bytes over the transport\n", rt->rank(),
                static_cast<unsigned long long>(
                    rt->stats().bytesOver(topology::LinkClass::intraNode) - before));
    const auto sent = rt->stats();
    std::printf(
        "rank %d/%d (local %d/%d, cloud %s of %d): %d checks passed; sent %llu bytes "
        "cross-cloud, %llu intra-cloud\n",
        rt->rank(), rt->size(), rt->localRank(), rt->localSize(),
        rt->topology().record(rt->rank()).cloud.c_str(), rt->topology().clouds(), checks,
        static_cast<unsigned long long>(sent.bytesOver(topology::LinkClass::crossCloud)),
        static_cast<unsigned long long>(sent.bytesOver(topology::LinkClass::intraCloud) +
                                        sent.bytesOver(topology::LinkClass::intraNode)));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collectives_main: %s\n", e.what());
    return 1;
  }
}
