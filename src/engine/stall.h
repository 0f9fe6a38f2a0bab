// The stall inspector's pure part: what each rank reports it has pending (names and how
// long they have waited), and which names some ranks submitted and others did not.
// No I/O; the engine exchanges the reports (engine.cc).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace skyring::engine {

struct PendingReport {
  std::string name;
  std::uint64_t ageMs = 0;  // since it was submitted on the reporting rank
};

void appendReport(std::vector<std::byte>& out, const PendingReport& r);
// Throws TransportError naming fromRank when the bytes are not a well-formed list.
std::vector<PendingReport> parseReports(std::span<const std::byte> bytes, int fromRank, int rank);

struct Stall {
  std::string name;
  std::vector<int> submitted;  // ranks that have it pending
  std::vector<int> missing;    // ranks that do not
  std::uint64_t ageMs = 0;     // the longest any rank has waited for it
};

// Names pending on some ranks but not all (reports[r] is rank r's), waited for at least
// minAgeMs, oldest first (then by name). Depends only on its arguments, so every rank
// that has the same reports reaches the same list.
std::vector<Stall> findStalls(const std::vector<std::vector<PendingReport>>& reports,
                              std::uint64_t minAgeMs);

// "'a' (waiting 61 s) submitted by ranks 0,2, missing on rank 1; ..." listing at most
// limit stalls, then how many more.
std::string describeStalls(const std::vector<Stall>& stalls, std::size_t limit = 8);

}  // namespace skyring::engine
