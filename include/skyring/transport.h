// Point-to-point byte movement between the ranks of a group.
//
// Semantics
//   - isend/irecv are non-blocking and return a Request. Messages between one pair of
//     ranks with the same tag are matched in the order they were posted (FIFO), so a
//     tag need not carry a per-message counter.
//   - A receive must be posted with exactly the size of the message it matches; a
//     different size fails both requests with TransportError (this is how mismatched
//     collective calls across ranks are caught instead of corrupting memory).
//   - Zero-byte messages are legal and are matched like any other.
//
// Ownership: the caller keeps the buffer alive and unchanged (send) or untouched
// (receive) until the Request completes or is destroyed. Destroying a pending Request
// cancels it.
//
// Thread-safety: a Transport may be used from several threads, but one Request only
// from one thread at a time.
//
// Failure: a dead peer fails the requests that involve it with TransportError naming
// it. abort() fails every pending and future request of every rank of the group with
// the given reason, so one rank's diagnosis reaches all (no rank is left waiting).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "skyring/error.h"

namespace skyring::transport {

using Clock = std::chrono::steady_clock;
using Tag = std::uint64_t;

class Request {
 public:
  virtual ~Request() = default;
  // True once the request has completed. Throws (TransportError, Aborted, ...) if it
  // failed.
  virtual bool test() = 0;
  // Blocks until completion (true) or the deadline (false, still pending). Throws as
  // test() does.
  virtual bool waitUntil(Clock::time_point deadline) = 0;
  virtual int peer() const noexcept = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  // The number that rank `rank` of this group has in the whole job, for messages: a user
  // must read the rank the launcher gave, not a position inside some level of an
  // algorithm. Groups that renumber ranks (SubgroupTransport) map through their parent.
  virtual int jobRank(int rank) const noexcept { return rank; }
  // Which group of the job this is, for messages ("cloud level", "cross-cloud level");
  // empty for the job's own group.
  virtual std::string groupLabel() const { return {}; }

  virtual std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) = 0;
  virtual std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) = 0;

  // Propagates a failure to the whole group: every rank's pending and later requests
  // fail with an error of the given kind whose message is reason. Idempotent; the first
  // reason wins.
  virtual void abort(ErrorKind kind, const std::string& reason) noexcept = 0;

  // Leaves the group: this rank's pending requests fail with Aborted; peers see this
  // rank as gone. Called by destructors, so it never throws.
  virtual void shutdown() noexcept = 0;
};

}  // namespace skyring::transport
