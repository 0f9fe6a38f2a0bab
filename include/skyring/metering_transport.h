// MeteringTransport: a decorator that counts the bytes and messages this rank sends over
// each link class, and what the egress costs.
//
// Everything is forwarded to the inner transport unchanged. A send is counted when the
// inner isend returns a request (a send that throws at posting is not counted; one that
// fails later is, as its bytes were handed to the network). Receives are not counted:
// the sender's count is the egress that clouds bill.
//
// Ownership: shares the inner transport and the topology; destroying the decorator does
// not shut the inner transport down (others may hold it).
//
// Thread-safety: as the inner transport; the counters are relaxed atomics, so stats()
// may run concurrently with sends and sees each count as of some recent moment (the
// per-class counts of one snapshot are not taken atomically together).
//
// Failure: the constructor throws InvalidArgument when the topology's size differs from
// the transport's; every other failure is the inner transport's.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "skyring/topology.h"
#include "skyring/transport.h"

namespace skyring::transport {

struct TrafficStats {
  // Indexed by topology::index(LinkClass).
  std::array<std::uint64_t, topology::kLinkClassCount> bytes{};
  std::array<std::uint64_t, topology::kLinkClassCount> messages{};
  // Sum over classes of bytes times that class's egress price (the topology's costs).
  double egressDollars = 0;

  std::uint64_t bytesOver(topology::LinkClass c) const { return bytes[topology::index(c)]; }
  std::uint64_t messagesOver(topology::LinkClass c) const { return messages[topology::index(c)]; }
};

class MeteringTransport final : public Transport {
 public:
  MeteringTransport(std::shared_ptr<Transport> inner,
                    std::shared_ptr<const topology::Topology> topology);

  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }

  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override;
  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override {
    return inner_->irecv(peer, tag, data);
  }
  void abort(ErrorKind kind, const std::string& reason) noexcept override {
    inner_->abort(kind, reason);
  }
  void shutdown() noexcept override { inner_->shutdown(); }

  TrafficStats stats() const noexcept;

 private:
  std::shared_ptr<Transport> inner_;
  std::shared_ptr<const topology::Topology> topology_;
  std::array<std::atomic<std::uint64_t>, topology::kLinkClassCount> bytes_{};
  std::array<std::atomic<std::uint64_t>, topology::kLinkClassCount> messages_{};
};

}  // namespace skyring::transport
