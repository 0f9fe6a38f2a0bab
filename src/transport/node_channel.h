// NodeChannel: the ranks of one node sharing memory, for collectives that skip the
// network stack inside a node.
//
// What it offers
//   - A control block per local rank in memory every local rank maps: an "arrived" and a
//     "finished" sequence number and, per call, a record of the call (signature and the
//     addresses of the caller's buffers). Records and slots are double-buffered by the
//     parity of the sequence number, so one synchronisation per call is enough for the
//     small-message path: a rank reuses parity p at call s+2 only after every peer has
//     arrived at s+1, i.e. after every peer finished reading what it published at s.
//   - Two slots of slotBytes() per local rank for small messages (copy in, everyone reads).
//   - Single-copy access to a peer's own buffers: read(peer, remote, ...) and write(...).
//     Between processes this is Linux cross-memory attach (process_vm_readv/writev); when
//     the kernel forbids it (ptrace policy, seccomp) singleCopy() is false and callers use
//     another algorithm. Between threads of one process (tests) it is memcpy.
//   - Waits that spin briefly, then yield, then sleep on a futex in the shared block, so
//     that with more ranks than cores a waiting rank gives its core to the one it waits
//     for. Every wait has a deadline, watches the group's abort flag, and checks that the
//     awaited processes are alive: a dead peer is a TransportError naming its rank.
//
// Ownership: the channel owns its mapping (or its share of the in-process block). The
// caller keeps buffers whose addresses it published alive until every peer finished.
//
// Thread-safety: one call at a time per channel (the Communicator uses it on tag 0 only).
// abort() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "skyring/error.h"
#include "skyring/transport.h"

namespace skyring::transport {

// What a rank publishes when it enters a call: enough to check that all ranks make the
// same call, and the addresses peers read from and write to.
struct NodeCall {
  std::uint32_t opcode = 0;
  std::uint32_t dtype = 0;
  std::uint32_t op = 0;
  std::uint32_t pad = 0;
  std::uint64_t count = 0;
  std::uint64_t input = 0;   // address of the caller's input buffer (its own address space)
  std::uint64_t output = 0;  // address of the caller's output buffer
};

class NodeChannel {
 public:
  struct Shared;  // the block all local ranks map (layout in node_channel.cc)

  // Monotonic per-rank counters in the shared block, each on its own cache line. arrived
  // and finished count calls; the pipeline counters carry (call << 32 | round + 1).
  enum class Counter : std::uint8_t { arrived, finished, copied, reduced, consumed };
  static constexpr std::size_t kCounters = 5;

  ~NodeChannel();
  NodeChannel(const NodeChannel&) = delete;
  NodeChannel& operator=(const NodeChannel&) = delete;

  // Ranks of processes on one node. worldRanks[i] is the group rank of local rank i (for
  // error messages); localRank indexes it. Every local rank calls this with the same
  // worldRanks; the first (localRank 0) creates the shared block, the others attach to the
  // name it publishes. exchange(mine) must return every local rank's bytes in local rank
  // order (an allgather restricted to the node). Throws TransportError when shared
  // memory cannot be set up.
  using Exchange = std::function<std::vector<std::vector<std::byte>>(std::span<const std::byte>)>;
  static std::unique_ptr<NodeChannel> openShared(int localRank, std::vector<int> worldRanks,
                                                 std::size_t slotBytes, const Exchange& exchange);

  // Threads of this process as ranks (tests): every channel(r) shares one block.
  class Local {
   public:
    // worldRanks: the group ranks of local ranks 0..size-1 (empty: 0..size-1), as a node
    // of a larger in-process world.
    Local(int size, std::size_t slotBytes, std::vector<int> worldRanks = {});
    ~Local();
    std::unique_ptr<NodeChannel> channel(int rank);

   private:
    std::shared_ptr<Shared> shared_;
    int size_;
    std::vector<int> worldRanks_;
  };

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  int worldRank(int local) const { return worldRanks_[static_cast<std::size_t>(local)]; }
  const std::vector<int>& worldRanks() const noexcept { return worldRanks_; }
  std::size_t slotBytes() const noexcept;
  bool singleCopy() const noexcept { return singleCopy_; }

  // Publishes this rank's record for call seq, then its arrival.
  void arrive(std::uint64_t seq, const NodeCall& call) noexcept;
  // Waits until every local rank arrived at seq (or later). Throws Timeout naming the
  // missing ranks, Aborted, or TransportError for a dead one.
  void waitArrived(std::uint64_t seq, Clock::time_point deadline, const char* op);
  // The record local rank `peer` published for seq; valid after waitArrived(seq).
  const NodeCall& call(int peer, std::uint64_t seq) const noexcept;
  // Announces that this rank is done touching peers' buffers for seq.
  void finish(std::uint64_t seq) noexcept;
  void waitFinished(std::uint64_t seq, Clock::time_point deadline, const char* op);
  // Sets this rank's counter (values only grow) and wakes sleepers.
  void post(Counter counter, std::uint64_t value) noexcept;
  // Waits until every other local rank's counter reached value; fails like waitArrived.
  void waitAll(Counter counter, std::uint64_t value, Clock::time_point deadline, const char* op);

  // Slot of `peer` for seq (slotBytes() long).
  std::span<std::byte> slot(int peer, std::uint64_t seq) const noexcept;
  // Both slots of `peer` as one region (2 x slotBytes()), for algorithms that end with a
  // synchronisation after which nobody reads it (so the parity rule does not apply).
  std::span<std::byte> region(int peer) const noexcept;

  // Copies between this rank's memory and a peer's own buffers (addresses it published).
  void read(int peer, std::uint64_t remote, void* local, std::size_t bytes, const char* op);
  void write(int peer, std::uint64_t remote, const void* local, std::size_t bytes, const char* op);

  // Fails every current and later wait of every local rank with this reason. The first
  // reason wins; never throws.
  void abort(ErrorKind kind, const std::string& reason) noexcept;
  // Throws the group's abort reason if there is one.
  void throwIfAborted(const char* op) const;

 private:
  NodeChannel(std::shared_ptr<Shared> shared, int rank, std::vector<int> worldRanks,
              std::vector<int> pids, bool singleCopy);
  void ring() noexcept;
  void transfer(int peer, std::uint64_t remote, std::byte* local, std::size_t bytes, bool toPeer,
                const char* op);
  ErrorContext context(int peer, const char* op) const;

  std::shared_ptr<Shared> shared_;
  int rank_;
  int size_;
  std::vector<int> worldRanks_;
  std::vector<int> pids_;  // 0 for ranks in this process
  bool singleCopy_;
  bool oversubscribed_ = false;  // more local ranks than cores this process may run on
};

}  // namespace skyring::transport
