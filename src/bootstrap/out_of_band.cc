#include "bootstrap/out_of_band.h"

namespace skyring::bootstrap {
namespace {

class SingleProcess final : public OutOfBand {
 public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }
  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    return {std::vector<std::byte>(mine.begin(), mine.end())};
  }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<OutOfBand> makeOutOfBand(const Config& config) {
  switch (config.launch.launcher) {
    case LaunchEnvironment::Launcher::mpi:
      return makeMpiOutOfBand(config);
    case LaunchEnvironment::Launcher::torchrun:
      return makeStoreOutOfBand(config);
    case LaunchEnvironment::Launcher::none:
      break;
  }
  return std::make_unique<SingleProcess>();
}

}  // namespace skyring::bootstrap
