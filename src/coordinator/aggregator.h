// The coordinator's aggregator (internal): rounds of N named clusters, each submitting
// its pseudo-gradient in chunks; a weighted average by reported samples, computed as the
// chunks arrive; a quorum and a deadline; late submissions dropped or carried; then the
// outer optimizer. The network service (next to come) feeds it what its connections
// decode; the tests drive it directly. Time is passed in, never read, so tests are exact.
//
// A round k closes when every active member has submitted for k, or when the deadline
// (k's opening + options.deadline) has passed and at least `quorum` have. Closing
// divides the accumulated sum by the total samples, applies the outer step, opens round
// k + 1 and marks the members that did not submit as inactive (the next rounds do not
// wait for them; a submission or join() makes them active again). A deadline passed
// without quorum counts one quorum miss; the round then closes as soon as quorum is met.
//
// Submissions. begin() answers, for (cluster, round r) with k open:
//   r == k, not yet counted       -> accepted (a begin while one is in flight restarts it)
//   r counted already              -> duplicate (idempotent: nothing is counted twice)
//   r == k - 1, policy carry       -> carried: added to round k's sum (not to its quorum)
//   r < k otherwise                -> late, dropped
//   r > k                          -> TransportError (no such round yet)
// Chunks come in order, contiguously, each a compression-layer blob of the declared codec;
// end() needs exactly the model's element count. A submission that fails (bad chunk,
// abort(), or still in flight when its round closes) is subtracted from the sum again
// exactly, from its undo log (undo_log.h); after a close, its remaining chunks are ignored
// and its end() answers late.
//
// Determinism: the sum is exact integer arithmetic over contributions each converted on
// its own (fixed_point.h), so the closed round's weights do not depend on the order of
// submissions or chunks, nor on a restart in between (docs/coordinator.md).
//
// Memory: 16 bytes per element (the sum) + 8 (weights and momentum) + one chunk decoded
// (and 512 KiB at a close);
// not proportional to the number of clusters. Undo logs take the in-flight submissions'
// encoded bytes, on disk when options.spillDir is set.
//
// Threads: one at a time (the service's strand). Errors: peers' mistakes throw
// TransportError naming the cluster; bad options throw InvalidArgument.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/fixed_point.h"
#include "coordinator/outer_optimizer.h"
#include "coordinator/state.h"
#include "coordinator/undo_log.h"
#include "coordinator/wire.h"
#include "skyring/compression.h"

namespace skyring::coordinator {

using Clock = std::chrono::steady_clock;

enum class LatePolicy : std::uint8_t { drop = 0, carry = 1 };

struct AggregatorOptions {
  std::vector<std::string> clusters;                             // the membership: N unique names
  std::uint32_t quorum = 1;                                      // Q in [1, N]
  std::chrono::milliseconds deadline{std::chrono::minutes(10)};  // from the round's opening
  LatePolicy late = LatePolicy::drop;
  OuterOptions outer;
  std::string spillDir;  // undo logs of in-flight submissions; empty: in memory
};

enum class Admission : std::uint8_t { accepted, duplicate, carried, lateDropped };

struct AggregatorStats {
  std::uint64_t roundsClosed = 0;
  std::uint64_t submissionsCounted = 0;  // on time and carried
  std::uint64_t submissionsCarried = 0;
  std::uint64_t submissionsLate = 0;  // dropped
  std::uint64_t submissionsDuplicate = 0;
  std::uint64_t submissionsAborted = 0;  // undone
  std::uint64_t quorumMisses = 0;
  std::uint64_t bytesIn = 0;  // chunk blobs
};

class Aggregator {
 public:
  // Starts round state.round (a fresh state: round 0 with initial weights; or a loaded
  // checkpoint) opening at `now`. state.members must name options.clusters (a fresh state
  // may leave members empty). Throws InvalidArgument for inconsistent options or state.
  Aggregator(AggregatorOptions options, CoordinatorState state, Clock::time_point now);
  ~Aggregator();

  Admission begin(const std::string& cluster, const wire::SubmitBegin& begin,
                  Clock::time_point now);
  void chunk(const std::string& cluster, std::uint64_t offset, std::span<const std::byte> blob);
  // Completes the cluster's submission; returns its admission again (accepted or carried
  // when counted; lateDropped when its round closed first). May close the round.
  Admission end(const std::string& cluster, std::uint64_t round, Clock::time_point now);
  // The cluster's connection is gone: its in-flight submission, if any, is undone.
  void abort(const std::string& cluster);
  // Closes the round if its deadline has passed with quorum; true if a round closed.
  bool poll(Clock::time_point now);
  void leave(const std::string& cluster);
  void join(const std::string& cluster);

  wire::RoundStatus status(const std::string& cluster, std::uint64_t round) const;
  // When the open round's deadline passes (for the service's timer).
  Clock::time_point deadline() const noexcept { return opened_ + options_.deadline; }
  // The state after the last close: what a checkpoint must hold.
  const CoordinatorState& state() const noexcept { return state_; }
  const AggregatorStats& stats() const noexcept { return stats_; }
  std::uint64_t elementCount() const noexcept { return state_.weights.size(); }
  // Counted submissions of the open round so far (on time, toward the quorum).
  std::uint32_t submitted() const noexcept { return static_cast<std::uint32_t>(onTime_); }

 private:
  struct Submission;

  MemberState& member(const std::string& cluster);
  const MemberState& member(const std::string& cluster) const;
  bool isCounted(const MemberState& m, std::uint64_t round) const;
  void addChunk(const Submission& s, std::uint64_t offset, std::span<const std::byte> blob,
                bool subtract);
  void undo(Submission& s);
  std::uint32_t activeMembers() const;
  bool maybeClose(Clock::time_point now);
  void close(Clock::time_point now);

  AggregatorOptions options_;
  CoordinatorState state_;
  Clock::time_point opened_;
  std::vector<fixed::Fixed> sum_;  // see fixed_point.h
  std::uint64_t samples_ = 0;      // total weight of the contributions in sum_
  std::uint64_t onTime_ = 0;       // counted submissions of the open round
  bool missCounted_ = false;       // the open round's quorum miss is counted already
  std::vector<std::unique_ptr<Submission>> inFlight_;  // by member index; null if none
  std::vector<float> scratch_;                         // one chunk decoded
  std::vector<double> delta_;                          // a block of the average at a close
  std::unique_ptr<compression::Compressor> codecs_[4];
  AggregatorStats stats_;
};

}  // namespace skyring::coordinator
