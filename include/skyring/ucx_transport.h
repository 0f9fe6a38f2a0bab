// The UCX transport: ranks are processes (or threads) connected through UCX's tag API over
// host memory. Every rank owns one UCP context, one worker and one endpoint per rank of
// the group (itself included); the endpoints are set up and exercised by a handshake in
// makeUcxTransport (a hello to and from every peer), so the first collective does not pay
// for connection setup.
//
// Semantics are those of transport.h. Tag mapping: UCX matches on a 64-bit tag alone, so
// the sender's rank is folded into it (see src/transport/ucx_tags.h for the layout and the
// exact conditions under which two skyring tags can share a UCX tag; for the collectives'
// tags that needs calls at least 4096 sequence numbers apart in flight at once). Payloads
// travel as they are, without headers or copies beyond what UCX's own protocols do (eager
// below the rendezvous threshold, zero-copy rendezvous above it). A size mismatch fails the
// receive only; the send completes.
//
// Progress: a rank's requests advance only while one of them is tested or waited on
// (there is no progress thread); in particular a large (rendezvous) send completes only
// while its sender waits. waitUntil() spins for a few tens of microseconds and then sleeps
// on the worker's event file descriptor (unless UcxOptions::busyPoll), so idle ranks do
// not burn a core when there are more ranks than cores.
//
// Thread-safety: every UCX call of a rank is made under one mutex of that rank, so the
// Transport may be used from several threads. A Request may outlive its Transport; after
// shutdown() it fails with Aborted.
//
// Failure: endpoints use UCP_ERR_HANDLING_MODE_PEER, so an endpoint error (peer process
// gone: connection reset, endpoint timeout) fails that peer's pending and later requests
// with TransportError "connection to rank p lost: rank p died". (UCX 1.13's shared-memory
// transports cannot report a dead peer, so UCX then carries even intra-node traffic over
// transports that can, such as TCP or InfiniBand.) abort() sends its kind and reason to
// every peer on a reserved control tag, where a receive is always posted, and waits (at
// most two seconds) until UCX has taken the messages; each rank then fails its pending and
// later requests with that kind and reason and ErrorContext::peer -1, as the in-process
// transport does. (A peer that is not progressing, with the connection to it clogged by
// data it has not read, may miss the abort if this rank then gives up a send to it, below;
// it then fails through its own timeout.) With UcxOptions::controlSeal, aborts and
// goodbyes are sealed per peer and those that do not open are ignored.
//
// shutdown() cancels this rank's requests (Aborted), flushes the endpoints (at most a
// second), tells the peers it is leaving (they fail with "rank p has left the group"),
// force-closes the endpoints and destroys the worker and context; the destructor calls it.
//
// Destroying a pending send cannot cancel it in UCX (only receives can be cancelled), and
// UCX may read its buffer until it completes. So the destructor waits for it: up to one
// second while the group is healthy, after which (or at once, when the group is aborted or
// the peer gone) the endpoint to that peer is force-closed, which completes the send.
// Later requests to that peer then fail on this rank; the peer is not told, and sees this
// rank as gone only once it shuts down.
//
// Configuration comes from UCX itself (ucp_config_read): UCX_TLS, UCX_NET_DEVICES,
// UCX_KEEPALIVE_INTERVAL and the like are honoured as usual.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "skyring/transport.h"

namespace skyring::transport {

// Seals the transport's own control messages, aborts and goodbyes, for a job that seals
// its links (docs/security.md), so that one forged by a stranger on the network is ignored
// instead of stopping the job. kind is 2 (abort) or 3 (goodbye) and is bound into the
// seal. Called with the transport's lock held, from whichever thread sends or receives:
// must not call the transport, must be thread-safe, and open() must not throw.
class ControlSeal {
 public:
  virtual ~ControlSeal() = default;
  // The bytes sent to peer for payload: payload.size() + overhead() of them.
  virtual std::vector<std::byte> seal(int peer, std::uint8_t kind,
                                      std::span<const std::byte> payload) const = 0;
  // The payload sender sealed for this rank, or nullopt when sealed does not authenticate.
  virtual std::optional<std::vector<std::byte>> open(int sender, std::uint8_t kind,
                                                     std::span<const std::byte> sealed) const = 0;
  virtual std::size_t overhead() const noexcept = 0;
};

struct UcxOptions {
  // Bound on the connection handshake of makeUcxTransport.
  std::chrono::milliseconds connectTimeout{30000};
  // Spin on the worker instead of sleeping on its event fd (lowest latency, one busy core
  // per waiting thread).
  bool busyPoll = false;
  // Send every message eagerly: UCX's rendezvous threshold set to infinity (the Runtime
  // does not ask for it when the user set UCX_RNDV_THRESH: Config::ucxRendezvousThresholdSet).
  // For groups that span clouds: a rendezvous costs a round trip
  // before the data moves, and its control messages queue behind data on a loaded WAN
  // link; on a 1 Gbit/s link shaped with a 50 ms queue a two-rank ring used 63% of the
  // link with rendezvous and 95% without (docs/topology.md). The price: a receiver buffers
  // messages that arrive before their receive is posted, and large messages inside a
  // cloud lose zero-copy.
  bool eagerOnly = false;
  // Null: control messages travel as they are (any sender's abort is obeyed).
  std::shared_ptr<const ControlSeal> controlSeal;
};

// Out-of-band exchange supplied by the bootstrap (MPI allgather, TCP store, or threads in
// tests): given this rank's bytes, returns every rank's bytes indexed by rank. Blocking and
// collective; called once by makeUcxTransport.
using AllgatherFn = std::function<std::vector<std::vector<std::byte>>(std::span<const std::byte>)>;

// Connects this rank to the group. Collective: every rank of the group calls it with the
// same size and options. Throws InvalidArgument for a bad rank or size, TransportError when
// UCX cannot be set up, and Timeout (naming the missing ranks) when the handshake does not
// finish within options.connectTimeout.
std::shared_ptr<Transport> makeUcxTransport(int rank, int size, const AllgatherFn& oob,
                                            const UcxOptions& options = {});

}  // namespace skyring::transport
