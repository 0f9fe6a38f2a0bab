#include "skyring/runtime.h"

#include <unistd.h>
#include <cstdint>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>

#include "bootstrap/out_of_band.h"
#include "runtime/join.h"
#include "runtime/metrics_server.h"
#include "runtime/process_sets.h"
#include "skyring/inprocess_transport.h"
#include "skyring/metering_transport.h"
#include "skyring/topology.h"
#include "skyring/ucx_transport.h"
#include "skyring/version.h"
#include "transport/aead.h"
#include "transport/node_channel.h"
#include "transport/sealing_transport.h"
#include "transport/subgroup_transport.h"
#include "transport/tag_layout.h"

namespace skyring {

struct Runtime::Parts {
  std::unique_ptr<bootstrap::OutOfBand> oob;
  std::unique_ptr<transport::InProcessWorld> alone;  // the world of one
  std::shared_ptr<transport::Transport> transport;
  std::shared_ptr<transport::NodeChannel> node;
  std::shared_ptr<transport::NodeChannel> engineNode;     // the engine's own (Runtime::engine)
  std::shared_ptr<transport::MeteringTransport> meter;    // wraps transport
  std::unique_ptr<runtime::MetricsServer> metricsServer;  // null: not served
};

namespace {

std::string hostName() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

}  // namespace

Runtime::Runtime(Config config) : config_(std::move(config)), parts_(std::make_unique<Parts>()) {}

// Leaving: the ranks say goodbye with a barrier of the world (bounded by the start-up
// timeout, since a rank may still be busy, say writing a checkpoint), so that no rank tears
// down its connections while a peer still needs them. The barrier goes over the transport
// (or shared memory), which notices a dead peer at once, not over the bootstrap channel:
// a rank that died or was stopped after its last collective costs the others a warning
// naming it, not a hang. After a failure there is no goodbye at all (the group is
// aborted and every rank already knows), so the process can exit at once.
Runtime::~Runtime() {
  // No scrape reads the runtime's parts while they go away.
  parts_->metricsServer.reset();
  // The engines' collectives run on the world's transport: they stop (collectively) before
  // the goodbye, the process sets' first.
  processSets_.reset();
  if (engine_) engine_->shutdown();
  engine_.reset();
  engineComm_.reset();
  bool clean = world_ != nullptr && !world_->failed();
  if (clean && size_ > 1) {
    try {
      CollectiveOptions goodbye;
      goodbye.timeout = config_.initTimeout;
      world_->barrier(goodbye);
    } catch (const Error& e) {
      SKYRING_LOG(Logger(config_.logLevel, rank_), warn,
                  "leaving without a goodbye from every rank: ", e.detail());
      clean = false;
    }
  }
  world_.reset();
  if (parts_->transport) parts_->transport->shutdown();
  parts_->transport.reset();
  parts_->node.reset();
  parts_->engineNode.reset();
  // Every rank has passed the goodbye (or the job failed): nobody needs the bootstrap
  // channel any more, so it need not wait for the others either. Under MPI a clean exit
  // still finalises MPI.
  // A clean leave without MPI also waits until rank 0's store is gone, so that an init()
  // right after this shutdown joins a new store, not the old one.
  if (parts_->oob && !clean) {
    parts_->oob->abandon();
  } else if (parts_->oob && config_.launch.launcher != LaunchEnvironment::Launcher::mpi) {
    parts_->oob->leaveAfterGoodbye();
  }
  parts_->oob.reset();
}

std::unique_ptr<Runtime> Runtime::init(Config config) {
  std::unique_ptr<Runtime> rt(new Runtime(std::move(config)));
  try {
    rt->start();
  } catch (const Error&) {
    // Nobody waits for the others on the way out: after a failure some may never come, and
    // after a verdict every rank reaches alike (settings differ) none needs the channel.
    if (rt->parts_->oob) rt->parts_->oob->abandon(/*othersReading=*/true);
    throw;
  }
  return rt;
}

void Runtime::start() {
  Parts& parts = *parts_;
  parts.oob = bootstrap::makeOutOfBand(config_);
  rank_ = parts.oob->rank();
  size_ = parts.oob->size();

  // Where every rank is (node, cloud, region; SKYRING_NODE defaults to the hostname) and
  // its job-wide settings, gathered from all ranks and checked before anything depends on
  // them. Node-mates share node and cloud.
  const auto& launch = config_.launch;
  // The cipher a sealed job uses is resolved here, before the ranks compare settings, so
  // that ranks whose CPUs would pick differently (SKYRING_CIPHER=auto) fail together here
  // rather than on their first sealed message.
  if (config_.effectiveEncryption() != Encryption::none)
    config_.cipher = transport::aead::resolve(config_.cipher);
  const auto gathered =
      parts.oob->allgather(runtime::serialize(runtime::localJoinRecord(config_, hostName())));
  std::vector<runtime::JoinRecord> joins;
  joins.reserve(gathered.size());
  for (std::size_t r = 0; r < gathered.size(); ++r)
    joins.push_back(runtime::parseJoinRecord(gathered[r], static_cast<int>(r)));
  runtime::checkSettingsAgree(joins, rank_);  // the same verdict on every rank
  std::vector<topology::RankRecord> records;
  records.reserve(joins.size());
  for (auto& j : joins)
    records.push_back(std::move(j.where));
  topology_ =
      std::make_shared<const topology::Topology>(std::move(records), topology::CostModel(config_));
  const std::vector<int> nodeRanks = topology_->groupOf(topology::Level::node, rank_);
  const int nodeIndex = topology_->indexInGroup(topology::Level::node, rank_);
  // Local rank and size: from the launcher where it says, else from the node names.
  if (launch.localRank >= 0 && launch.localSize > 0) {
    localRank_ = launch.localRank;
    localSize_ = launch.localSize;
  } else {
    localRank_ = nodeIndex;
    localSize_ = static_cast<int>(nodeRanks.size());
  }

  // Sealed links (docs/security.md): every rank seals alike (the settings agree), so every
  // rank takes part in the allgather of this run's X25519 public keys.
  std::optional<transport::SealingOptions> sealing = transport::SealingOptions::fromConfig(config_);
  if (sealing) {
    auto exchange = std::make_shared<const transport::aead::KeyExchange>();
    sealing->publicKeys = parts.oob->allgather(exchange->publicKey());
    sealing->keyExchange = std::move(exchange);
  }

  if (size_ == 1 && launch.launcher == LaunchEnvironment::Launcher::none) {
    parts.alone = std::make_unique<transport::InProcessWorld>(1);
    parts.transport = parts.alone->transport(0);
  } else {
    bootstrap::OutOfBand* oob = parts.oob.get();
    transport::UcxOptions options;
    options.connectTimeout = config_.initTimeout;
    // No rendezvous round trips over a WAN, unless the user set UCX's threshold.
    options.eagerOnly = topology_->clouds() > 1 && !config_.ucxRendezvousThresholdSet;
    // UCX's aborts and goodbyes are sealed too: a forged one is ignored.
    if (sealing) options.controlSeal = sealing->controlSeal(rank_);
    parts.transport = transport::makeUcxTransport(
        rank_, size_, [oob](std::span<const std::byte> mine) { return oob->allgather(mine); },
        options);
  }
  // Every byte the transport sends is attributed to its link class (stats()).
  parts.meter = std::make_shared<transport::MeteringTransport>(parts.transport, topology_);
  parts.transport = parts.meter;
  // Sealing sits above the meter, so the meter counts what the network carries (each
  // sealed message is 16 bytes longer), and below every communicator, so what a codec
  // compressed is sealed after compression (docs/security.md).
  if (sealing) {
    if (rank_ == 0) {
      SKYRING_LOG(
          Logger(config_.logLevel, rank_), info, "sealing ",
          config_.effectiveEncryption() == Encryption::all ? "every link" : "cross-cloud links",
          " with ", transport::aead::cipherName(sealing->cipher), " (docs/security.md)");
    }
    parts.transport = std::make_shared<transport::SealingTransport>(parts.transport, topology_,
                                                                    std::move(*sealing));
  } else if (rank_ == 0 && topology_->clouds() > 1 && config_.encryption == Encryption::automatic) {
    SKYRING_LOG(Logger(config_.logLevel, rank_), warn,
                "traffic between clouds is not encrypted: set SKYRING_JOB_TOKEN (the same "
                "secret on every rank) to seal it, or SKYRING_ENCRYPT=none to say you mean it");
  }

  // Shared memory among the ranks of this node: one channel for world() and one for the
  // engine (a channel runs one call at a time, and the two run concurrently). Every rank
  // takes part in each setup (two allgathers); if it fails, every rank learns so and all
  // fall back to the transport.
  const auto openNode = [&]() -> std::shared_ptr<transport::NodeChannel> {
    if (size_ == 1 || !config_.sharedMemory) return nullptr;
    auto exchange = [&](std::span<const std::byte> mine) {
      auto everyone = parts.oob->allgather(mine);
      std::vector<std::vector<std::byte>> local;
      for (int r : nodeRanks)
        local.push_back(std::move(everyone[static_cast<std::size_t>(r)]));
      return local;
    };
    try {
      return transport::NodeChannel::openShared(
          nodeIndex, nodeRanks, std::max(config_.shmSlotBytes, config_.shmRingBytes / 2), exchange);
    } catch (const TransportError& e) {
      SKYRING_LOG(Logger(config_.logLevel, rank_), warn, "no shared memory inside the node (",
                  e.detail(), "); using the transport");
      return nullptr;
    }
  };
  std::shared_ptr<transport::NodeChannel> node = openNode();
  if (node && !node->singleCopy() && config_.shmSingleCopyBytes != 0) {
    SKYRING_LOG(Logger(config_.logLevel, rank_), warn,
                "cross-memory attach (process_vm_readv) is not permitted here: "
                "SKYRING_SHM_SINGLE_COPY_BYTES has no effect");
  }
  std::shared_ptr<transport::NodeChannel> engineNode = openNode();  // collective, on every rank
  // With several nodes each node set up its own channels: allreduce takes the node level
  // only if every node has both (a channel of one rank for a rank alone on its node),
  // decided alike on every rank (collectives/node_level.h); else no rank uses shared memory.
  if (size_ > 1 && config_.sharedMemory && topology_->nodes() > 1) {
    const std::byte ok{static_cast<unsigned char>(node != nullptr && engineNode != nullptr)};
    const auto all = parts.oob->allgather(std::span(&ok, 1));
    if (std::any_of(all.begin(), all.end(),
                    [](const auto& b) { return b.empty() || b.front() != std::byte{1}; })) {
      node.reset();
      engineNode.reset();
      config_.sharedMemory = false;  // for both communicators, and the summary
    }
  }
  parts.node = node;
  parts.engineNode = engineNode;
  world_ = std::make_unique<Communicator>(parts.transport, config_, node, topology_);
  processSets_ = std::make_unique<ProcessSetTable>(*world_, parts.transport, topology_);
  logSummary();
  startMetrics();
}

void Runtime::startMetrics() {
  std::vector<std::pair<std::string, std::string>> labels{{"rank", std::to_string(rank_)}};
  if (!config_.jobId().empty()) labels.emplace_back("job_id", config_.jobId());
  metrics_ = std::make_shared<metrics::Registry>(std::move(labels));
  metrics::Registry& r = *metrics_;
  const auto& here = topology_->record(rank_);
  r.gauge("skyring_rank_info", "1, labelled with where this rank runs and the library version.",
          {"cloud", "node", "local_rank", "version"})
      .with({here.cloud, here.node, std::to_string(localRank_), SKYRING_VERSION})
      .set(1);
  // The transport's counts (every byte sent: world(), the engine, process sets), copied
  // at each scrape; shared memory inside a node is not a link and is not counted.
  auto& bytes = r.counter("skyring_bytes_sent_total",
                          "Bytes this rank sent over the transport, by link class.", {"link"});
  auto& messages =
      r.counter("skyring_messages_sent_total",
                "Messages this rank sent over the transport, by link class.", {"link"});
  std::array<std::pair<metrics::Counter*, metrics::Counter*>, topology::kLinkClassCount> byClass{};
  for (auto c : {topology::LinkClass::intraNode, topology::LinkClass::intraCloud,
                 topology::LinkClass::crossCloud}) {
    std::string name(topology::linkClassName(c));
    std::replace(name.begin(), name.end(), '-', '_');
    byClass[topology::index(c)] = {&bytes.with({name}), &messages.with({name})};
  }
  metrics::Counter& dollars =
      r.counter("skyring_egress_dollars_total",
                "Egress this rank's sends cost by the cost model (SKYRING_LINK_*_DOLLARS_PER_GB), "
                "in US dollars.")
          .with({});
  // A weak reference: the registry (which the engine shares) must not keep the transport.
  r.onCollect([weak = std::weak_ptr(parts_->meter), byClass, &dollars] {
    const auto meter = weak.lock();
    if (!meter) return;
    const auto stats = meter->stats();
    for (std::size_t c = 0; c < byClass.size(); ++c) {
      if (byClass[c].first == nullptr) continue;
      byClass[c].first->advanceTo(static_cast<double>(stats.bytes[c]));
      byClass[c].second->advanceTo(static_cast<double>(stats.messages[c]));
    }
    dollars.advanceTo(stats.egressDollars);
  });

  if (config_.metricsPort < 0) return;
  const Logger log(config_.logLevel, rank_);
  runtime::MetricsServerOptions options;
  options.address = config_.metricsAddress;
  // Ranks of one node share its addresses: each takes the port after its local rank's
  // predecessor (0 stays 0: each its own free port).
  options.port = config_.metricsPort == 0 ? 0 : config_.metricsPort + localRank_;
  const std::string where = options.address + ":" + std::to_string(options.port);
  if (options.port > 65535) {
    SKYRING_LOG(log, warn, "metrics: SKYRING_METRICS_PORT=", config_.metricsPort,
                " plus local rank ", localRank_, " is past 65535; not serving /metrics");
    return;
  }
  try {
    parts_->metricsServer = std::make_unique<runtime::MetricsServer>(metrics_, options, log);
    SKYRING_LOG(log, info, "metrics: serving http://", options.address, ":",
                parts_->metricsServer->port(),
                "/metrics (SKYRING_METRICS_PORT=", config_.metricsPort, " plus local rank ",
                localRank_, ")");
  } catch (const Error& e) {
    // Metrics are a diagnostic: a port taken by another process never stops training.
    SKYRING_LOG(log, warn, "metrics: not serving /metrics on ", where, ": ", e.detail(),
                "; training goes on without this rank's metrics");
  }
}

int Runtime::metricsPort() const noexcept {
  return parts_->metricsServer ? parts_->metricsServer->port() : 0;
}

// At info, rank 0 says once how the job is laid out and what will run where; the same
// facts are on every rank, so one line per job is enough.
void Runtime::logSummary() const {
  const Logger log(config_.logLevel, rank_);
  if (rank_ != 0 || !log.enabled(LogLevel::info)) return;
  const auto& t = *topology_;
  std::ostringstream os;
  os << "skyring " << SKYRING_VERSION << ": " << size_ << " rank" << (size_ == 1 ? "" : "s")
     << " on " << t.nodes() << " node" << (t.nodes() == 1 ? "" : "s") << " in " << t.clouds()
     << " cloud" << (t.clouds() == 1 ? "" : "s") << " (";
  const char* sep = "";
  for (const auto& cloud : t.groups(topology::Level::cloud)) {
    int nodes = 0;
    for (const auto& node : t.groups(topology::Level::node))
      nodes += t.record(node.front()).cloud == t.record(cloud.front()).cloud ? 1 : 0;
    os << sep << t.record(cloud.front()).cloud << ": " << cloud.size() << " rank"
       << (cloud.size() == 1 ? "" : "s") << " on " << nodes << " node" << (nodes == 1 ? "" : "s");
    sep = "; ";
  }
  const char* launcher = config_.launch.launcher == LaunchEnvironment::Launcher::mpi ? "mpirun"
                         : config_.launch.launcher == LaunchEnvironment::Launcher::torchrun
                             ? "torchrun-style store"
                             : "none";
  os << "); joined through " << launcher;
  if (!config_.jobId().empty()) os << " (job " << config_.jobId() << ")";
  os << ". allreduce: " << world_->describeAllreduce()
     << ". transport: " << (parts_->alone ? "in-process" : "UCX");
  if (t.clouds() > 1) os << " (eager sends)";
  if (parts_->node) {
    os << "; shared memory inside the node"
       << (parts_->node->singleCopy() ? " (with single-copy)" : "");
  } else if (config_.sharedMemory && size_ > 1) {
    os << "; no shared memory";
  }
  os << ". compression for gradients that ask for the default: " << config_.compression;
  if (config_.compression != "none") {
    os << " at " << (config_.compressionLevels.cloud ? "cloud" : "")
       << (config_.compressionLevels.cloud && config_.compressionLevels.crossCloud ? "," : "")
       << (config_.compressionLevels.crossCloud ? "cross_cloud" : "");
  }
  os << ". timeouts: collectives " << config_.timeout.count() << " ms, start-up "
     << config_.initTimeout.count() << " ms.";
  log.log(LogLevel::info, os.str());
}

Engine& Runtime::engine() {
  std::call_once(engineOnce_, [&] {
    EngineOptions options;
    options.metrics = metrics_;
    options.linkBytes = [meter = parts_->meter] {
      static_assert(topology::kLinkClassCount == 4);
      std::array<std::uint64_t, 4> out{};
      const auto stats = meter->stats();
      for (std::size_t c = 0; c < out.size(); ++c)
        out[c] = stats.bytes[c];
      return out;
    };
    Config quiet = config_;
    quiet.warnings.clear();  // world() said them
    // Its own context: the engine's tags never meet the world's (tags::kRuntimeEngineContext).
    std::vector<int> everyone(static_cast<std::size_t>(size_));
    for (int r = 0; r < size_; ++r)
      everyone[static_cast<std::size_t>(r)] = r;
    auto transport = std::make_shared<transport::SubgroupTransport>(
        parts_->transport, std::move(everyone),
        transport::SubgroupTransport::Scope::context(tags::kRuntimeEngineContext));
    engineComm_ = std::make_unique<Communicator>(std::move(transport), std::move(quiet),
                                                 parts_->engineNode, topology_, options.tag);
    engine_ = std::make_unique<Engine>(*engineComm_, options);
  });
  return *engine_;
}

transport::TrafficStats Runtime::stats() const {
  return parts_->meter ? parts_->meter->stats() : transport::TrafficStats{};
}

}  // namespace skyring
