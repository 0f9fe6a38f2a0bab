// The engine in real processes, through the process-wide API (skyring::init under mpirun
// or torchrun-style variables): hundreds of names submitted in a different random order on
// every rank, for several steps (replayed from the third), each result bit for bit; and one name
// submitted with a different shape on the last rank, which must fail on every rank naming it. Exit
// code 0 when every check passed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/exact_data.h"
#include "skyring/skyring.h"

namespace {

using namespace skyring;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "rank %d: %s\n", skyring::rank(), what.c_str());
  std::exit(1);
}

}  // namespace

int main() {
  try {
    init();
    const int n = size();
    const int me = rank();
    if (crossSize() < 1 || crossSize() > n || crossRank() < 0 || crossRank() >= crossSize()) {
      fail("cross rank " + std::to_string(crossRank()) + " of " + std::to_string(crossSize()));
    }
    const DType dtypes[] = {DType::f32, DType::bf16, DType::i32, DType::f64};
    const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max};
    const std::size_t counts[] = {0, 1, 13, 1000, 100003};
    constexpr int kNames = 400;
    std::mt19937 rng(static_cast<unsigned>(me) * 7919u + 1u);
    int checks = 0;
    // Five steps: from the third on the engine replays them (docs/engine.md, "Replay"); the
    // allgather after them is outside the plan, so its batch is dropped on every rank.
    for (int step = 0; step < 5; ++step) {
      std::vector<int> order(kNames);
      for (int i = 0; i < kNames; ++i)
        order[static_cast<std::size_t>(i)] = i;
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<std::vector<std::byte>> data(kNames);
      std::vector<Handle> handles(kNames);
      for (int i : order) {
        const auto u = static_cast<std::size_t>(i);
        const DType d = dtypes[u % 4];
        const ReduceOp op = ops[u % 3];
        data[u] = testing::makeInput(op, d, me, counts[u % 5], u);
        handles[u] =
            allreduceAsync("t" + std::to_string(i), {testing::viewOf(data[u], d), {}, {}}, {op});
      }
      for (int i = 0; i < kNames; ++i) {
        const auto u = static_cast<std::size_t>(i);
        handles[u].wait();
        if (data[u] != testing::expectedResult(ops[u % 3], dtypes[u % 4], n, counts[u % 5], u)) {
          fail("WRONG result of t" + std::to_string(i) + " at step " + std::to_string(step));
        }
        ++checks;
      }
    }
    // Rank r gathers r + 1 rows of 2; every rank gets every rank's rows in rank order.
    std::vector<std::int64_t> rows(static_cast<std::size_t>(me + 1) * 2, me);
    auto gathered = std::make_shared<std::vector<std::int64_t>>();
    allgatherAsync("rows", {view(std::span(rows)), {me + 1, 2}, nullptr}, [&](std::int64_t total) {
      gathered->resize(static_cast<std::size_t>(total) * 2);
      return Tensor{view(std::span(*gathered)), {}, gathered};
    }).wait();
    std::vector<std::int64_t> want;
    for (int r = 0; r < n; ++r)
      want.insert(want.end(), static_cast<std::size_t>(r + 1) * 2, r);
    if (*gathered != want) fail("WRONG allgather");
    ++checks;
    // Compression only where asked: whatever SKYRING_COMPRESSION says, a vector of counts
    // submitted without a codec comes back exact, beside a gradient that asks for the
    // job's codec (kDefaultCompression; compressed across clouds when one is set).
    for (int step = 0; step < 3; ++step) {
      std::vector<float> counts(1000);
      std::vector<float> grad(64 * 1000);
      for (std::size_t i = 0; i < counts.size(); ++i)
        counts[i] = static_cast<float>((i * 7 + static_cast<std::size_t>(me) * 13) % 1000);
      for (std::size_t i = 0; i < grad.size(); ++i)
        grad[i] = static_cast<float>(std::sin(0.01 * static_cast<double>(i) * (me + 1)));
      AllreduceSpec gradient{ReduceOp::avg};
      gradient.compression = std::string(kDefaultCompression);
      auto hg = allreduceAsync("grad", {view(std::span(grad)), {64, 1000}, nullptr}, gradient);
      auto hc = allreduceAsync("correct", Tensor::of(counts));
      hc.wait();
      hg.wait();
      for (std::size_t i = 0; i < counts.size(); ++i) {
        float want = 0;
        for (std::size_t r = 0; r < static_cast<std::size_t>(n); ++r)
          want += static_cast<float>((i * 7 + r * 13) % 1000);
        if (counts[i] != want) fail("WRONG count " + std::to_string(i) + ": a metric changed");
      }
      ++checks;
    }
    std::vector<float> odd(me == n - 1 && n > 1 ? 5 : 4, 1.0f);
    try {
      allreduceAsync("odd", Tensor::of(odd)).wait();
      if (n > 1) fail("a name submitted with different shapes completed");
    } catch (const TransportError& e) {
      if (std::string(e.what()).find("'odd'") == std::string::npos) fail(e.what());
    }
    ++checks;
    std::printf("rank %d (of %d): %d engine checks passed\n", me, n, checks);
    shutdown();
  } catch (const Error& e) {
    std::fprintf(stderr, "engine_main: %s\n", e.what());
    return 2;
  }
  return 0;
}
