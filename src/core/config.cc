// The one place where SKYRING_* environment variables are read.
#include "skyring/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>

#include "skyring/error.h"

extern char** environ;  // POSIX: the process environment.

namespace skyring {
namespace {

struct ParameterSpec {
  Config::Parameter doc;
  std::function<void(Config&, const std::string&)> apply;
};

long long parseInteger(std::string_view name, const std::string& value, long long min,
                       long long max) {
  long long v = 0;
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(value.data(), end, v);
  if (ec != std::errc() || ptr != end || v < min || v > max) {
    SKYRING_THROW(InvalidArgument, {}, name, "='", value, "': expected an integer in [", min, ", ",
                  max, "]");
  }
  return v;
}

double parseDecimal(std::string_view name, const std::string& value, double min, double max) {
  double v = 0;
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(value.data(), end, v);
  if (ec != std::errc() || ptr != end || !(v >= min && v <= max)) {
    SKYRING_THROW(InvalidArgument, {}, name, "='", value, "': expected a number in [", min, ", ",
                  max, "]");
  }
  return v;
}

CompressionLevels parseCompressionLevels(const std::string& value) {
  CompressionLevels levels{false, false};
  std::size_t begin = 0;
  while (true) {
    const std::size_t end = std::min(value.find(',', begin), value.size());
    const std::string_view item = std::string_view(value).substr(begin, end - begin);
    bool* level = item == "cloud"         ? &levels.cloud
                  : item == "cross_cloud" ? &levels.crossCloud
                                          : nullptr;
    if (level == nullptr || *level) {
      SKYRING_THROW(InvalidArgument, {}, "SKYRING_COMPRESSION_LEVELS='", value,
                    "': expected cross_cloud, cloud or cloud,cross_cloud");
    }
    *level = true;
    if (end == value.size()) return levels;
    begin = end + 1;
  }
}

// One SKYRING_LINK_* parameter: a field of one link class of the cost model.
ParameterSpec linkSpec(std::string_view name, std::string_view defaultValue,
                       std::string_view description, Config::LinkParameters Config::*link,
                       double Config::LinkParameters::*field, double min, double max) {
  return {{name, defaultValue, description, true}, [=](Config& c, const std::string& v) {
            (c.*link).*field = parseDecimal(name, v, min, max);
          }};
}

const std::vector<ParameterSpec>& specs() {
  static const std::vector<ParameterSpec> kSpecs = {
      {{"SKYRING_TIMEOUT_MS", "30000",
        "Longest a collective waits without progress (ms). Then the ranks exchange what "
        "they wait on and every rank throws Timeout naming the missing rank, within this "
        "time.",
        true},
       [](Config& c, const std::string& v) {
         c.timeout = std::chrono::milliseconds(
             parseInteger("SKYRING_TIMEOUT_MS", v, 1, std::numeric_limits<int>::max()));
       }},
      {{"SKYRING_LOG_LEVEL", "warn", "error, warn, info, debug or trace."},
       [](Config& c, const std::string& v) { c.logLevel = parseLogLevel(v); }},
      {{"SKYRING_INIT_TIMEOUT_MS", "300000",
        "Longest start-up may take (ms): joining the job, exchanging addresses, connecting, "
        "and the goodbye at shutdown. Ranks that start late within it are waited for."},
       [](Config& c, const std::string& v) {
         c.initTimeout = std::chrono::milliseconds(
             parseInteger("SKYRING_INIT_TIMEOUT_MS", v, 1, std::numeric_limits<int>::max()));
       }},
      {{"SKYRING_JOB_ID", "(launcher's)",
        "Identity of the job, checked when a rank joins so two jobs never mix; default: "
        "the launcher's job id (Open MPI, PMIx, torchrun's run id).",
        true},
       [](Config& c, const std::string& v) {
         SKYRING_CHECK_ARG(!v.empty() && v.size() <= 256, {},
                           "SKYRING_JOB_ID: expected 1 to 256 characters, got ", v.size());
         c.jobIdOverride = v;
       }},
      {{"SKYRING_JOB_TOKEN", "(none)",
        "Shared secret of the job: every connection to the bootstrap store must prove it "
        "knows it (HMAC-SHA256 challenge). Never logged."},
       [](Config& c, const std::string& v) {
         SKYRING_CHECK_ARG(v.size() >= 16 && v.size() <= 1024, {},
                           "SKYRING_JOB_TOKEN: expected 16 to 1024 characters, got ", v.size());
         c.jobToken = v;
       }},
      {{"SKYRING_ENCRYPT", "auto",
        "Link classes whose messages are sealed with authenticated encryption: cross_cloud, "
        "all, none, or auto (cross_cloud with a job token, none without). Needs "
        "SKYRING_JOB_TOKEN.",
        true},
       [](Config& c, const std::string& v) {
         if (v == "auto") {
           c.encryption = Encryption::automatic;
         } else if (v == "none") {
           c.encryption = Encryption::none;
         } else if (v == "cross_cloud") {
           c.encryption = Encryption::crossCloud;
         } else if (v == "all") {
           c.encryption = Encryption::all;
         } else {
           SKYRING_THROW(InvalidArgument, {}, "SKYRING_ENCRYPT='", v,
                         "': expected auto, cross_cloud, all or none");
         }
       }},
      {{"SKYRING_CIPHER", "auto",
        "AEAD of sealed links: aes-256-gcm, chacha20-poly1305, or auto (AES-256-GCM where "
        "the CPU has AES instructions).",
        true},
       [](Config& c, const std::string& v) {
         if (v == "auto") {
           c.cipher = Cipher::automatic;
         } else if (v == "aes-256-gcm") {
           c.cipher = Cipher::aes256gcm;
         } else if (v == "chacha20-poly1305") {
           c.cipher = Cipher::chacha20poly1305;
         } else {
           SKYRING_THROW(InvalidArgument, {}, "SKYRING_CIPHER='", v,
                         "': expected auto, aes-256-gcm or chacha20-poly1305");
         }
       }},
      {{"SKYRING_RING_CHUNK_BYTES", "262144",
        "Bytes per message in ring algorithms (4 KiB to 256 MiB; scratch follows the message): "
        "smaller pipelines better, larger costs fewer messages.",
        true},
       [](Config& c, const std::string& v) {
         c.ringChunkBytes = static_cast<std::size_t>(
             parseInteger("SKYRING_RING_CHUNK_BYTES", v, 4096, std::int64_t{1} << 28));
       }},
      {{"SKYRING_RING_PIPELINE_DEPTH", "4",
        "Receives a ring step keeps posted ahead (chunks in flight per peer).", true},
       [](Config& c, const std::string& v) {
         c.ringPipelineDepth =
             static_cast<int>(parseInteger("SKYRING_RING_PIPELINE_DEPTH", v, 1, 64));
       }},
      {{"SKYRING_SHM", "1",
        "1: ranks of one node reduce through shared memory and single-copy reads of each "
        "other's buffers; 0: every byte goes through the transport.",
        true},
       [](Config& c, const std::string& v) {
         c.sharedMemory = parseInteger("SKYRING_SHM", v, 0, 1) == 1;
       }},
      {{"SKYRING_SHM_SLOT_BYTES", "65536",
        "Largest node allreduce done by copying into shared slots and reducing them all "
        "(one synchronisation); 64 to 16 MiB.",
        true},
       [](Config& c, const std::string& v) {
         c.shmSlotBytes = static_cast<std::size_t>(
             parseInteger("SKYRING_SHM_SLOT_BYTES", v, 64, std::int64_t{1} << 24));
       }},
      {{"SKYRING_SHM_RING_BYTES", "1048576",
        "Shared memory per rank for the pipelined node allreduce: a ring of blocks, each "
        "one chunk per rank; 1024 to 64 MiB.",
        true},
       [](Config& c, const std::string& v) {
         c.shmRingBytes = static_cast<std::size_t>(
             parseInteger("SKYRING_SHM_RING_BYTES", v, 1024, std::int64_t{1} << 26));
       }},
      {{"SKYRING_SHM_SINGLE_COPY_BYTES", "0",
        "0: never. Else node allreduces of at least this many bytes read and write each "
        "other's buffers directly (process_vm_readv/writev) instead of pipelining.",
        true},
       [](Config& c, const std::string& v) {
         c.shmSingleCopyBytes = static_cast<std::size_t>(
             parseInteger("SKYRING_SHM_SINGLE_COPY_BYTES", v, 0, std::int64_t{1} << 40));
       }},
      {{"SKYRING_SHM_CHUNK_BYTES", "131072",
        "Bytes per rank per round of the pipelined (and single-copy) node allreduce; 64 to "
        "64 MiB.",
        true},
       [](Config& c, const std::string& v) {
         c.shmChunkBytes = static_cast<std::size_t>(
             parseInteger("SKYRING_SHM_CHUNK_BYTES", v, 64, std::int64_t{1} << 26));
       }},
      {{"SKYRING_ALLREDUCE", "auto",
        "auto, ring, topology_ring or hierarchical: the allreduce of a communicator that "
        "knows its topology; auto is hierarchical across more than one cloud.",
        true},
       [](Config& c, const std::string& v) {
         if (v == "auto") {
           c.allreduceAlgorithm = AllreduceAlgorithm::automatic;
         } else if (v == "ring") {
           c.allreduceAlgorithm = AllreduceAlgorithm::ring;
         } else if (v == "topology_ring") {
           c.allreduceAlgorithm = AllreduceAlgorithm::topologyRing;
         } else if (v == "hierarchical") {
           c.allreduceAlgorithm = AllreduceAlgorithm::hierarchical;
         } else {
           SKYRING_THROW(InvalidArgument, {}, "SKYRING_ALLREDUCE='", v,
                         "': expected auto, ring, topology_ring or hierarchical");
         }
       }},
      {{"SKYRING_COMPRESSION", "none",
        "Codec of hierarchical allreduce's compressed levels (f32 sum and avg): none, "
        "fp16, bf16, int8, sign, topk:FRACTION, powersgd:RANK, with options.",
        true},
       [](Config& c, const std::string& v) { c.compression = v; }},
      {{"SKYRING_COMPRESSION_LEVELS", "cross_cloud",
        "Levels of hierarchical allreduce that SKYRING_COMPRESSION compresses: cross_cloud, "
        "cloud (inside each cloud), or both, comma-separated.",
        true},
       [](Config& c, const std::string& v) { c.compressionLevels = parseCompressionLevels(v); }},
      {{"SKYRING_CYCLE_TIME_MS", "1",
        "How often the engine runs a negotiation cycle while any rank has work (ms, 0 to "
        "60000; fractions allowed)."},
       [](Config& c, const std::string& v) {
         c.cycleTime = std::chrono::microseconds(
             static_cast<std::int64_t>(parseDecimal("SKYRING_CYCLE_TIME_MS", v, 0, 60000) * 1000));
       }},
      {{"SKYRING_FUSION_THRESHOLD", "67108864",
        "Most bytes the engine fuses into one allreduce (0: no fusion); a larger tensor runs "
        "alone.",
        true},
       [](Config& c, const std::string& v) {
         c.fusionThreshold = static_cast<std::size_t>(
             parseInteger("SKYRING_FUSION_THRESHOLD", v, 0, std::int64_t{1} << 40));
       }},
      {{"SKYRING_ENGINE_REPLAY", "1",
        "1: once two steps in a row ran the same allreduces, the engine replays that step "
        "without a negotiation round trip; 0: it negotiates every cycle.",
        true},
       [](Config& c, const std::string& v) {
         c.engineReplay = parseInteger("SKYRING_ENGINE_REPLAY", v, 0, 1) == 1;
       }},
      {{"SKYRING_STALL_WARNING_S", "60",
        "Seconds a name submitted on some ranks only waits before the engine logs it with "
        "the ranks that miss it (0.001 to 1e6)."},
       [](Config& c, const std::string& v) {
         c.stallWarning = std::chrono::milliseconds(static_cast<std::int64_t>(
             parseDecimal("SKYRING_STALL_WARNING_S", v, 0.001, 1e6) * 1000));
       }},
      {{"SKYRING_STALL_SHUTDOWN_S", "0",
        "0: never. Else seconds after which such a name stops the engine: every pending "
        "handle fails with Timeout naming the names and the missing ranks.",
        true},
       [](Config& c, const std::string& v) {
         c.stallShutdown = std::chrono::milliseconds(
             static_cast<std::int64_t>(parseDecimal("SKYRING_STALL_SHUTDOWN_S", v, 0, 1e6) * 1000));
       }},
      {{"SKYRING_TIMELINE", "(none)",
        "File the engine writes a Chrome trace to: rank 0, or every rank when the path "
        "contains {rank}."},
       [](Config& c, const std::string& v) { c.timeline = v; }},
      {{"SKYRING_METRICS_PORT", "(off)",
        "Serve Prometheus metrics at /metrics: each rank on this port plus its local rank "
        "(0: a free port each, logged)."},
       [](Config& c, const std::string& v) {
         c.metricsPort = static_cast<int>(parseInteger("SKYRING_METRICS_PORT", v, 0, 65535));
       }},
      {{"SKYRING_METRICS_ADDR", "127.0.0.1",
        "Numeric IPv4 or IPv6 address the metrics port binds to (0.0.0.0: every interface)."},
       [](Config& c, const std::string& v) {
         unsigned char addr[sizeof(in6_addr)];
         if (::inet_pton(AF_INET, v.c_str(), addr) != 1 &&
             ::inet_pton(AF_INET6, v.c_str(), addr) != 1) {
           SKYRING_THROW(InvalidArgument, {}, "SKYRING_METRICS_ADDR='", v,
                         "': expected a numeric IPv4 or IPv6 address (127.0.0.1, 0.0.0.0, ::1)");
         }
         c.metricsAddress = v;
       }},
      {{"SKYRING_NODE", "(hostname)",
        "Name of this rank's node; ranks with equal node and cloud share a node."},
       [](Config& c, const std::string& v) { c.node = v; }},
      {{"SKYRING_CLOUD", "default",
        "Name of this rank's cloud or cluster; ranks of different clouds talk over the WAN."},
       [](Config& c, const std::string& v) {
         if (v.empty()) {
           SKYRING_THROW(InvalidArgument, {}, "SKYRING_CLOUD='': a cloud needs a name");
         }
         c.cloud = v;
       }},
      {{"SKYRING_REGION", "(empty)", "Region of this rank's cloud: informational only."},
       [](Config& c, const std::string& v) { c.region = v; }},
      linkSpec("SKYRING_LINK_INTRA_NODE_GBPS", "800", "Bandwidth between ranks of a node (Gbit/s).",
               &Config::intraNodeLink, &Config::LinkParameters::gbitPerSec, 1e-6, 1e6),
      linkSpec("SKYRING_LINK_INTRA_NODE_LATENCY_MS", "0.001",
               "One-way latency between ranks of a node (ms).", &Config::intraNodeLink,
               &Config::LinkParameters::latencyMs, 0, 1e6),
      linkSpec("SKYRING_LINK_INTRA_CLOUD_GBPS", "200",
               "Bandwidth between nodes of a cloud (Gbit/s).", &Config::intraCloudLink,
               &Config::LinkParameters::gbitPerSec, 1e-6, 1e6),
      linkSpec("SKYRING_LINK_INTRA_CLOUD_LATENCY_MS", "0.005",
               "One-way latency between nodes of a cloud (ms).", &Config::intraCloudLink,
               &Config::LinkParameters::latencyMs, 0, 1e6),
      linkSpec("SKYRING_LINK_INTRA_CLOUD_DOLLARS_PER_GB", "0",
               "Price per GB sent between nodes of a cloud (US$).", &Config::intraCloudLink,
               &Config::LinkParameters::dollarsPerGB, 0, 1000),
      linkSpec("SKYRING_LINK_CROSS_CLOUD_GBPS", "10", "Bandwidth per rank between clouds (Gbit/s).",
               &Config::crossCloudLink, &Config::LinkParameters::gbitPerSec, 1e-6, 1e6),
      linkSpec("SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", "30", "One-way latency between clouds (ms).",
               &Config::crossCloudLink, &Config::LinkParameters::latencyMs, 0, 1e6),
      linkSpec("SKYRING_LINK_CROSS_CLOUD_DOLLARS_PER_GB", "0.08",
               "Egress price per GB sent to another cloud (US$).", &Config::crossCloudLink,
               &Config::LinkParameters::dollarsPerGB, 0, 1000),
  };
  return kSpecs;
}

// Launcher variables Config reads besides SKYRING_*.
constexpr std::string_view kLaunchVariables[] = {"OMPI_MCA_ess_base_jobid",
                                                 "PMIX_NAMESPACE",
                                                 "TORCHELASTIC_RUN_ID",
                                                 "OMPI_COMM_WORLD_RANK",
                                                 "OMPI_COMM_WORLD_SIZE",
                                                 "OMPI_COMM_WORLD_LOCAL_RANK",
                                                 "OMPI_COMM_WORLD_LOCAL_SIZE",
                                                 "PMIX_RANK",
                                                 "PMI_RANK",
                                                 "PMI_SIZE",
                                                 "RANK",
                                                 "WORLD_SIZE",
                                                 "LOCAL_RANK",
                                                 "LOCAL_WORLD_SIZE",
                                                 "MASTER_ADDR",
                                                 "MASTER_PORT",
                                                 "UCX_RNDV_THRESH"};

const std::string* find(const std::map<std::string, std::string>& vars, std::string_view name) {
  auto it = vars.find(std::string(name));
  return it == vars.end() ? nullptr : &it->second;
}

int intVar(const std::map<std::string, std::string>& vars, std::string_view name, int min, int max,
           int fallback) {
  const std::string* v = find(vars, name);
  return v == nullptr ? fallback : static_cast<int>(parseInteger(name, *v, min, max));
}

LaunchEnvironment readLaunch(const std::map<std::string, std::string>& vars) {
  constexpr int kMax = 1 << 24;
  LaunchEnvironment env;
  for (auto name : {"OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "TORCHELASTIC_RUN_ID"}) {
    const std::string* id = find(vars, name);
    // torchrun's default run id is "none" in every launch: no identity at all.
    if (id != nullptr && !id->empty() && *id != "none" && env.jobId.empty()) env.jobId = *id;
  }
  const std::string* mpiRank = find(vars, "OMPI_COMM_WORLD_RANK");
  if (mpiRank == nullptr) mpiRank = find(vars, "PMIX_RANK");
  if (mpiRank == nullptr) mpiRank = find(vars, "PMI_RANK");
  if (mpiRank != nullptr) {
    env.launcher = LaunchEnvironment::Launcher::mpi;
    env.rank = static_cast<int>(parseInteger("MPI rank variable", *mpiRank, 0, kMax));
    env.size = intVar(vars, "OMPI_COMM_WORLD_SIZE", 1, kMax, intVar(vars, "PMI_SIZE", 1, kMax, -1));
    env.localRank = intVar(vars, "OMPI_COMM_WORLD_LOCAL_RANK", 0, kMax, -1);
    env.localSize = intVar(vars, "OMPI_COMM_WORLD_LOCAL_SIZE", 1, kMax, -1);
    return env;  // size -1: the MPI bootstrap asks MPI itself
  }
  const std::string_view torchrun[] = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"};
  std::string missing;
  bool any = false;
  for (auto name : torchrun) {
    if (find(vars, name) != nullptr) {
      any = true;
    } else {
      missing += (missing.empty() ? "" : ", ") + std::string(name);
    }
  }
  if (!any) return env;
  SKYRING_CHECK_ARG(missing.empty(), {}, "torchrun-style launch is half set: missing ", missing,
                    " (set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, or launch with mpirun)");
  env.launcher = LaunchEnvironment::Launcher::torchrun;
  env.size = intVar(vars, "WORLD_SIZE", 1, kMax, 1);
  env.rank = intVar(vars, "RANK", 0, kMax, 0);
  SKYRING_CHECK_ARG(env.rank < env.size, {}, "RANK=", env.rank,
                    " is not below WORLD_SIZE=", env.size);
  env.localRank = intVar(vars, "LOCAL_RANK", 0, kMax, -1);
  env.localSize = intVar(vars, "LOCAL_WORLD_SIZE", 1, kMax, -1);
  env.masterAddr = *find(vars, "MASTER_ADDR");
  SKYRING_CHECK_ARG(!env.masterAddr.empty(), {}, "MASTER_ADDR is empty");
  env.masterPort = intVar(vars, "MASTER_PORT", 1, 65535, 0);
  return env;
}

}  // namespace

const std::vector<Config::Parameter>& Config::parameters() {
  static const std::vector<Parameter> kParams = [] {
    std::vector<Parameter> out;
    for (const auto& s : specs())
      out.push_back(s.doc);
    return out;
  }();
  return kParams;
}

namespace {

std::string decimalText(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, end);
}

std::string_view algorithmText(AllreduceAlgorithm a) {
  switch (a) {
    case AllreduceAlgorithm::automatic:
      return "auto";
    case AllreduceAlgorithm::ring:
      return "ring";
    case AllreduceAlgorithm::topologyRing:
      return "topology_ring";
    case AllreduceAlgorithm::hierarchical:
      return "hierarchical";
  }
  return "?";
}

std::string_view encryptionText(Encryption e) {
  switch (e) {
    case Encryption::automatic:
      return "auto";
    case Encryption::none:
      return "none";
    case Encryption::crossCloud:
      return "cross_cloud";
    case Encryption::all:
      return "all";
  }
  return "?";
}

std::string_view cipherText(Cipher c) {
  switch (c) {
    case Cipher::automatic:
      return "auto";
    case Cipher::aes256gcm:
      return "aes-256-gcm";
    case Cipher::chacha20poly1305:
      return "chacha20-poly1305";
  }
  return "?";
}

}  // namespace

std::vector<std::pair<std::string_view, std::string>> Config::jobSettings() const {
  const CompressionLevels& l = compressionLevels;
  const std::string levels = l.cloud && l.crossCloud ? "cloud,cross_cloud"
                             : l.cloud               ? "cloud"
                             : l.crossCloud          ? "cross_cloud"
                                                     : "";
  auto link = [](const LinkParameters& p) {
    return std::pair{decimalText(p.gbitPerSec), decimalText(p.latencyMs)};
  };
  const auto node = link(intraNodeLink);
  const auto cloudLink = link(intraCloudLink);
  const auto cross = link(crossCloudLink);
  const std::map<std::string_view, std::string> values = {
      {"SKYRING_TIMEOUT_MS", std::to_string(timeout.count())},
      {"SKYRING_JOB_ID", jobId()},
      {"SKYRING_ENCRYPT", std::string(encryptionText(effectiveEncryption()))},
      {"SKYRING_CIPHER", std::string(cipherText(cipher))},
      {"SKYRING_RING_CHUNK_BYTES", std::to_string(ringChunkBytes)},
      {"SKYRING_RING_PIPELINE_DEPTH", std::to_string(ringPipelineDepth)},
      {"SKYRING_SHM", sharedMemory ? "1" : "0"},
      {"SKYRING_SHM_SLOT_BYTES", std::to_string(shmSlotBytes)},
      {"SKYRING_SHM_RING_BYTES", std::to_string(shmRingBytes)},
      {"SKYRING_SHM_SINGLE_COPY_BYTES", std::to_string(shmSingleCopyBytes)},
      {"SKYRING_SHM_CHUNK_BYTES", std::to_string(shmChunkBytes)},
      {"SKYRING_ALLREDUCE", std::string(algorithmText(allreduceAlgorithm))},
      {"SKYRING_COMPRESSION", compression},
      {"SKYRING_COMPRESSION_LEVELS", levels},
      {"SKYRING_FUSION_THRESHOLD", std::to_string(fusionThreshold)},
      {"SKYRING_ENGINE_REPLAY", engineReplay ? "1" : "0"},
      {"SKYRING_STALL_SHUTDOWN_S", std::to_string(stallShutdown.count()) + " ms"},
      {"SKYRING_LINK_INTRA_NODE_GBPS", node.first},
      {"SKYRING_LINK_INTRA_NODE_LATENCY_MS", node.second},
      {"SKYRING_LINK_INTRA_CLOUD_GBPS", cloudLink.first},
      {"SKYRING_LINK_INTRA_CLOUD_LATENCY_MS", cloudLink.second},
      {"SKYRING_LINK_INTRA_CLOUD_DOLLARS_PER_GB", decimalText(intraCloudLink.dollarsPerGB)},
      {"SKYRING_LINK_CROSS_CLOUD_GBPS", cross.first},
      {"SKYRING_LINK_CROSS_CLOUD_LATENCY_MS", cross.second},
      {"SKYRING_LINK_CROSS_CLOUD_DOLLARS_PER_GB", decimalText(crossCloudLink.dollarsPerGB)},
  };
  std::vector<std::pair<std::string_view, std::string>> out;
  for (const auto& p : parameters()) {
    if (!p.mustAgree) continue;
    auto it = values.find(p.name);
    // A parameter marked mustAgree without a value here is a bug the Config test catches.
    out.emplace_back(p.name, it == values.end() ? std::string("?") : it->second);
  }
  return out;
}

Config Config::fromMap(const std::map<std::string, std::string>& vars) {
  Config config;
  config.launch = readLaunch(vars);
  config.ucxRendezvousThresholdSet = vars.count("UCX_RNDV_THRESH") != 0;
  for (const auto& [name, value] : vars) {
    if (name.rfind("SKYRING_", 0) != 0) continue;
    bool known = false;
    for (const auto& s : specs()) {
      if (s.doc.name == name) {
        try {
          s.apply(config, value);
        } catch (const InvalidArgument& e) {
          if (e.detail().rfind(name, 0) == 0) throw;
          SKYRING_THROW(InvalidArgument, {}, name, "='", value, "': ", e.detail());
        }
        known = true;
        break;
      }
    }
    if (!known) {
      config.warnings.push_back("unknown configuration variable " + name +
                                " ignored (see docs/configuration.md)");
    }
  }
  // Asked for encryption, the job must have its secret: sealing with a key anyone can
  // derive would only look safe.
  const Encryption e = config.encryption;
  if (config.jobToken.empty() && (e == Encryption::crossCloud || e == Encryption::all)) {
    SKYRING_THROW(InvalidArgument, {}, "SKYRING_ENCRYPT=", encryptionText(e),
                  " needs SKYRING_JOB_TOKEN: the session keys are derived from the job's "
                  "secret (set the same token of 16 or more characters on every rank, or "
                  "SKYRING_ENCRYPT=none)");
  }
  return config;
}

Config Config::fromEnvironment() {
  std::map<std::string, std::string> vars;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view name = entry.substr(0, eq);
    bool wanted = name.rfind("SKYRING_", 0) == 0;
    for (auto launchName : kLaunchVariables)
      wanted = wanted || name == launchName;
    if (wanted) vars.emplace(std::string(name), std::string(entry.substr(eq + 1)));
  }
  return fromMap(vars);
}

}  // namespace skyring
