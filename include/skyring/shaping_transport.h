// ShapingTransport: a decorator that emulates slow links (a WAN between clouds) for
// in-process tests and single-machine benchmarks, deterministically.
//
// Model. Each link class c has a bandwidth B_c (bytes/s, 0 = unlimited) and a one-way
// latency L_c. This rank owns one queue per class, as a NIC owns one wire: the bandwidth
// of class c is shared by every message this rank sends over c, whatever the peer. A
// message of b bytes posted at time t over class c
//   starts     at s = max(t, linkFreeAt[c])      (waits for earlier messages on c),
//   departs    at d = s + b / B_c                (last byte on the wire; linkFreeAt[c] = d),
//   is delivered at a = d + L_c                  (posted to the inner transport then).
// A class with B_c = 0 and L_c = 0 is unshaped: sends go straight to the inner transport.
//
// Design: delay the sender, not the receiver. isend copies the payload (the eager copy
// the in-process transport makes anyway) and queues it; one timer thread per
// ShapingTransport posts each message to the inner transport at its delivery time a, in
// order of (a, posting order). Receives are the inner transport's own, untouched: a
// message simply does not exist for the receiver before a, so the receiver's test() and
// waitUntil() cannot report it early, with no clock or header shared between ranks. The
// alternative (post at once and make the receiver's request hide completion until a) would
// need the sender's timestamps in-band and a wrapper on every receive.
//
// Send requests complete at the departure time d, when a real NIC would release the
// buffer: test() is false before d and waitUntil() does not return true before d, so a
// sender that waits on its sends is paced at B_c. (The buffer itself may be reused at once
// because it was copied.)
//
// Ordering: delivery times on one class never decrease (linkFreeAt and L_c do not), and
// ties are broken by posting order, so messages to one peer (one class) reach the inner
// transport in the order they were posted: FIFO per (peer, tag) is kept.
//
// Ownership: shares the inner transport and the topology. The destructor keeps posting
// the queued messages at their delivery times (as a kernel still flushes a closed
// socket) and then stops the timer thread; it does not shut the inner transport down.
// Destroying a pending send request does not recall its message: it is already copied
// and committed to the wire, as an eager send is.
//
// Thread-safety: as the inner transport; isend may be called from several threads.
//
// Failure: abort() and shutdown() forward to the inner transport, drop the messages not
// yet delivered, and fail this rank's pending and later shaped sends (with the abort's
// kind and reason, or Aborted). Failures the inner transport reports when a queued
// message is posted (e.g. the peer died meanwhile) are dropped: the send completed, and
// the receiver sees the peer's failure through its own requests. A failure raised by
// another rank's abort() reaches this rank's shaped sends only after their departure,
// through later inner calls. The constructor throws InvalidArgument for a topology of a
// different size or a negative or non-finite shape.
#pragma once

#include <array>
#include <initializer_list>
#include <memory>
#include <thread>

#include "skyring/topology.h"
#include "skyring/transport.h"

namespace skyring::transport {

struct LinkShape {
  double bandwidthBytesPerSec = 0;  // 0: unlimited
  Clock::duration latency{0};       // one way
};
// Indexed by topology::index(LinkClass).
using LinkShapes = std::array<LinkShape, topology::kLinkClassCount>;

class ShapingTransport final : public Transport {
 public:
  ShapingTransport(std::shared_ptr<Transport> inner,
                   std::shared_ptr<const topology::Topology> topology, const LinkShapes& shapes);
  ~ShapingTransport() override;
  ShapingTransport(const ShapingTransport&) = delete;
  ShapingTransport& operator=(const ShapingTransport&) = delete;

  // Shapes taken from a cost model for the listed classes (the others unshaped), e.g.
  // shapesFrom(topology.costs(), {LinkClass::crossCloud}) to emulate only the WAN.
  static LinkShapes shapesFrom(const topology::CostModel& costs,
                               std::initializer_list<topology::LinkClass> classes);

  int rank() const noexcept override;
  int size() const noexcept override;

  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override;
  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override;
  void abort(ErrorKind kind, const std::string& reason) noexcept override;
  void shutdown() noexcept override;

  struct State;

 private:
  std::shared_ptr<State> state_;
  std::thread timer_;
};

}  // namespace skyring::transport
