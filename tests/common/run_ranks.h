// runRanks(n, fn): fn(rank) on n threads at once; rethrows the first failure (in time).
// For tests of layers below the collectives, which have no Communicator to hand to
// LocalWorld.
#pragma once

#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace skyring::testing {

inline void runRanks(int n, const std::function<void(int)>& fn) {
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!first) first = std::current_exception();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace skyring::testing
