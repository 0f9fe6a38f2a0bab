// The Transport and Request of the UCX transport: thin handles over ucx::Core, which holds
// the rank's UCX state (see ucx_core.h) and outlives every Request taken from it.
#include "skyring/ucx_transport.h"

#include "transport/ucx_core.h"

namespace skyring::transport {
namespace {

class UcxRequest final : public Request {
 public:
  UcxRequest(std::shared_ptr<ucx::Core> core, std::unique_ptr<ucx::Op> op)
      : core_(std::move(core)), op_(std::move(op)) {}
  ~UcxRequest() override { core_->release(std::move(op_)); }

  bool test() override {
    std::lock_guard lock(core_->mutex());
    if (!op_->done) core_->progressLocked();
    return core_->checkLocked(*op_);
  }

  bool waitUntil(Clock::time_point deadline) override {
    std::unique_lock lock(core_->mutex());
    return core_->waitLocked(lock, deadline, [&] { return core_->checkLocked(*op_); });
  }

  int peer() const noexcept override { return op_->peer; }

 private:
  std::shared_ptr<ucx::Core> core_;
  std::unique_ptr<ucx::Op> op_;
};

class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(std::shared_ptr<ucx::Core> core) : core_(std::move(core)) {}
  ~UcxTransport() override { shutdown(); }

  int rank() const noexcept override { return core_->rank(); }
  int size() const noexcept override { return core_->size(); }

  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override {
    checkPeer(peer);
    std::unique_ptr<ucx::Op> op;
    {
      std::lock_guard lock(core_->mutex());
      op = core_->postSendLocked(peer, tag, data);
    }
    return std::make_unique<UcxRequest>(core_, std::move(op));
  }

  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override {
    checkPeer(peer);
    std::unique_ptr<ucx::Op> op;
    {
      std::lock_guard lock(core_->mutex());
      op = core_->postRecvLocked(peer, tag, data);
    }
    return std::make_unique<UcxRequest>(core_, std::move(op));
  }

  void abort(ErrorKind kind, const std::string& reason) noexcept override {
    core_->abort(kind, reason);
  }

  void shutdown() noexcept override { core_->close(); }

 private:
  void checkPeer(int peer) const {
    SKYRING_CHECK_ARG(peer >= 0 && peer < size(), (ErrorContext{rank(), peer, {}}),
                      "peer out of range for a group of ", size());
  }

  std::shared_ptr<ucx::Core> core_;
};

}  // namespace

std::shared_ptr<Transport> makeUcxTransport(int rank, int size, const AllgatherFn& oob,
                                            const UcxOptions& options) {
  SKYRING_CHECK_ARG(size >= 1, (ErrorContext{rank, -1, "ucx setup"}),
                    "group size must be at least 1, got ", size);
  SKYRING_CHECK_ARG(rank >= 0 && rank < size, (ErrorContext{rank, -1, "ucx setup"}), "rank ", rank,
                    " out of range for a group of ", size);
  SKYRING_CHECK_ARG(static_cast<bool>(oob), (ErrorContext{rank, -1, "ucx setup"}),
                    "no out-of-band exchange given");
  return std::make_shared<UcxTransport>(std::make_shared<ucx::Core>(rank, size, oob, options));
}

}  // namespace skyring::transport
