// What every rank says about itself when it joins the job, and the checks all ranks run on
// what everyone said (internal to the runtime).
//
// The first exchange at init carries, from each rank, its topology record and the
// effective value of every setting that must be equal on all ranks
// (Config::jobSettings). Every rank receives the same records, so every rank reaches the
// same verdict: either all go on, or all throw the same error. The check runs before any
// step whose course depends on a setting (shared-memory setup, the algorithms), so a
// setting that differs between ranks, for example through `mpirun -x`, which applies to
// its own app context only, fails at once and by name instead of hanging the bootstrap
// or corrupting a result.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "skyring/config.h"
#include "skyring/rank_record.h"

namespace skyring::runtime {

struct JoinRecord {
  topology::RankRecord where;
  std::vector<std::pair<std::string, std::string>> settings;  // (name, canonical value)
};

// This rank's record: where it runs and its job-wide settings.
JoinRecord localJoinRecord(const Config& config, const std::string& hostname);

// Versioned binary form: magic "SKJR", version byte, u16 count of settings, each as
// u16-length name and u16-length value, then the topology record (rank_record.h).
std::vector<std::byte> serialize(const JoinRecord& record);
// Inverse of serialize(). Bytes come from another process: anything malformed is a
// TransportError naming `rank`, the rank that sent them.
JoinRecord parseJoinRecord(std::span<const std::byte> bytes, int rank);

// Throws InvalidArgument, the same on every rank, when any job-wide setting differs
// between ranks: the message names each differing variable, its values and the ranks that
// hold each, and says that `mpirun -x` applies to its own app context only.
void checkSettingsAgree(const std::vector<JoinRecord>& records, int myRank);

}  // namespace skyring::runtime
