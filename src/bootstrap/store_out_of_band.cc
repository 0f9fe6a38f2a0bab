// Out-of-band exchange over the TCP store: rank 0 hosts it at MASTER_ADDR:MASTER_PORT,
// every rank is a client. Each exchange uses a fresh key prefix.
#include "bootstrap/out_of_band.h"
#include "bootstrap/tcp_store.h"

namespace skyring::bootstrap {
namespace {

class StoreOutOfBand final : public OutOfBand {
 public:
  explicit StoreOutOfBand(const Config& config)
      : rank_(config.launch.rank), size_(config.launch.size) {
    if (rank_ == 0) server_ = std::make_unique<TcpStoreServer>("0.0.0.0", config.launch.masterPort);
    client_ = std::make_unique<TcpStoreClient>(config.launch.masterAddr, config.launch.masterPort,
                                               config.initTimeout);
  }

  ~StoreOutOfBand() override {
    // Rank 0 serves until every rank is done with the store, unless the job failed (then
    // the others may never come) or the ranks said goodbye another way.
    try {
      if (!abandoned_) barrier();
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
    }
    client_.reset();
    server_.reset();
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  void abandon() noexcept override { abandoned_ = true; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    return bootstrap::allgather(*client_, "allgather/" + std::to_string(round_++) + "/", rank_,
                                size_, mine);
  }

  void barrier() override {
    bootstrap::barrier(*client_, "barrier/" + std::to_string(round_++) + "/", rank_, size_);
  }

 private:
  int rank_;
  int size_;
  int round_ = 0;
  bool abandoned_ = false;
  std::unique_ptr<TcpStoreServer> server_;
  std::unique_ptr<TcpStoreClient> client_;
};

}  // namespace

std::unique_ptr<OutOfBand> makeStoreOutOfBand(const Config& config) {
  return std::make_unique<StoreOutOfBand>(config);
}

}  // namespace skyring::bootstrap
