// Process sets in real processes, through the process-wide API: two overlapping sets (one
// numbered out of world order) and the world, each driven from its own thread with
// hundreds of names in a different random order on every rank, each result bit for bit;
// a set of one rank; a rank outside a set told so; a creation that disagrees on one rank
// failing on every rank; removal, and a new set reusing the freed id. Runs on any number of
// ranks (the sets shrink to fit). Exit code 0 when every check passed.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/exact_data.h"
#include "skyring/skyring.h"

namespace {

using namespace skyring;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "rank %d: %s\n", skyring::rank(), what.c_str());
  std::exit(1);
}

// `names` allreduces on processSet (the world when empty), in this rank's own order, each
// checked bit for bit; salt gives each set values of its own. Returns the checks made.
int randomAllreduces(const ProcessSet& processSet, int step, std::size_t salt) {
  const int me = processSet.valid() ? processSet.rank() : rank();
  const int n = processSet.valid() ? processSet.size() : size();
  const DType dtypes[] = {DType::f32, DType::i32, DType::f64, DType::bf16};
  const ReduceOp ops[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max};
  const std::size_t counts[] = {0, 1, 13, 1000, 20011};
  constexpr int kNames = 200;
  std::mt19937 rng(static_cast<unsigned>(rank() * 7919 + step * 31) + static_cast<unsigned>(salt));
  std::vector<int> order(kNames);
  for (int i = 0; i < kNames; ++i)
    order[static_cast<std::size_t>(i)] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<std::byte>> data(kNames);
  std::vector<Handle> handles(kNames);
  for (int i : order) {
    const auto u = static_cast<std::size_t>(i);
    data[u] = testing::makeInput(ops[u % 3], dtypes[u % 4], me, counts[u % 5], salt + u);
    handles[u] =
        allreduceAsync("t" + std::to_string(i), {testing::viewOf(data[u], dtypes[u % 4]), {}, {}},
                       {ops[u % 3]}, processSet);
  }
  for (int i = 0; i < kNames; ++i) {
    const auto u = static_cast<std::size_t>(i);
    handles[u].wait();
    if (data[u] != testing::expectedResult(ops[u % 3], dtypes[u % 4], n, counts[u % 5], salt + u)) {
      fail("WRONG result of t" + std::to_string(i) + " in set " +
           std::to_string(processSet.valid() ? processSet.id() : 0));
    }
  }
  return kNames;
}

}  // namespace

int main() {
  try {
    init();
    const int n = size();
    const int me = rank();
    std::atomic<int> checks{0};

    // Overlapping sets: the first ranks but the last, and the last ranks in reverse order.
    std::vector<int> low, high;
    for (int r = 0; r < std::max(1, n - 1); ++r)
      low.push_back(r);
    for (int r = n - 1; r >= std::min(1, n - 1); --r)
      high.push_back(r);
    const ProcessSet a = addProcessSet(low);
    const ProcessSet b = addProcessSet(high);
    if (a.id() != 1 || b.id() != 2) fail("unexpected set ids");
    for (int step = 0; step < 3; ++step) {
      std::vector<std::thread> threads;
      threads.emplace_back([&] { checks += randomAllreduces({}, step, 0); });
      if (a.included()) threads.emplace_back([&] { checks += randomAllreduces(a, step, 100000); });
      if (b.included()) threads.emplace_back([&] { checks += randomAllreduces(b, step, 200000); });
      for (auto& t : threads)
        t.join();
    }
    if (a.included()) barrier(a);
    barrier();

    // A set of one rank, and a rank outside it.
    const ProcessSet solo = addProcessSet({n - 1});
    if (solo.included()) {
      std::vector<float> v = {1, 2};
      allreduceAsync("solo", Tensor::of(v), {ReduceOp::sum}, solo).wait();
      if (v != std::vector<float>{1, 2}) fail("WRONG allreduce in a set of one");
    } else {
      try {
        std::vector<float> v = {1};
        allreduceAsync("solo", Tensor::of(v), {}, solo);
        fail("a rank outside a set submitted to it");
      } catch (const InvalidArgument& e) {
        if (std::string(e.what()).find("is not a member of process set 3") == std::string::npos)
          fail(e.what());
      }
    }
    ++checks;

    // A creation that disagrees on the last rank fails on every rank, naming it.
    try {
      addProcessSet(me == n - 1 && n > 1 ? std::vector<int>{0, n - 1} : std::vector<int>{0});
      if (n > 1) fail("a mismatched creation succeeded");
    } catch (const InvalidArgument& e) {
      const std::string want = "rank " + std::to_string(n - 1) + " differs from rank 0";
      if (std::string(e.what()).find(want) == std::string::npos) fail(e.what());
    }
    ++checks;

    removeProcessSet(solo);
    removeProcessSet(a);
    const ProcessSet again = addProcessSet(high);  // takes the freed id 1
    if (again.id() != 1) fail("the freed id was not reused");
    if (again.included()) checks += randomAllreduces(again, 9, 300000);
    removeProcessSet(again);
    removeProcessSet(b);
    std::printf("rank %d (of %d): %d process set checks passed\n", me, n, checks.load());
    shutdown();
  } catch (const Error& e) {
    std::fprintf(stderr, "process_sets_main: %s\n", e.what());
    return 2;
  }
  return 0;
}
