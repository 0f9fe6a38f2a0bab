// RankRecord: where one rank runs, as that rank itself reports it at start-up.
//
// Each rank builds its own record with localRecord() and the bootstrap allgathers the
// serialized bytes, so every rank ends up with the same vector of records (index = rank)
// from which it builds a Topology.
//
// Fields
//   node   the machine (by default its hostname; SKYRING_NODE overrides). Two ranks are
//          on one node when both node and cloud are equal, so equal pod names in two
//          Kubernetes clusters do not merge into one node.
//   cloud  the cloud or cluster (SKYRING_CLOUD, default "default"): ranks with equal
//          cloud are joined by a fast, free link; different clouds by a WAN.
//   region informational only (SKYRING_REGION): logged and reported, never used to
//          group ranks or to pick a link class (two regions of one provider are two
//          clouds for skyring if the link between them is a WAN: give them two names).
//
// Failure: InvalidArgument for an empty node or cloud, a field longer than
// kMaxRecordField bytes or one holding control characters, and for bytes that parse()
// cannot read back exactly.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "skyring/config.h"
#include "skyring/error.h"

namespace skyring::topology {

struct RankRecord {
  std::string node;
  std::string cloud;
  std::string region;

  friend bool operator==(const RankRecord&, const RankRecord&) = default;
};

// Longest node, cloud or region name accepted (bytes); hostnames are at most 253.
inline constexpr std::size_t kMaxRecordField = 255;

// Throws InvalidArgument if the record breaks the rules above; `rank` (or -1) goes into
// the message.
void validate(const RankRecord& record, int rank = -1);

// This rank's record: node from SKYRING_NODE or else `hostname`, cloud and region from
// SKYRING_CLOUD / SKYRING_REGION (all read into Config). Validated.
RankRecord localRecord(const Config& config, std::string hostname);

// Versioned binary form for the allgather at start-up: magic "SKRR", version byte, then
// node, cloud and region each as a 2-byte little-endian length and the bytes.
std::vector<std::byte> serialize(const RankRecord& record);
// Inverse of serialize(). Throws InvalidArgument for a wrong magic or version, a
// truncated or over-long input, or a record that fails validate().
RankRecord parse(std::span<const std::byte> bytes);

}  // namespace skyring::topology
