// The join records ranks exchange at init, and the settings check every rank runs on them.
#include <gtest/gtest.h>

#include "runtime/join.h"
#include "skyring/error.h"

namespace skyring::runtime {
namespace {

std::vector<JoinRecord> recordsOf(const std::vector<std::map<std::string, std::string>>& envs) {
  std::vector<JoinRecord> out;
  for (const auto& env : envs) {
    const JoinRecord mine = localJoinRecord(Config::fromMap(env), "host");
    out.push_back(parseJoinRecord(serialize(mine), static_cast<int>(out.size())));
  }
  return out;
}

std::string verdict(const std::vector<JoinRecord>& records) {
  try {
    checkSettingsAgree(records, 0);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return {};
}

TEST(Join, RecordRoundTrips) {
  const JoinRecord mine = localJoinRecord(
      Config::fromMap({{"SKYRING_CLOUD", "aws"}, {"SKYRING_COMPRESSION", "int8"}}), "h1");
  const JoinRecord back = parseJoinRecord(serialize(mine), 3);
  EXPECT_EQ(back.where, mine.where);
  EXPECT_EQ(back.settings, mine.settings);
}

TEST(Join, EqualSettingsPass) {
  EXPECT_EQ(verdict(recordsOf({{}, {{"SKYRING_SHM_SLOT_BYTES", "65536"}}, {}})), "");
  // Per-rank settings (where a rank runs, how loudly it logs) may differ.
  EXPECT_EQ(verdict(recordsOf({{{"SKYRING_CLOUD", "aws"}, {"SKYRING_LOG_LEVEL", "debug"}},
                               {{"SKYRING_CLOUD", "gcp"}, {"SKYRING_INIT_TIMEOUT_MS", "1000"}}})),
            "");
}

TEST(Join, DifferingSettingIsNamedWithItsRanks) {
  const std::string what = verdict(recordsOf({{}, {}, {{"SKYRING_SHM_SLOT_BYTES", "4096"}}, {}}));
  EXPECT_NE(what.find("SKYRING_SHM_SLOT_BYTES differs between ranks"), std::string::npos) << what;
  EXPECT_NE(what.find("'4096' on rank 2"), std::string::npos) << what;
  EXPECT_NE(what.find("'65536' on ranks 0, 1 and 3"), std::string::npos) << what;
  EXPECT_NE(what.find("mpirun -x"), std::string::npos) << what;
}

// Every setting that must agree is checked (one differing rank of three each time).
TEST(Join, EverySettingThatMustAgreeIsChecked) {
  const std::map<std::string, std::string> other = {
      {"SKYRING_TIMEOUT_MS", "1234"},
      {"SKYRING_JOB_ID", "other"},
      {"SKYRING_ENCRYPT", "cross_cloud"},
      {"SKYRING_CIPHER", "chacha20-poly1305"},
      {"SKYRING_RING_CHUNK_BYTES", "4096"},
      {"SKYRING_RING_PIPELINE_DEPTH", "2"},
      {"SKYRING_SHM", "0"},
      {"SKYRING_SHM_SLOT_BYTES", "4096"},
      {"SKYRING_SHM_RING_BYTES", "4096"},
      {"SKYRING_SHM_SINGLE_COPY_BYTES", "4096"},
      {"SKYRING_SHM_CHUNK_BYTES", "4096"},
      {"SKYRING_ALLREDUCE", "ring"},
      {"SKYRING_COMPRESSION", "fp16"},
      {"SKYRING_COMPRESSION_LEVELS", "cloud"},
      {"SKYRING_FUSION_THRESHOLD", "4096"},
      {"SKYRING_ENGINE_REPLAY", "0"},
      {"SKYRING_STALL_SHUTDOWN_S", "5"},
      {"SKYRING_LINK_INTRA_NODE_GBPS", "7"},
      {"SKYRING_LINK_INTRA_NODE_LATENCY_MS", "7"},
      {"SKYRING_LINK_INTRA_CLOUD_GBPS", "7"},
      {"SKYRING_LINK_INTRA_CLOUD_LATENCY_MS", "7"},
      {"SKYRING_LINK_INTRA_CLOUD_DOLLARS_PER_GB", "7"},
      {"SKYRING_LINK_CROSS_CLOUD_GBPS", "7"},
      {"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "7"},
      {"SKYRING_LINK_CROSS_CLOUD_DOLLARS_PER_GB", "7"},
  };
  std::size_t mustAgree = 0;
  for (const auto& p : Config::parameters())
    mustAgree += p.mustAgree ? 1 : 0;
  EXPECT_EQ(other.size(), mustAgree) << "a setting that must agree has no case here";
  for (const auto& [name, value] : other) {
    std::map<std::string, std::string> differs = {{name, value}};
    if (name == "SKYRING_ENCRYPT") differs["SKYRING_JOB_TOKEN"] = "a token of 16 or more";
    const std::string what = verdict(recordsOf({{}, differs, {}}));
    EXPECT_NE(what.find(name + " differs between ranks"), std::string::npos)
        << name << ": " << what;
    EXPECT_NE(what.find("on rank 1"), std::string::npos) << what;
  }
}

TEST(Join, MalformedRecordIsATransportErrorNamingTheSender) {
  auto bytes = serialize(localJoinRecord(Config::fromMap({}), "h"));
  try {
    parseJoinRecord(std::span(bytes).first(7), 5);
    FAIL() << "a truncated record was accepted";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 5"), std::string::npos) << e.what();
  }
  bytes[0] = std::byte{'X'};
  EXPECT_THROW(parseJoinRecord(bytes, 5), TransportError);
}

}  // namespace
}  // namespace skyring::runtime
