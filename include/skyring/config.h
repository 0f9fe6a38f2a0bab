// Typed configuration. Every SKYRING_* environment variable is read in one place
// (Config::fromEnvironment) and nowhere else; docs/configuration.md lists them all and a
// test keeps that table and Config::parameters() in step.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "skyring/logging.h"

namespace skyring {

// How this process was launched, read from the launcher's own variables (the only
// non-SKYRING_ names Config reads): mpirun (Open MPI or any PMI/PMIx launcher) or
// torchrun-style RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT. With neither, the process
// is a world of one.
struct LaunchEnvironment {
  enum class Launcher : std::uint8_t { none, mpi, torchrun };
  Launcher launcher = Launcher::none;
  int rank = 0;
  int size = 1;
  int localRank = -1;  // -1: not given by the launcher; the bootstrap works it out
  int localSize = -1;
  std::string masterAddr;  // torchrun only
  int masterPort = 0;      // torchrun only
  // The launcher's name for this job (Open MPI's job id, PMIx namespace, torchrun's run
  // id); empty when it gives none. Config::jobId() prefers SKYRING_JOB_ID.
  std::string jobId;
};

// Which allreduce algorithm a Communicator with a topology runs (SKYRING_ALLREDUCE):
// automatic picks hierarchical when the topology spans more than one cloud. ring keeps
// the ranks' own order (as the launcher numbered them); topologyRing is the same flat
// ring over Topology::ringOrder (clouds and nodes contiguous, each cloud boundary crossed
// once).
// Which link classes the transport seals with authenticated encryption (SKYRING_ENCRYPT,
// docs/security.md). automatic: crossCloud when the job has a token (SKYRING_JOB_TOKEN),
// none without one, so launches without a token keep working (and are warned about).
enum class Encryption : std::uint8_t { automatic, none, crossCloud, all };
// The AEAD that seals them (SKYRING_CIPHER). automatic: AES-256-GCM where the CPU has AES
// instructions, else ChaCha20-Poly1305; the runtime resolves it before the ranks compare
// settings, so a job whose CPUs would choose differently fails at init naming it.
enum class Cipher : std::uint8_t { automatic, aes256gcm, chacha20poly1305 };

enum class AllreduceAlgorithm : std::uint8_t { automatic, ring, topologyRing, hierarchical };

// Which levels of hierarchical allreduce a codec compresses (docs/compression.md): the
// reduce-scatter and allgather inside each cloud, and the allreduce across clouds.
struct CompressionLevels {
  bool cloud = false;
  bool crossCloud = true;
  bool operator==(const CompressionLevels&) const = default;
};

struct Config {
  // How long a collective may wait without progress before the ranks diagnose who is
  // missing and fail with Timeout. SKYRING_TIMEOUT_MS.
  std::chrono::milliseconds timeout{30000};
  // How long start-up (joining the job, exchanging addresses, connecting) and the final
  // goodbye at shutdown may take: ranks start late and rank 0 may be busy, so this is
  // separate from the collectives' timeout. SKYRING_INIT_TIMEOUT_MS.
  std::chrono::milliseconds initTimeout{300000};
  // The job's identity, checked when a rank joins so that two jobs never mix (empty: the
  // launcher's, see jobId()). SKYRING_JOB_ID.
  std::string jobIdOverride;
  // The job's shared secret: every connection to the bootstrap store proves it knows it
  // (HMAC challenge). Never logged. SKYRING_JOB_TOKEN.
  std::string jobToken;
  Encryption encryption = Encryption::automatic;  // SKYRING_ENCRYPT
  Cipher cipher = Cipher::automatic;              // SKYRING_CIPHER
  LogLevel logLevel = LogLevel::warn;             // SKYRING_LOG_LEVEL
  // Ring pipelining: bytes per message and messages in flight per peer.
  std::size_t ringChunkBytes = 256 * 1024;  // SKYRING_RING_CHUNK_BYTES
  int ringPipelineDepth = 4;                // SKYRING_RING_PIPELINE_DEPTH
  // Inside a node: shared-memory slots for small allreduces, single-copy (cross-memory
  // attach) reads and writes for large ones.
  bool sharedMemory = true;                // SKYRING_SHM
  std::size_t shmSlotBytes = 64 * 1024;    // SKYRING_SHM_SLOT_BYTES
  std::size_t shmRingBytes = 1024 * 1024;  // SKYRING_SHM_RING_BYTES
  std::size_t shmSingleCopyBytes = 0;      // SKYRING_SHM_SINGLE_COPY_BYTES; 0: never
  std::size_t shmChunkBytes = 128 * 1024;  // SKYRING_SHM_CHUNK_BYTES
  // The allreduce of a communicator that knows its topology (tag 0, host memory).
  AllreduceAlgorithm allreduceAlgorithm = AllreduceAlgorithm::automatic;  // SKYRING_ALLREDUCE
  // Codec of the compressed levels of hierarchical allreduce (f32 sum and avg), as a
  // compression spec (skyring/compression.h); "none" sends full precision. Checked when a
  // Communicator is made. SKYRING_COMPRESSION.
  std::string compression = "none";
  // The levels that codec applies to. SKYRING_COMPRESSION_LEVELS: cross_cloud (default),
  // cloud, or cloud,cross_cloud.
  CompressionLevels compressionLevels;
  // The engine (skyring/engine.h): how often its background thread runs a negotiation
  // cycle while any rank has work (SKYRING_CYCLE_TIME_MS), and the most bytes one fused
  // allreduce carries (SKYRING_FUSION_THRESHOLD; must agree, as every rank must fuse alike).
  std::chrono::microseconds cycleTime{1000};
  std::size_t fusionThreshold = std::size_t{64} << 20;
  // SKYRING_ENGINE_REPLAY: once two steps in a row ran the same allreduces, the engine runs
  // later steps without a negotiation round trip (docs/engine.md, "Replay").
  bool engineReplay = true;
  // The engine's stall inspector: a name some ranks submitted and others did not is logged
  // (naming them) once it has waited stallWarning (SKYRING_STALL_WARNING_S), and after
  // stallShutdown (SKYRING_STALL_SHUTDOWN_S; zero: never) the engine stops and fails every
  // pending handle with Timeout naming them.
  std::chrono::milliseconds stallWarning{60000};
  std::chrono::milliseconds stallShutdown{0};
  // Where the engine writes its Chrome trace (SKYRING_TIMELINE): rank 0 writes this path,
  // or every rank when it contains "{rank}" (replaced by the rank). Empty: no trace.
  std::string timeline;
  // Live metrics (docs/observability.md): each rank serves /metrics on metricsPort plus its
  // local rank (SKYRING_METRICS_PORT; -1: off; 0: a port the system picks, logged), bound
  // to metricsAddress (SKYRING_METRICS_ADDR, a numeric IPv4 or IPv6 address). Per rank:
  // they need not agree.
  int metricsPort = -1;
  std::string metricsAddress = "127.0.0.1";

  // Where this rank runs (docs/topology.md): read by topology::localRecord.
  std::string node;               // SKYRING_NODE; empty: the hostname
  std::string cloud = "default";  // SKYRING_CLOUD
  std::string region;             // SKYRING_REGION; informational only
  // One link class of the cost model (topology::CostModel), in the units users quote.
  struct LinkParameters {
    double gbitPerSec;
    double latencyMs;  // one way
    double dollarsPerGB;
  };
  LinkParameters intraNodeLink{800, 0.001, 0};   // SKYRING_LINK_INTRA_NODE_*
  LinkParameters intraCloudLink{200, 0.005, 0};  // SKYRING_LINK_INTRA_CLOUD_*
  LinkParameters crossCloudLink{10, 30, 0.08};   // SKYRING_LINK_CROSS_CLOUD_*

  LaunchEnvironment launch;
  // UCX_RNDV_THRESH is set: the UCX transport leaves UCX's rendezvous threshold to it
  // (across clouds it otherwise sends eagerly, with no rendezvous round trip).
  bool ucxRendezvousThresholdSet = false;

  // Warnings found while reading (unknown SKYRING_* names): reported once by the owner.
  std::vector<std::string> warnings;

  // Reads the process environment. Throws InvalidArgument naming the variable on a
  // malformed value.
  static Config fromEnvironment();
  // Same rules, from explicit name=value pairs (tests, bindings).
  static Config fromMap(const std::map<std::string, std::string>& vars);

  // encryption with automatic resolved: crossCloud with a job token, none without.
  Encryption effectiveEncryption() const {
    if (encryption != Encryption::automatic) return encryption;
    return jobToken.empty() ? Encryption::none : Encryption::crossCloud;
  }

  // SKYRING_JOB_ID if set, else the launcher's job id, else "".
  std::string jobId() const { return jobIdOverride.empty() ? launch.jobId : jobIdOverride; }

  struct Parameter {
    std::string_view name;
    std::string_view defaultValue;
    std::string_view description;
    // Every rank of a job must have the same value: ranks check at init (jobSettings)
    // and all fail naming the variable when they differ.
    bool mustAgree = false;
  };
  // Every parameter Config understands, in documentation order.
  static const std::vector<Parameter>& parameters();

  // The effective value of every mustAgree parameter, as (name, canonical text), in
  // parameters() order. Ranks exchange these at init and compare them.
  std::vector<std::pair<std::string_view, std::string>> jobSettings() const;
};

}  // namespace skyring
