// The TCP store server's serving thread (internal to tcp_store_server.cc, which runs the
// poll() loop and its I/O, and tcp_store_join.cc, which admits ranks and serves
// requests). Everything here is touched by that one thread only, except stop().
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "bootstrap/store_handshake.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/tcp_store_socket.h"

namespace skyring::bootstrap {

class TcpStoreServer::Loop {
 public:
  using Clock = std::chrono::steady_clock;

  Loop(detail::UniqueFd listenFd, detail::UniqueFd wakeRead, detail::UniqueFd wakeWrite,
       const StoreIdentity& identity, const StoreServerOptions& options);

  // Serves until stop(); never throws. On an internal failure it closes everything.
  void run() noexcept;
  // Asks run() to return; callable from any thread, once.
  void stop() noexcept;
  // Joined connections still open; callable from any thread.
  int joinedOpen() const noexcept { return joinedOpen_.load(std::memory_order_acquire); }

 private:
  struct Connection {
    detail::UniqueFd fd;
    std::vector<std::byte> in;
    std::vector<std::byte> out;
    std::size_t outSent = 0;
    bool dead = false;
    bool joined = false;   // proved the key and claimed `rank`
    bool closing = false;  // refused: closed once its answer is sent
    bool left = false;     // sent leave: its close is no news
    int rank = -1;
    handshake::Nonce serverNonce{};
    Clock::time_point acceptedAt{};
    // When the request now arriving began (max: none), for the slow-client deadline.
    Clock::time_point partialSince = Clock::time_point::max();
    bool parked = false;
    std::string parkedKey;
    Clock::time_point parkedDeadline{};

    std::size_t outPending() const { return out.size() - outSent; }
  };
  struct Entry {
    std::vector<std::byte> value;
    int owner = -1;  // the rank that set it; -1: a counter
  };

  // A connection is not served further while this much of its responses is unsent.
  static constexpr std::size_t kOutputHighWater = std::size_t{1} << 20;
  // More buffered input than one largest request plus a read: the client is not waiting
  // for answers (or is hostile), so it is dropped.
  static constexpr std::size_t maxBufferedInput() {
    return store_wire::kRequestHeaderBytes + store_wire::kMaxKeyBytes + 4 +
           store_wire::kMaxValueBytes + 64 * 1024;
  }

  // tcp_store_server.cc: the loop and its I/O.
  bool pollOnce();
  Clock::time_point deadlineOf(const Connection& c) const;
  void acceptAll(Clock::time_point now);
  void readFrom(Connection& c);
  void flush(Connection& c);
  void drop(std::uint64_t id, Connection& c) noexcept;
  void shed() noexcept;
  void processInput(std::uint64_t id, Connection& c, Clock::time_point now);
  void reply(Connection& c, store_wire::Status status, int rank, std::span<const std::byte> value);
  void replyText(Connection& c, store_wire::Status status, int rank, const std::string& text);
  void wake(const std::string& key);
  void failParked(int culprit, const std::string& reason);
  void unpark(std::uint64_t id, Connection& c);

  // tcp_store_join.cc: the job's rules.
  void admit(std::uint64_t id, Connection& c, const handshake::Hello& hello);
  void refuse(Connection& c, handshake::Verdict verdict, int culprit, const std::string& message);
  void handle(std::uint64_t id, Connection& c, store_wire::Op op, std::string key,
              std::span<const std::byte> value);
  void handleSet(Connection& c, const std::string& key, std::span<const std::byte> value);
  void handleAdd(Connection& c, const std::string& key, std::span<const std::byte> value);
  // A rank left or its connection closed: waits for missing keys fail from now on.
  void rankGone(int culprit, const std::string& reason);
  std::string jobName() const;
  // Every rank has joined and the store has been quiet since: see tcp_store.h.
  bool running(Clock::time_point now) const;

  detail::UniqueFd listen_;
  detail::UniqueFd wakeRead_;
  detail::UniqueFd wakeWrite_;
  const std::string jobId_;
  const int worldSize_;
  const handshake::Key key_;
  const StoreServerOptions options_;

  std::uint64_t nextId_ = 0;
  std::map<std::uint64_t, Connection> conns_;
  std::set<std::uint64_t> pending_;  // connections that have not joined, oldest first
  std::unordered_map<std::string, Entry> data_;
  std::size_t storedBytes_ = 0;  // keys and values in data_
  std::unordered_map<std::string, std::vector<std::uint64_t>> waiters_;
  std::unordered_set<int> claimed_;  // ranks claimed so far; the join is done at worldSize_
  Clock::time_point lastRequest_{};  // of any joined rank: the job is starting up
  // Set once the join failed (a duplicate claim): every request fails with it.
  std::string joinFailure_;
  int joinFailureRank_ = -1;
  // Set once a rank is gone: waits for keys not yet set fail with it.
  std::string goneReason_;
  int goneRank_ = -1;
  Clock::time_point acceptPausedUntil_{};
  bool woke_ = false;               // a parked connection was answered and may have buffered input
  std::atomic<int> joinedOpen_{0};  // written by the loop only
};

}  // namespace skyring::bootstrap
