#include "coordinator/service_metrics.h"

namespace skyring::coordinator {

namespace {

metrics::Counter& submissions(metrics::Registry& r, const char* outcome) {
  return r
      .counter("skyring_coordinator_submissions_total",
               "Submissions by outcome: counted (on time), carried (late, into the next "
               "round), late (dropped), duplicate (already counted), aborted (undone).",
               {"outcome"})
      .with({outcome});
}

}  // namespace

ServiceMetrics::ServiceMetrics()
    : registry_(std::make_shared<metrics::Registry>()),
      rounds_(registry_->counter("skyring_coordinator_rounds_total", "Rounds closed.").with({})),
      counted_(submissions(*registry_, "counted")),
      carried_(submissions(*registry_, "carried")),
      late_(submissions(*registry_, "late")),
      duplicate_(submissions(*registry_, "duplicate")),
      aborted_(submissions(*registry_, "aborted")),
      quorumMisses_(registry_
                        ->counter("skyring_coordinator_quorum_misses_total",
                                  "Round deadlines passed with fewer than the quorum.")
                        .with({})),
      bytesIn_(registry_
                   ->counter("skyring_coordinator_received_bytes_total",
                             "Encoded pseudo-gradient bytes received (chunk blobs).")
                   .with({})),
      bytesOut_(registry_
                    ->counter("skyring_coordinator_sent_bytes_total",
                              "Bytes sent to clients (frames, weights included).")
                    .with({})),
      refusals_(registry_
                    ->counter("skyring_coordinator_refusals_total",
                              "Connections refused or closed with an error frame.")
                    .with({})),
      openRound_(registry_->gauge("skyring_coordinator_open_round", "The open round.").with({})),
      connections_(
          registry_->gauge("skyring_coordinator_connections", "Connections open now.").with({})),
      roundSeconds_(registry_
                        ->histogram("skyring_coordinator_round_seconds",
                                    "Time from a round's opening to its close.", {},
                                    {0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600})
                        .with({})) {}

void ServiceMetrics::publish(const AggregatorStats& s, std::uint64_t openRound) noexcept {
  rounds_.advanceTo(static_cast<double>(s.roundsClosed));
  counted_.advanceTo(static_cast<double>(s.submissionsCounted - s.submissionsCarried));
  carried_.advanceTo(static_cast<double>(s.submissionsCarried));
  late_.advanceTo(static_cast<double>(s.submissionsLate));
  duplicate_.advanceTo(static_cast<double>(s.submissionsDuplicate));
  aborted_.advanceTo(static_cast<double>(s.submissionsAborted));
  quorumMisses_.advanceTo(static_cast<double>(s.quorumMisses));
  bytesIn_.advanceTo(static_cast<double>(s.bytesIn));
  openRound_.set(static_cast<double>(openRound));
}

}  // namespace skyring::coordinator
