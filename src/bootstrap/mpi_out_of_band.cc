// Out-of-band exchange over MPI, with a deadline on every wait.
//
// MPI's own collectives cannot be given a timeout: a rank that never arrives (stopped,
// started late, or taking another branch because its settings differ) would leave the
// others blocked in MPI_Allgather forever. So the exchange is a star over non-blocking
// point-to-point messages that this rank polls until Config::initTimeout:
//   1. every rank sends its bytes to rank 0 (tag kGather + round);
//   2. rank 0 collects them (MPI_Improbe + MPI_Mrecv, so sizes need no extra message),
//      packs them and sends the whole table to every rank (tag kResult + round);
//   3. if some rank did not send in time, rank 0 instead sends every rank that did a
//      verdict naming the missing ranks (tag kFailed + round), so they fail with the same
//      message; a rank that hears nothing from rank 0 in time names rank 0.
// Rounds are numbered, so a late message of an old round never matches a new one. Polling
// sleeps between probes, so ranks waiting on a late peer yield their core.
//
// MPI is initialised here only if the program has not done it, and then finalised at the
// process's exit (not when this channel goes), so that a program may shut skyring down
// and init it again, as Horovod's users do: MPI cannot be initialised twice. The exit
// skips MPI_Finalize once any job of the process was abandoned (failed): it waits for
// every process, and the failed ones may never come.
#include <mpi.h>
#include <cstdint>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "bootstrap/out_of_band.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

#define SKYRING_MPI_CHECK(expr, rank)                                                  \
  do {                                                                                 \
    const int rc_ = (expr);                                                            \
    if (rc_ != MPI_SUCCESS) {                                                          \
      char msg_[MPI_MAX_ERROR_STRING];                                                 \
      int len_ = 0;                                                                    \
      MPI_Error_string(rc_, msg_, &len_);                                              \
      SKYRING_THROW(TransportError, (ErrorContext{rank, -1, "bootstrap"}), #expr ": ", \
                    std::string(msg_, static_cast<std::size_t>(len_)));                \
    }                                                                                  \
  } while (0)

using Clock = std::chrono::steady_clock;

// Tags: kind in the low two bits, round above (MPI guarantees tags up to 32767).
constexpr int kGather = 0;
constexpr int kResult = 1;
constexpr int kFailed = 2;
constexpr int kRounds = 32767 / 4;

constexpr auto kPollPause = std::chrono::microseconds(500);
constexpr auto kVerdictGrace = std::chrono::seconds(2);
constexpr auto kLingerBound = std::chrono::milliseconds(1500);

std::string rankList(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  for (std::size_t i = 0; i < ranks.size(); ++i)
    os << (i == 0 ? "" : ", ") << ranks[i];
  return os.str();
}

// Whether this process initialised MPI and whether a job was abandoned since: read at exit.
struct MpiOwnership {
  std::mutex mu;
  bool finalizeAtExit = false;
  bool abandoned = false;
};

MpiOwnership& ownership() {
  static MpiOwnership o;
  return o;
}

void finalizeAtExit() {
  MpiOwnership& o = ownership();
  std::lock_guard lock(o.mu);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (o.finalizeAtExit && !o.abandoned && !finalized) MPI_Finalize();
}

class MpiOutOfBand final : public OutOfBand {
 public:
  MpiOutOfBand(std::chrono::milliseconds timeout, int launchRank) : timeout_(timeout) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      SKYRING_MPI_CHECK(initWithin(timeout, launchRank), launchRank);
      ownership();  // constructed before the handler is registered, so it outlives it
      std::lock_guard lock(ownership().mu);
      ownership().finalizeAtExit = true;
      std::atexit(finalizeAtExit);
    }
    SKYRING_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), -1);
    // Errors come back as codes (translated above) instead of aborting the job.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  ~MpiOutOfBand() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    // Rank 0's last table may still be on its way to ranks that will reach the same
    // verdict: let it go out (bounded) before the process may exit without MPI_Finalize.
    if (othersReading_) {
      const auto until = Clock::now() + kLingerBound;
      while (!pending_.empty() && Clock::now() < until) {
        completeSends();
        std::this_thread::sleep_for(kPollPause);
      }
    }
    // Sends still pending go to ranks that failed: cancelling them is all that is left.
    for (auto& r : pending_) {
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    }
    if (abandoned_) {
      std::lock_guard lock(ownership().mu);
      ownership().abandoned = true;  // MPI_Finalize would wait for ranks that never come
      return;
    }
    MPI_Comm_free(&comm_);
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  void abandon(bool othersReading) noexcept override {
    abandoned_ = true;
    othersReading_ = othersReading_ || othersReading;  // a later plain abandon keeps it
  }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    const int round = round_++ % kRounds;
    const auto deadline = Clock::now() + timeout_;
    if (rank_ == 0) return gatherAtRoot(mine, round, deadline);
    send(mine.data(), mine.size(), 0, tag(kGather, round));
    // Rank 0 gives up at the same time and then names the missing ranks: wait a little
    // longer than it does, so that its verdict, not a guess, is what this rank reports.
    const auto verdictDeadline = deadline + std::min<Clock::duration>(timeout_ / 4, kVerdictGrace);
    // Rank 0 answers with the table or with a verdict; both are waited for at once.
    for (;;) {
      for (int kind : {kResult, kFailed}) {
        MPI_Message msg;
        MPI_Status st;
        int found = 0;
        SKYRING_MPI_CHECK(MPI_Improbe(0, tag(kind, round), comm_, &found, &msg, &st), rank_);
        if (!found) continue;
        std::vector<std::byte> bytes = receive(msg, st);
        if (kind == kFailed) {
          SKYRING_THROW(Timeout, (ErrorContext{rank_, -1, "bootstrap"}),
                        std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
        }
        completeSends();
        return unpack(bytes);
      }
      if (Clock::now() >= verdictDeadline) {
        SKYRING_THROW(Timeout, (ErrorContext{rank_, 0, "bootstrap"}),
                      "rank 0 did not complete the MPI bootstrap exchange within ",
                      timeout_.count(),
                      " ms (SKYRING_INIT_TIMEOUT_MS): rank 0 is stopped, "
                      "dead or not calling skyring's init");
      }
      std::this_thread::sleep_for(kPollPause);
    }
  }

  void barrier() override { allgather({}); }

 private:
  static int tag(int kind, int round) { return round * 4 + kind; }

  // MPI_Init waits for every process of the job (Open MPI exchanges their addresses in
  // it) and has no timeout: a process that never starts, or is stopped, would hold the
  // others there forever. So it runs on a thread of its own, and this rank gives up after
  // the start-up timeout; the thread is left behind, blocked, for the exit to end.
  static int initWithin(std::chrono::milliseconds timeout, int launchRank) {
    struct State {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
      int rc = MPI_SUCCESS;
    };
    auto state = std::make_shared<State>();
    std::thread([state] {
      int provided = 0;
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      std::lock_guard lock(state->mu);
      state->rc = rc;
      state->done = true;
      state->cv.notify_all();
    }).detach();
    std::unique_lock lock(state->mu);
    if (!state->cv.wait_for(lock, timeout, [&] { return state->done; })) {
      SKYRING_THROW(Timeout, (ErrorContext{launchRank, -1, "bootstrap"}),
                    "MPI_Init did not complete within ", timeout.count(),
                    " ms (SKYRING_INIT_TIMEOUT_MS): it waits for every process of the job, and "
                    "one has not started, is stopped, or died before calling it");
    }
    return state->rc;
  }

  std::vector<std::vector<std::byte>> gatherAtRoot(std::span<const std::byte> mine, int round,
                                                   Clock::time_point deadline) {
    std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(size_));
    std::vector<bool> have(static_cast<std::size_t>(size_), false);
    all[0].assign(mine.begin(), mine.end());
    have[0] = true;
    int missing = size_ - 1;
    while (missing > 0) {
      MPI_Message msg;
      MPI_Status st;
      int found = 0;
      SKYRING_MPI_CHECK(MPI_Improbe(MPI_ANY_SOURCE, tag(kGather, round), comm_, &found, &msg, &st),
                        rank_);
      if (found) {
        const auto from = static_cast<std::size_t>(st.MPI_SOURCE);
        all[from] = receive(msg, st);
        if (!have[from]) --missing;
        have[from] = true;
        continue;
      }
      if (Clock::now() >= deadline) break;
      std::this_thread::sleep_for(kPollPause);
    }
    if (missing > 0) {
      std::vector<int> absent;
      for (int r = 0; r < size_; ++r) {
        if (!have[static_cast<std::size_t>(r)]) absent.push_back(r);
      }
      const std::string why = rankList(absent) +
                              " did not join the MPI bootstrap exchange within " +
                              std::to_string(timeout_.count()) +
                              " ms (SKYRING_INIT_TIMEOUT_MS): stopped, dead, started late, or "
                              "not calling skyring's init";
      for (int r = 1; r < size_; ++r) {
        if (have[static_cast<std::size_t>(r)]) send(why.data(), why.size(), r, tag(kFailed, round));
      }
      SKYRING_THROW(Timeout, (ErrorContext{rank_, absent.front(), "bootstrap"}), why);
    }
    std::vector<std::byte> packed;
    for (const auto& b : all) {
      const std::uint64_t n = b.size();
      const auto* p = reinterpret_cast<const std::byte*>(&n);
      packed.insert(packed.end(), p, p + sizeof n);
      packed.insert(packed.end(), b.begin(), b.end());
    }
    for (int r = 1; r < size_; ++r)
      send(packed.data(), packed.size(), r, tag(kResult, round));
    completeSends();
    return all;
  }

  std::vector<std::vector<std::byte>> unpack(const std::vector<std::byte>& packed) const {
    std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(size_));
    std::size_t pos = 0;
    for (auto& b : all) {
      std::uint64_t n = 0;
      SKYRING_CHECK(packed.size() - pos >= sizeof n, TransportError,
                    (ErrorContext{rank_, 0, "bootstrap"}), "truncated bootstrap table from rank 0");
      std::memcpy(&n, packed.data() + pos, sizeof n);
      pos += sizeof n;
      SKYRING_CHECK(packed.size() - pos >= n, TransportError, (ErrorContext{rank_, 0, "bootstrap"}),
                    "truncated bootstrap table from rank 0");
      const auto* p = packed.data() + pos;
      b.assign(p, p + n);
      pos += n;
    }
    return all;
  }

  void send(const void* data, std::size_t bytes, int to, int t) {
    SKYRING_CHECK_ARG(bytes <= static_cast<std::size_t>(INT32_MAX),
                      (ErrorContext{rank_, to, "bootstrap"}), "bootstrap message of ", bytes,
                      " bytes is too large for MPI");
    // The buffer must outlive the send: keep a copy with the request.
    buffers_.emplace_back(static_cast<const std::byte*>(data),
                          static_cast<const std::byte*>(data) + bytes);
    MPI_Request req = MPI_REQUEST_NULL;
    SKYRING_MPI_CHECK(
        MPI_Isend(buffers_.back().data(), static_cast<int>(bytes), MPI_BYTE, to, t, comm_, &req),
        rank_);
    pending_.push_back(req);
  }

  std::vector<std::byte> receive(MPI_Message& msg, MPI_Status& st) {
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    std::vector<std::byte> bytes(static_cast<std::size_t>(std::max(count, 0)));
    SKYRING_MPI_CHECK(MPI_Mrecv(bytes.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE), rank_);
    return bytes;
  }

  // Sends of this round that already completed are released; the others stay pending
  // until a later round or the destructor (a receiver that has all it needs is never
  // made to wait for a slow one's acknowledgement).
  void completeSends() {
    std::vector<MPI_Request> still;
    std::list<std::vector<std::byte>> keep;
    auto buf = buffers_.begin();
    for (auto& r : pending_) {
      int done = 0;
      MPI_Test(&r, &done, MPI_STATUS_IGNORE);
      if (!done) {
        still.push_back(r);
        keep.splice(keep.end(), buffers_, buf++);
      } else {
        ++buf;
      }
    }
    pending_ = std::move(still);
    buffers_ = std::move(keep);
  }

  std::chrono::milliseconds timeout_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int round_ = 0;
  bool abandoned_ = false;
  bool othersReading_ = false;
  std::vector<MPI_Request> pending_;
  std::list<std::vector<std::byte>> buffers_;  // one per pending_ entry, same order
};

}  // namespace

std::unique_ptr<OutOfBand> makeMpiOutOfBand(const Config& config) {
  return std::make_unique<MpiOutOfBand>(config.initTimeout, config.launch.rank);
}

}  // namespace skyring::bootstrap
