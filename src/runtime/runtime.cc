#include "skyring/runtime.h"

#include <unistd.h>

#include <climits>
#include <cstring>
#include <string>

#include "bootstrap/out_of_band.h"
#include "skyring/inprocess_transport.h"
#include "skyring/ucx_transport.h"

namespace skyring {

struct Runtime::Parts {
  std::unique_ptr<bootstrap::OutOfBand> oob;
  std::unique_ptr<transport::InProcessWorld> alone;  // the world of one
  std::shared_ptr<transport::Transport> transport;
};

namespace {

std::string hostName() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

}  // namespace

Runtime::Runtime(Config config) : config_(std::move(config)), parts_(std::make_unique<Parts>()) {}

Runtime::~Runtime() {
  world_.reset();
  if (parts_->transport) parts_->transport->shutdown();
  parts_->transport.reset();
  parts_->oob.reset();
}

std::unique_ptr<Runtime> Runtime::init(Config config) {
  std::unique_ptr<Runtime> rt(new Runtime(std::move(config)));
  Parts& parts = *rt->parts_;
  parts.oob = bootstrap::makeOutOfBand(rt->config_);
  rt->rank_ = parts.oob->rank();
  rt->size_ = parts.oob->size();

  // Local rank and size: from the launcher where it says, else from hostnames.
  const auto& launch = rt->config_.launch;
  if (launch.localRank >= 0 && launch.localSize > 0) {
    rt->localRank_ = launch.localRank;
    rt->localSize_ = launch.localSize;
  } else {
    const std::string me = hostName();
    const auto all = parts.oob->allgather(std::as_bytes(std::span(me.data(), me.size())));
    rt->localRank_ = 0;
    rt->localSize_ = 0;
    for (int r = 0; r < rt->size_; ++r) {
      const auto& h = all[static_cast<std::size_t>(r)];
      const bool same = h.size() == me.size() && std::memcmp(h.data(), me.data(), me.size()) == 0;
      if (!same) continue;
      if (r < rt->rank_) ++rt->localRank_;
      ++rt->localSize_;
    }
  }

  if (rt->size_ == 1 && launch.launcher == LaunchEnvironment::Launcher::none) {
    parts.alone = std::make_unique<transport::InProcessWorld>(1);
    parts.transport = parts.alone->transport(0);
  } else {
    bootstrap::OutOfBand* oob = parts.oob.get();
    transport::UcxOptions options;
    options.connectTimeout = rt->config_.timeout;
    parts.transport = transport::makeUcxTransport(
        rt->rank_, rt->size_,
        [oob](std::span<const std::byte> mine) { return oob->allgather(mine); }, options);
  }
  rt->world_ = std::make_unique<Communicator>(parts.transport, rt->config_);
  return rt;
}

}  // namespace skyring
