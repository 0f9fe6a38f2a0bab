// Process sets: collectives over a subset of the ranks, beside the world's.
//
//   mpirun -np 4 process_sets      (or torchrun-style variables; alone it is a world of one)
//
// Two pipeline stages as two process sets (the first half of the ranks and the second
// half): each stage averages its own gradient among its own ranks, while the whole world
// sums a metric, all at once from different threads. Every rank makes the same
// addProcessSet calls in the same order, members or not; a rank outside a set gets a
// handle whose included() is false. Exit status: 0 when every result was exact, 1 when one
// was not, 2 when skyring failed (the message says why).
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include "skyring/skyring.h"

int main() {
  try {
    skyring::init();
    const int n = skyring::size();
    const int me = skyring::rank();
    std::vector<int> first, second;
    for (int r = 0; r < n; ++r)
      (r < (n + 1) / 2 ? first : second).push_back(r);
    const skyring::ProcessSet stage1 = skyring::addProcessSet(first);
    // With one rank the second stage is empty; a set needs at least one rank.
    const skyring::ProcessSet stage2 = second.empty() ? stage1 : skyring::addProcessSet(second);
    const skyring::ProcessSet& mine = stage1.included() ? stage1 : stage2;

    // The stage's gradient: rank r of the stage contributes r + 1 to every element.
    std::vector<float> grad(1000, static_cast<float>(mine.rank() + 1));
    // The world's metric: every rank counts one.
    std::vector<std::int64_t> seen = {1};
    skyring::Handle g;
    std::thread stage([&] {
      g = skyring::allreduceAsync("grad", skyring::Tensor::of(grad), {skyring::ReduceOp::avg},
                                  mine);
    });
    skyring::Handle m = skyring::allreduceAsync("seen", skyring::Tensor::of(seen));
    stage.join();
    g.wait();
    m.wait();

    const float want = static_cast<float>(mine.size() + 1) / 2;  // mean of 1..size
    const bool exact = grad.front() == want && grad.back() == want && seen[0] == n;
    std::printf("rank %d: stage %d (set %d, rank %d of %d) gradient %.1f, world saw %lld ranks%s\n",
                me, mine.id() == stage1.id() ? 1 : 2, mine.id(), mine.rank(), mine.size(),
                static_cast<double>(grad.front()), static_cast<long long>(seen[0]),
                exact ? "" : " (WRONG)");

    if (stage2.id() != stage1.id()) skyring::removeProcessSet(stage2);
    skyring::removeProcessSet(stage1);
    skyring::shutdown();
    return exact ? 0 : 1;
  } catch (const skyring::Error& e) {
    std::fprintf(stderr, "process_sets: %s\n", e.what());
    return 2;
  }
}
