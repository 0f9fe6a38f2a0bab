// Helpers shared by the engine's multi-rank tests.
#pragma once

#include <gtest/gtest.h>

#include <chrono>

#include "skyring/engine.h"

namespace skyring::testing {

// Waits for h at most a generous bound, so a test that goes wrong fails instead of hanging.
inline void finish(const Handle& h) {
  ASSERT_TRUE(h.waitFor(std::chrono::seconds(60))) << "a handle did not complete in 60 s";
  h.wait();
}

}  // namespace skyring::testing
