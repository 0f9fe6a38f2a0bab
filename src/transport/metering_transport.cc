// MeteringTransport: per-class counters around an inner transport.
#include "skyring/metering_transport.h"

namespace skyring::transport {

MeteringTransport::MeteringTransport(std::shared_ptr<Transport> inner,
                                     std::shared_ptr<const topology::Topology> topology)
    : inner_(std::move(inner)), topology_(std::move(topology)) {
  SKYRING_CHECK_ARG(inner_ != nullptr && topology_ != nullptr, {},
                    "MeteringTransport needs a transport and a topology");
  SKYRING_CHECK_ARG(topology_->size() == inner_->size(), (ErrorContext{inner_->rank(), -1, {}}),
                    "the topology describes ", topology_->size(), " ranks but the transport has ",
                    inner_->size());
}

std::unique_ptr<Request> MeteringTransport::isend(int peer, Tag tag,
                                                  std::span<const std::byte> data) {
  // Post first: an invalid peer or a failed group throws here and is not counted.
  auto request = inner_->isend(peer, tag, data);
  const std::size_t c = topology::index(topology_->linkClass(rank(), peer));
  bytes_[c].fetch_add(data.size(), std::memory_order_relaxed);
  messages_[c].fetch_add(1, std::memory_order_relaxed);
  return request;
}

TrafficStats MeteringTransport::stats() const noexcept {
  TrafficStats s;
  for (std::size_t c = 0; c < topology::kLinkClassCount; ++c) {
    s.bytes[c] = bytes_[c].load(std::memory_order_relaxed);
    s.messages[c] = messages_[c].load(std::memory_order_relaxed);
    s.egressDollars += topology_->costs()[static_cast<topology::LinkClass>(c)].egressDollars(
        static_cast<std::size_t>(s.bytes[c]));
  }
  return s;
}

}  // namespace skyring::transport
