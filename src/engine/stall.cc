#include "engine/stall.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <sstream>

#include "engine/wire.h"

namespace skyring::engine {

void appendReport(std::vector<std::byte>& out, const PendingReport& r) {
  putWire(out, r.name);
  putWire(out, r.ageMs);
}

std::vector<PendingReport> parseReports(std::span<const std::byte> bytes, int fromRank, int rank) {
  WireReader in(bytes, fromRank, rank);
  std::vector<PendingReport> out;
  while (!in.done()) {
    PendingReport r;
    r.name = in.text();
    r.ageMs = in.get<std::uint64_t>();
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<Stall> findStalls(const std::vector<std::vector<PendingReport>>& reports,
                              std::uint64_t minAgeMs) {
  const int n = static_cast<int>(reports.size());
  std::map<std::string, Stall> byName;
  for (int r = 0; r < n; ++r) {
    for (const PendingReport& p : reports[static_cast<std::size_t>(r)]) {
      Stall& s = byName[p.name];
      s.name = p.name;
      if (s.submitted.empty() || s.submitted.back() != r) s.submitted.push_back(r);
      s.ageMs = std::max(s.ageMs, p.ageMs);
    }
  }
  std::vector<Stall> out;
  for (auto& [name, s] : byName) {
    if (static_cast<int>(s.submitted.size()) == n || s.ageMs < minAgeMs) continue;
    for (int r = 0; r < n; ++r) {
      if (!std::binary_search(s.submitted.begin(), s.submitted.end(), r)) s.missing.push_back(r);
    }
    out.push_back(std::move(s));
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const Stall& a, const Stall& b) { return a.ageMs > b.ageMs; });
  return out;
}

namespace {

void listRanks(std::ostringstream& os, const std::vector<int>& ranks) {
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (std::size_t i = 0; i < ranks.size(); ++i)
    os << (i ? "," : "") << ranks[i];
}

}  // namespace

std::string describeStalls(const std::vector<Stall>& stalls, std::size_t limit) {
  std::ostringstream os;
  for (std::size_t i = 0; i < stalls.size() && i < limit; ++i) {
    const Stall& s = stalls[i];
    const std::uint64_t centis = s.ageMs / 10;
    os << (i ? "; '" : "'") << s.name << "' (waiting " << centis / 100 << '.'
       << (centis % 100 < 10 ? "0" : "") << centis % 100 << " s) submitted by ";
    listRanks(os, s.submitted);
    os << ", missing on ";
    listRanks(os, s.missing);
  }
  if (stalls.size() > limit) os << "; and " << stalls.size() - limit << " more";
  return os.str();
}

}  // namespace skyring::engine
