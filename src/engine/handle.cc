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
  return state_->cv.wait_for(lock, timeout, [&] { return state_->done; });
}

void Handle::wait() const {
  if (!state_) return;
  std::unique_lock lock(state_->mutex);
  state_->cv.wait(lock, [&] { return state_->done; });
  if (state_->error) std::rethrow_exception(state_->error);
}

std::exception_ptr Handle::error() const {
  if (!state_) return nullptr;
  std::lock_guard lock(state_->mutex);
  return state_->error;
}

}  // namespace skyring
