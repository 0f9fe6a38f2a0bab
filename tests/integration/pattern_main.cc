// One allreduce (sum) of 1 MiB of floats, every element kPattern on every rank, for the
// capture test (capture_sealed.sh): in the clear, what crosses clouds is kPattern times a
// power of two (exact in binary floating point), which a capture finds. Prints
// "pattern allreduce ok" when every element came out right; exit 1 otherwise.
#include <cstdio>
#include <vector>

#include "skyring/runtime.h"

int main() {
  constexpr float kPattern = 1234.5678f;
  try {
    auto rt = skyring::Runtime::init();
    std::vector<float> v(std::size_t{1} << 18, kPattern);
    rt->world().allreduce(skyring::view(std::span(v)), skyring::ReduceOp::sum);
    const float want = kPattern * static_cast<float>(rt->size());
    for (float x : v) {
      if (x != want) {
        std::fprintf(stderr, "rank %d: got %g, want %g\n", rt->rank(), x, want);
        return 1;
      }
    }
    std::printf("rank %d: pattern allreduce ok\n", rt->rank());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
