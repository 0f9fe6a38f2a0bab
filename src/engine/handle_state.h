// The shared completion of a Handle: set once by the engine thread, read by any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>

#include "skyring/engine.h"

namespace skyring {

struct Handle::State {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;         // guarded by mutex
  std::exception_ptr error;  // guarded by mutex
  // Threads blocked in wait() or waitFor(): a replaying engine (engine/replay.h) does not
  // wait for the rest of a batch while its caller waits on one of its tensors.
  std::atomic<int> waiters{0};
  // Marks the call finished (failed when failure is set) and wakes every waiter.
  void complete(std::exception_ptr failure = nullptr);
};

}  // namespace skyring
