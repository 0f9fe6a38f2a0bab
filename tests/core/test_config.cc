#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "skyring/config.h"
#include "skyring/error.h"

#ifndef SKYRING_SOURCE_DIR
#error "tests need SKYRING_SOURCE_DIR"
#endif

namespace skyring {
namespace {

TEST(Config, Defaults) {
  const Config c = Config::fromMap({});
  EXPECT_EQ(c.timeout, std::chrono::milliseconds(30000));
  EXPECT_EQ(c.logLevel, LogLevel::warn);
  EXPECT_TRUE(c.warnings.empty());
}

TEST(Config, ReadsEveryParameter) {
  const Config c = Config::fromMap({{"SKYRING_TIMEOUT_MS", "1500"},
                                    {"SKYRING_LOG_LEVEL", "debug"},
                                    {"SKYRING_RING_CHUNK_BYTES", "4096"},
                                    {"SKYRING_RING_PIPELINE_DEPTH", "2"},
                                    {"OTHER", "ignored"}});
  EXPECT_EQ(c.timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(c.logLevel, LogLevel::debug);
  EXPECT_EQ(c.ringChunkBytes, 4096u);
  EXPECT_EQ(c.ringPipelineDepth, 2);
}

TEST(Config, BadValuesNameTheVariable) {
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, std::string>>{{"SKYRING_TIMEOUT_MS", "soon"},
                                                        {"SKYRING_TIMEOUT_MS", "-5"},
                                                        {"SKYRING_TIMEOUT_MS", "10s"},
                                                        {"SKYRING_LOG_LEVEL", "loud"},
                                                        {"SKYRING_RING_PIPELINE_DEPTH", "0"},
                                                        {"SKYRING_METRICS_PORT", "65536"},
                                                        {"SKYRING_METRICS_PORT", "http"},
                                                        {"SKYRING_METRICS_ADDR", "localhost"},
                                                        {"SKYRING_METRICS_ADDR", ""}}) {
    try {
      Config::fromMap({{name, value}});
      ADD_FAILURE() << name << "=" << value << " was accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

// Metrics are off by default, on loopback when on, and per rank (need not agree).
TEST(Config, MetricsSettings) {
  const Config d;
  EXPECT_EQ(d.metricsPort, -1);
  EXPECT_EQ(d.metricsAddress, "127.0.0.1");
  const Config c =
      Config::fromMap({{"SKYRING_METRICS_PORT", "9400"}, {"SKYRING_METRICS_ADDR", "::"}});
  EXPECT_EQ(c.metricsPort, 9400);
  EXPECT_EQ(c.metricsAddress, "::");
  EXPECT_EQ(Config::fromMap({{"SKYRING_METRICS_PORT", "0"}}).metricsPort, 0);
  for (const auto& [name, value] : c.jobSettings())
    EXPECT_EQ(name.find("METRICS"), std::string_view::npos) << name;
}

TEST(Config, CompressionLevels) {
  EXPECT_EQ(Config::fromMap({}).compressionLevels, (CompressionLevels{false, true}));
  const auto levels = [](const char* v) {
    return Config::fromMap({{"SKYRING_COMPRESSION_LEVELS", v}}).compressionLevels;
  };
  EXPECT_EQ(levels("cross_cloud"), (CompressionLevels{false, true}));
  EXPECT_EQ(levels("cloud"), (CompressionLevels{true, false}));
  EXPECT_EQ(levels("cloud,cross_cloud"), (CompressionLevels{true, true}));
  EXPECT_EQ(levels("cross_cloud,cloud"), (CompressionLevels{true, true}));
  for (const char* bad : {"", "node", "cloud,", ",cloud", "cloud,cloud", "cloud cross_cloud"}) {
    EXPECT_THROW(levels(bad), InvalidArgument) << "'" << bad << "'";
  }
}

TEST(Config, EngineSettings) {
  const Config d = Config::fromMap({});
  EXPECT_EQ(d.cycleTime, std::chrono::microseconds(1000));
  EXPECT_EQ(d.fusionThreshold, std::size_t{64} << 20);
  const Config c =
      Config::fromMap({{"SKYRING_CYCLE_TIME_MS", "2.5"}, {"SKYRING_FUSION_THRESHOLD", "0"}});
  EXPECT_EQ(c.cycleTime, std::chrono::microseconds(2500));
  EXPECT_EQ(c.fusionThreshold, 0u);
  EXPECT_THROW(Config::fromMap({{"SKYRING_CYCLE_TIME_MS", "-1"}}), InvalidArgument);
  EXPECT_THROW(Config::fromMap({{"SKYRING_FUSION_THRESHOLD", "1k"}}), InvalidArgument);
}

TEST(Config, UnknownVariablesWarn) {
  const Config c = Config::fromMap({{"SKYRING_TIMEOUT", "5"}});
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_NE(c.warnings[0].find("SKYRING_TIMEOUT"), std::string::npos);
}

TEST(Config, FromEnvironment) {
  ::setenv("SKYRING_RING_PIPELINE_DEPTH", "7", 1);
  const Config c = Config::fromEnvironment();
  ::unsetenv("SKYRING_RING_PIPELINE_DEPTH");
  EXPECT_EQ(c.ringPipelineDepth, 7);
}

// UCX_RNDV_THRESH, UCX's own variable, is read here too (the one place that reads the
// environment): a user who sets it keeps it, across clouds included.
TEST(Config, SeesTheUsersUcxRendezvousThreshold) {
  EXPECT_FALSE(Config::fromMap({}).ucxRendezvousThresholdSet);
  EXPECT_TRUE(Config::fromMap({{"UCX_RNDV_THRESH", "8192"}}).ucxRendezvousThresholdSet);
  ::setenv("UCX_RNDV_THRESH", "65536", 1);
  const Config c = Config::fromEnvironment();
  ::unsetenv("UCX_RNDV_THRESH");
  EXPECT_TRUE(c.ucxRendezvousThresholdSet);
  EXPECT_TRUE(c.warnings.empty());
}

TEST(Config, LaunchFromTorchrunVariables) {
  const Config c = Config::fromMap({{"RANK", "2"},
                                    {"WORLD_SIZE", "4"},
                                    {"LOCAL_RANK", "0"},
                                    {"MASTER_ADDR", "10.0.0.1"},
                                    {"MASTER_PORT", "29500"}});
  EXPECT_EQ(c.launch.launcher, LaunchEnvironment::Launcher::torchrun);
  EXPECT_EQ(c.launch.rank, 2);
  EXPECT_EQ(c.launch.size, 4);
  EXPECT_EQ(c.launch.localRank, 0);
  EXPECT_EQ(c.launch.localSize, -1);
  EXPECT_EQ(c.launch.masterAddr, "10.0.0.1");
  EXPECT_EQ(c.launch.masterPort, 29500);
}

TEST(Config, LaunchFromMpirun) {
  const Config c = Config::fromMap({{"OMPI_COMM_WORLD_RANK", "3"},
                                    {"OMPI_COMM_WORLD_SIZE", "4"},
                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                    {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                                    {"RANK", "ignored under mpirun"}});
  EXPECT_EQ(c.launch.launcher, LaunchEnvironment::Launcher::mpi);
  EXPECT_EQ(c.launch.rank, 3);
  EXPECT_EQ(c.launch.size, 4);
  EXPECT_EQ(c.launch.localRank, 1);
  EXPECT_EQ(c.launch.localSize, 2);
}

TEST(Config, NoLauncherIsAWorldOfOne) {
  const Config c = Config::fromMap({});
  EXPECT_EQ(c.launch.launcher, LaunchEnvironment::Launcher::none);
  EXPECT_EQ(c.launch.rank, 0);
  EXPECT_EQ(c.launch.size, 1);
}

TEST(Config, HalfSetLaunchIsAClearError) {
  try {
    Config::fromMap({{"RANK", "0"}, {"WORLD_SIZE", "2"}});
    FAIL() << "accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("missing MASTER_ADDR, MASTER_PORT"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(
      Config::fromMap(
          {{"RANK", "4"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
      InvalidArgument);
  EXPECT_THROW(
      Config::fromMap(
          {{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
      InvalidArgument);
}

// docs/configuration.md must list every parameter with its default, and nothing else.
TEST(Config, DocumentationTableMatches) {
  std::ifstream in(std::string(SKYRING_SOURCE_DIR) + "/docs/configuration.md");
  ASSERT_TRUE(in) << "docs/configuration.md is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  for (const auto& p : Config::parameters()) {
    const std::string row = "| `" + std::string(p.name) + "` | `" + std::string(p.defaultValue) +
                            "` | " + (p.mustAgree ? "yes" : "no") + " |";
    EXPECT_NE(doc.find(row), std::string::npos) << "docs/configuration.md lacks the row " << row;
  }
  std::size_t rows = 0;
  for (std::size_t pos = 0; (pos = doc.find("| `SKYRING_", pos)) != std::string::npos; ++pos)
    ++rows;
  EXPECT_EQ(rows, Config::parameters().size()) << "documented parameters that Config does not know";
}

// Every parameter that must agree across ranks has an effective value in jobSettings(),
// and the defaults and explicit values of it are canonical (equal values, equal text).
TEST(Config, JobSettingsCoverEveryParameterThatMustAgree) {
  const auto settings = Config::fromMap({}).jobSettings();
  std::size_t expected = 0;
  for (const auto& p : Config::parameters())
    expected += p.mustAgree ? 1 : 0;
  ASSERT_EQ(settings.size(), expected);
  for (const auto& [name, value] : settings)
    EXPECT_NE(value, "?") << name << " has no value in Config::jobSettings()";
  const auto same = Config::fromMap({{"SKYRING_SHM_SLOT_BYTES", "65536"},
                                     {"SKYRING_LINK_CROSS_CLOUD_GBPS", "10.0"},
                                     {"SKYRING_ALLREDUCE", "auto"}})
                        .jobSettings();
  EXPECT_EQ(same, settings);
  const auto other = Config::fromMap({{"SKYRING_SHM_SLOT_BYTES", "4096"}}).jobSettings();
  EXPECT_NE(other, settings);
}

TEST(Config, JobIdFromLauncherOrOverride) {
  EXPECT_EQ(Config::fromMap({}).jobId(), "");
  EXPECT_EQ(
      Config::fromMap({{"OMPI_MCA_ess_base_jobid", "123"}, {"OMPI_COMM_WORLD_RANK", "0"}}).jobId(),
      "123");
  EXPECT_EQ(Config::fromMap({{"TORCHELASTIC_RUN_ID", "abc"}, {"SKYRING_JOB_ID", "mine"}}).jobId(),
            "mine");
  // torchrun's default run id is the same in every launch: no identity.
  EXPECT_EQ(Config::fromMap({{"TORCHELASTIC_RUN_ID", "none"}}).jobId(), "");
  EXPECT_THROW(Config::fromMap({{"SKYRING_JOB_TOKEN", "short"}}), InvalidArgument);
  EXPECT_EQ(Config::fromMap({{"SKYRING_INIT_TIMEOUT_MS", "5000"}}).initTimeout,
            std::chrono::milliseconds(5000));
}

// Sizes that drive allocations have sane upper bounds, and a value past one names the
// variable and the limit (4 GiB of ring chunk once ended in a bare std::bad_alloc).
TEST(Config, ByteSizesAreBoundedAndTheLimitIsNamed) {
  for (const auto& [name, limit] :
       std::vector<std::pair<std::string, std::string>>{{"SKYRING_RING_CHUNK_BYTES", "268435456"},
                                                        {"SKYRING_SHM_SLOT_BYTES", "16777216"},
                                                        {"SKYRING_SHM_RING_BYTES", "67108864"},
                                                        {"SKYRING_SHM_CHUNK_BYTES", "67108864"}}) {
    EXPECT_NO_THROW(Config::fromMap({{name, limit}})) << name;
    for (const char* bad : {"4294967296", "18446744073709551616", "-1"}) {
      try {
        Config::fromMap({{name, bad}});
        ADD_FAILURE() << name << "=" << bad << " was accepted";
      } catch (const InvalidArgument& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(name), std::string::npos) << what;
        EXPECT_NE(what.find(limit), std::string::npos) << what;
      }
    }
  }
  EXPECT_EQ(Config::fromMap({{"SKYRING_RING_CHUNK_BYTES", "268435456"}}).ringChunkBytes,
            std::size_t{1} << 28);
  // Below 4 KiB every chunk in flight is a request whose bookkeeping outweighs it.
  try {
    Config::fromMap({{"SKYRING_RING_CHUNK_BYTES", "64"}});
    ADD_FAILURE() << "SKYRING_RING_CHUNK_BYTES=64 was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("[4096, 268435456]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace skyring
