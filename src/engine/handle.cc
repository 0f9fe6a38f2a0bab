#include "engine/handle_state.h"

namespace skyring {

void Handle::State::complete(std::exception_ptr failure) {
  {
    std::lock_guard lock(mutex);
    error = std::move(failure);
    done = true;
  }
  cv.notify_all();
}

bool Handle::poll() const {
  if (!state_) return true;
  std::lock_guard lock(state_->mutex);
  return state_->done;
}

bool Handle::waitFor(std::chrono::milliseconds timeout) const {
  if (!state_) return true;
  std::unique_lock lock(state_->mutex);
  state_->waiters.fetch_add(1, std::memory_order_relaxed);
  const bool done = state_->cv.wait_for(lock, timeout, [&] { return state_->done; });
  state_->waiters.fetch_sub(1, std::memory_order_relaxed);
  return done;
}

void Handle::wait() const {
  if (!state_) return;
  std::unique_lock lock(state_->mutex);
  state_->waiters.fetch_add(1, std::memory_order_relaxed);
  state_->cv.wait(lock, [&] { return state_->done; });
  state_->waiters.fetch_sub(1, std::memory_order_relaxed);
  if (state_->error) std::rethrow_exception(state_->error);
}

std::exception_ptr Handle::error() const {
  if (!state_) return nullptr;
  std::lock_guard lock(state_->mutex);
  return state_->error;
}

}  // namespace skyring
