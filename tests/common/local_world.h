// LocalWorld: n ranks as n threads of this process over the in-process transport.
//
// run(fn) calls fn(communicator) on every rank at once and rethrows the first failure
// (in time). A rank whose fn throws aborts the group, so the others fail fast instead of
// waiting for their timeout.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "skyring/communicator.h"
#include "skyring/inprocess_transport.h"
#include "transport/node_channel.h"

namespace skyring::testing {

class LocalWorld {
 public:
  explicit LocalWorld(int size, Config config = defaultConfig())
      : world_(size), config_(std::move(config)) {
    for (int r = 0; r < size; ++r)
      transports_.push_back(world_.transport(r));
  }

  static Config defaultConfig() {
    Config c;
    c.timeout = std::chrono::milliseconds(20000);
    return c;
  }

  int size() const { return world_.size(); }
  // Ranks also share a node channel (as processes of one node would), so allreduce and
  // barrier on tag 0 take the shared-memory paths.
  void shareMemory(std::size_t slotBytes) {
    node_ = std::make_unique<transport::NodeChannel::Local>(size(), slotBytes);
  }
  transport::InProcessWorld& world() { return world_; }

  // One exception_ptr per rank (null where the rank succeeded).
  std::vector<std::exception_ptr> runCollect(const std::function<void(Communicator&)>& fn) {
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(size()));
    std::vector<std::thread> threads;
    for (int r = 0; r < size(); ++r) {
      threads.emplace_back([&, r] {
        std::shared_ptr<transport::NodeChannel> node;
        if (node_) node = node_->channel(r);
        try {
          Communicator comm(transports_[static_cast<std::size_t>(r)], config_, node);
          fn(comm);
        } catch (const std::exception& e) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
          const std::string reason = "rank " + std::to_string(r) + " failed: " + e.what();
          transports_[static_cast<std::size_t>(r)]->abort(ErrorKind::aborted, reason);
          if (node) node->abort(ErrorKind::aborted, reason);
        }
      });
    }
    for (auto& t : threads)
      t.join();
    return errors;
  }

  void run(const std::function<void(Communicator&)>& fn) {
    std::mutex mu;
    std::exception_ptr first;
    auto errors = runCollectOrdered(fn, mu, first);
    if (first) std::rethrow_exception(first);
  }

 private:
  std::vector<std::exception_ptr> runCollectOrdered(const std::function<void(Communicator&)>& fn,
                                                    std::mutex& mu, std::exception_ptr& first) {
    return runCollect([&](Communicator& comm) {
      try {
        fn(comm);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!first) first = std::current_exception();
        throw;
      }
    });
  }

  transport::InProcessWorld world_;
  Config config_;
  std::vector<std::shared_ptr<transport::Transport>> transports_;
  std::unique_ptr<transport::NodeChannel::Local> node_;
};

}  // namespace skyring::testing
