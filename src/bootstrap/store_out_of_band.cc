// Out-of-band exchange over the TCP store: rank 0 hosts it at MASTER_ADDR:MASTER_PORT,
// every rank is a client, joined as its RANK of the job Config names (job id, world size,
// token). Each exchange uses a fresh key prefix; every wait is bounded by the init
// timeout (SKYRING_INIT_TIMEOUT_MS), the goodbye at destruction included.
#include <algorithm>
#include <thread>

#include "bootstrap/out_of_band.h"
#include "bootstrap/tcp_store.h"
#include "skyring/error.h"
#include "skyring/logging.h"

namespace skyring::bootstrap {
namespace {

// How long rank 0 asks what holds MASTER_PORT when it cannot listen there.
constexpr std::chrono::milliseconds kPortProbeWait{2000};
// Beyond kStartupQuiet, so that every rank's check comes after the store runs.
constexpr std::chrono::milliseconds kSealMargin{300};
// How long rank 0 keeps the store for ranks still reading when it leaves without a goodbye.
constexpr std::chrono::milliseconds kLingerBound{1500};
// How long a rank that leaves after the goodbye waits for rank 0's store to close: rank 0
// stops it once its transport is down, which takes milliseconds; a dead rank 0's
// connection closes at once.
constexpr std::chrono::milliseconds kStoreCloseWait{10000};

// Rank 0 could not listen on MASTER_PORT. If a store of this job's identity holds it,
// this is a second launch (or a repeated RANK=0): claiming rank 0 there makes that
// store's join fail too, for all of its ranks, instead of letting the first ranks to
// arrive from both launches run as one group. Otherwise the answer names what is there.
std::string whoHoldsThePort(const Config& config, const StoreIdentity& identity) {
  try {
    TcpStoreClient probe(config.launch.masterAddr, config.launch.masterPort,
                         std::min(config.initTimeout, kPortProbeWait), identity, 0);
  } catch (const Timeout&) {
    return "nothing answers there";
  } catch (const Error& e) {
    return e.detail();
  }
  return "a store of this job listens there and took this process as rank 0: two launches "
         "on one MASTER_PORT?";
}

// Rank 0 listens where MASTER_ADDR points (loopback stays loopback), never on every
// interface: the other ranks connect to MASTER_ADDR, and nobody else needs to.
std::unique_ptr<TcpStoreServer> hostStore(const Config& config, const StoreIdentity& identity) {
  const auto& launch = config.launch;
  try {
    return std::make_unique<TcpStoreServer>(launch.masterAddr, launch.masterPort, identity);
  } catch (const InvalidArgument& e) {
    SKYRING_THROW(InvalidArgument, (ErrorContext{0, -1, "bootstrap"}),
                  "rank 0 hosts the store at MASTER_ADDR:MASTER_PORT = ", launch.masterAddr, ":",
                  launch.masterPort, ", so MASTER_ADDR must name rank 0's host: ", e.detail());
  } catch (const TransportError& e) {
    SKYRING_THROW(TransportError, (ErrorContext{0, -1, "bootstrap"}),
                  "rank 0 cannot host the store at MASTER_ADDR:MASTER_PORT = ", launch.masterAddr,
                  ":", launch.masterPort, ": ", e.detail(), "; ",
                  whoHoldsThePort(config, identity));
  }
}

class StoreOutOfBand final : public OutOfBand {
 public:
  explicit StoreOutOfBand(const Config& config)
      : rank_(config.launch.rank), size_(config.launch.size) {
    const StoreIdentity identity{config.jobId(), size_, config.jobToken};
    if (rank_ == 0) server_ = hostStore(config, identity);
    client_ = std::make_unique<TcpStoreClient>(config.launch.masterAddr, config.launch.masterPort,
                                               config.initTimeout, identity, rank_);
    if (identity.jobId.empty() && size_ > 1) sealJoin(Logger(config.logLevel, rank_));
  }

  ~StoreOutOfBand() override {
    // Rank 0 serves until every rank is done with the store, unless the job failed (then
    // the others may never come) or the ranks said goodbye another way. A rank that
    // leaves without the goodbye closes its connection, and the store then fails every
    // wait that could have needed it, naming it (tcp_store.h).
    if (!abandoned_) {
      try {
        barrier();
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
      }
    }
    client_.reset();
    // Leaving right after an exchange the others may still be reading (init failed on a
    // verdict every rank reaches): the store stays until they have left too, within a
    // bound (a peer that is stopped does not hold rank 0 for long).
    if (server_ && othersReading_) server_->lingerUntilAlone(kLingerBound);
    server_.reset();
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    try {
      return bootstrap::allgather(*client_, "allgather/" + std::to_string(round_++) + "/", mine);
    } catch (const Error& e) {
      giveUp(e);
      throw;
    }
  }

  void barrier() override {
    try {
      bootstrap::barrier(*client_, "barrier/" + std::to_string(round_++) + "/");
    } catch (const Error& e) {
      giveUp(e);
      throw;
    }
  }

  void abandon(bool othersReading) noexcept override {
    abandoned_ = true;
    othersReading_ = othersReading_ || othersReading;  // a later plain abandon keeps it
  }

  // Rank 0 stops its store (closing every connection) right after its own goodbye: the
  // others wait for that before they return from shutdown, so that a re-init does not
  // join the old store, which still holds their claims and would fail the join.
  void leaveAfterGoodbye() noexcept override {
    abandon(false);
    if (!server_ && client_) {
      client_->awaitServerClose(std::chrono::steady_clock::now() + kStoreCloseWait);
    }
  }

 private:
  // Without a job id, two launches on one MASTER_PORT are told apart only by two claims on
  // one rank, and the first ranks to claim may come from both: a group of them could
  // finish the join before the second claim arrives. So such a job waits until the store
  // runs (every rank joined, then kStartupQuiet without a request) before it goes on: a
  // second claim made by then has failed the join, and the exchange after the wait fails
  // with it on every rank. A job with an id (SKYRING_JOB_ID, TORCHELASTIC_RUN_ID) is told
  // apart at the handshake and does not wait.
  void sealJoin(const Logger& log) {
    SKYRING_LOG(log, info, "no job id (SKYRING_JOB_ID): waiting ",
                (store_wire::kStartupQuiet + kSealMargin).count(),
                " ms so that a second launch on this MASTER_PORT cannot mix with this one");
    // Allgathers rather than barriers: a rank that never comes is then named.
    allgather({});  // every rank of this job has claimed its rank
    std::this_thread::sleep_for(store_wire::kStartupQuiet + kSealMargin);
    allgather({});  // fails, naming the claim, if the join failed meanwhile
  }

  // After a failed exchange the channel leaves by itself, saying why: the ranks still
  // waiting hear it at once (the store fails their waits naming the culprit) instead of
  // at their timeout, and no goodbye is waited for.
  void giveUp(const Error& e) noexcept {
    if (abandoned_) return;
    abandoned_ = true;
    client_->leave(e.peer(), e.detail());
  }

  int rank_;
  int size_;
  int round_ = 0;
  bool abandoned_ = false;
  bool othersReading_ = false;
  std::unique_ptr<TcpStoreServer> server_;
  std::unique_ptr<TcpStoreClient> client_;
};

}  // namespace

std::unique_ptr<OutOfBand> makeStoreOutOfBand(const Config& config) {
  return std::make_unique<StoreOutOfBand>(config);
}

}  // namespace skyring::bootstrap
