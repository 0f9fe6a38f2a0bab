// The TCP store server's rules for the job (see tcp_store.h): who is admitted, what a
// duplicate claim does to the join, who may replace a key, and how a rank that is gone
// ends everyone's waits. The loop and its I/O are in tcp_store_server.cc.
#include <cstdint>
#include <cstring>

#include "bootstrap/tcp_store_server_loop.h"
#include "skyring/error.h"

namespace skyring::bootstrap {

using ::skyring::detail::concat;
using store_wire::Op;
using store_wire::Status;
namespace hs = handshake;

std::string TcpStoreServer::Loop::jobName() const {
  return jobId_.empty() ? std::string("a job without a job id") : "job '" + jobId_ + "'";
}

void TcpStoreServer::Loop::admit(std::uint64_t id, Connection& c, const hs::Hello& hello) {
  // Another version's client could not read the answer: it is dropped (and reports that
  // the server closed the connection); the version is in the challenge it has read.
  if (hello.version != hs::kVersion) {
    c.dead = true;
    return;
  }
  // The identity is checked before the proof: a process of another job cannot prove this
  // job's key, and is better told which job it reached.
  if (hello.jobId != jobId_) return refuse(c, hs::Verdict::otherJob, -1, {});
  if (hello.worldSize != static_cast<std::uint32_t>(worldSize_)) {
    return refuse(c, hs::Verdict::otherWorldSize, -1, {});
  }
  if (!hs::sameMac(hello.proof, hs::clientProof(key_, c.serverNonce, hello))) {
    return refuse(c, hs::Verdict::badProof, -1, {});
  }
  if (hello.rank >= static_cast<std::uint32_t>(worldSize_)) {
    c.dead = true;  // knows the key yet claims no rank of the job: not our client
    return;
  }
  const int rank = static_cast<int>(hello.rank);
  if (!joinFailure_.empty())
    return refuse(c, hs::Verdict::joinFailed, joinFailureRank_, joinFailure_);
  if (claimed_.contains(rank)) {
    if (running(Clock::now())) {
      // The job started long ago: the newcomer is a stranger, and only it is told.
      return refuse(c, hs::Verdict::joinClosed, rank,
                    concat("all ", worldSize_, " ranks of ", jobName(),
                           " were running when this process claimed rank ", rank,
                           " too: refused (a second launch on the same MASTER_PORT?)"));
    }
    // Two processes claim one rank while the job starts. Without distinct job ids two
    // identical launches look alike, and the ranks that joined first may be a mix of
    // both: which group is "right" is unknowable, so the whole join fails, every rank
    // with this reason, rather than let a mixed group run.
    joinFailure_ = concat("two processes claim rank ", rank, " of ", jobName(),
                          " (two launches on one MASTER_PORT, or a repeated RANK?): the join "
                          "failed on every rank");
    joinFailureRank_ = rank;
    refuse(c, hs::Verdict::rankClaimed, rank, joinFailure_);
    failParked(rank, joinFailure_);
    return;
  }
  claimed_.insert(rank);
  lastRequest_ = Clock::now();
  c.joined = true;
  joinedOpen_.fetch_add(1, std::memory_order_release);
  c.rank = rank;
  pending_.erase(id);
  hs::Welcome welcome;
  welcome.jobId = jobId_;
  welcome.worldSize = static_cast<std::uint32_t>(worldSize_);
  welcome.proof = hs::serverProof(key_, c.serverNonce, hello);
  const std::vector<std::byte> bytes = hs::encodeWelcome(welcome);
  c.out.insert(c.out.end(), bytes.begin(), bytes.end());
  flush(c);
}

bool TcpStoreServer::Loop::running(Clock::time_point now) const {
  return claimed_.size() == static_cast<std::size_t>(worldSize_) && waiters_.empty() &&
         now - lastRequest_ >= options_.startupQuiet;
}

void TcpStoreServer::Loop::refuse(Connection& c, hs::Verdict verdict, int culprit,
                                  const std::string& message) {
  hs::Welcome welcome;
  welcome.verdict = verdict;
  welcome.culprit = culprit;
  welcome.jobId = jobId_;
  welcome.worldSize = static_cast<std::uint32_t>(worldSize_);
  welcome.message = message;
  const std::vector<std::byte> bytes = hs::encodeWelcome(welcome);
  c.out.insert(c.out.end(), bytes.begin(), bytes.end());
  c.closing = true;
  c.in.clear();
  flush(c);
}

void TcpStoreServer::Loop::handle(std::uint64_t id, Connection& c, Op op, std::string key,
                                  std::span<const std::byte> value) {
  lastRequest_ = Clock::now();
  if (op == Op::leave) {
    const auto named = static_cast<std::int32_t>(detail::getU32(value.data()));
    const int culprit = named >= 0 && named < worldSize_ ? named : c.rank;
    const auto* text = reinterpret_cast<const char*>(value.data() + 4);
    c.left = true;
    reply(c, Status::ok, -1, {});
    rankGone(culprit, concat("rank ", c.rank, " gave up: ", std::string(text, value.size() - 4)));
    return;
  }
  if (!joinFailure_.empty()) return replyText(c, Status::failed, joinFailureRank_, joinFailure_);
  switch (op) {
    case Op::set:
      return handleSet(c, key, value);
    case Op::add:
      return handleAdd(c, key, value);
    case Op::get: {
      if (auto it = data_.find(key); it != data_.end()) {
        return reply(c, Status::ok, it->second.owner, it->second.value);
      }
      // The key may be one only the rank that is gone would have set.
      if (!goneReason_.empty()) return replyText(c, Status::failed, goneRank_, goneReason_);
      constexpr std::uint64_t kMaxWaitMs = std::uint64_t{7} * 24 * 3600 * 1000;
      const auto waitMs = std::min(detail::getU64(value.data()), kMaxWaitMs);
      c.parked = true;
      c.parkedDeadline = Clock::now() + std::chrono::milliseconds(waitMs);
      waiters_[key].push_back(id);
      c.parkedKey = std::move(key);
      return;
    }
    case Op::leave:
      return;
  }
}

void TcpStoreServer::Loop::handleSet(Connection& c, const std::string& key,
                                     std::span<const std::byte> value) {
  auto it = data_.find(key);
  if (it != data_.end() && it->second.owner != c.rank) {
    // A rank replaces only its own values: nobody can overwrite another rank's record.
    return replyText(c, Status::error, -1,
                     it->second.owner < 0
                         ? concat("key '", key, "' is a counter")
                         : concat("key '", key, "' was set by rank ", it->second.owner, "; rank ",
                                  c.rank, " may not replace it"));
  }
  const std::size_t oldBytes = it == data_.end() ? 0 : key.size() + it->second.value.size();
  const std::size_t newBytes = key.size() + value.size();
  if (storedBytes_ - oldBytes + newBytes > options_.maxStoredBytes) {
    return replyText(c, Status::error, -1,
                     concat("the store holds ", storedBytes_, " bytes and may hold ",
                            options_.maxStoredBytes, " (store_wire::kMaxStoredBytes)"));
  }
  Entry& entry = data_[key];
  entry.value.assign(value.begin(), value.end());
  entry.owner = c.rank;
  storedBytes_ = storedBytes_ - oldBytes + newBytes;
  reply(c, Status::ok, -1, {});
  wake(key);
}

void TcpStoreServer::Loop::handleAdd(Connection& c, const std::string& key,
                                     std::span<const std::byte> value) {
  const auto delta = static_cast<std::int64_t>(detail::getU64(value.data()));
  std::int64_t counter = 0;
  auto it = data_.find(key);
  if (it != data_.end()) {
    if (it->second.owner >= 0) {
      return replyText(c, Status::error, -1,
                       concat("key '", key, "' holds a value set by rank ", it->second.owner,
                              ", not a counter"));
    }
    counter = static_cast<std::int64_t>(detail::getU64(it->second.value.data()));
  } else if (storedBytes_ + key.size() + 8 > options_.maxStoredBytes) {
    return replyText(c, Status::error, -1,
                     concat("the store holds ", storedBytes_, " bytes and may hold ",
                            options_.maxStoredBytes, " (store_wire::kMaxStoredBytes)"));
  }
  std::int64_t sum = 0;
  if (__builtin_add_overflow(counter, delta, &sum)) {
    return replyText(
        c, Status::error, -1,
        concat("counter '", key, "' = ", counter, " overflows when ", delta, " is added"));
  }
  std::byte encoded[8];
  detail::putU64(encoded, static_cast<std::uint64_t>(sum));
  if (it == data_.end()) {
    it = data_.emplace(key, Entry{}).first;
    storedBytes_ += key.size() + 8;
  }
  it->second.value.assign(std::begin(encoded), std::end(encoded));
  reply(c, Status::ok, -1, encoded);
  wake(key);
}

void TcpStoreServer::Loop::rankGone(int culprit, const std::string& reason) {
  if (!goneReason_.empty()) return;  // the first one gone is the news
  goneReason_ = reason;
  goneRank_ = culprit;
  failParked(culprit, reason);
}

}  // namespace skyring::bootstrap
