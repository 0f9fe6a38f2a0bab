#include "transport/node_channel.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <cstdint>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <new>
#include <random>
#include <sstream>

namespace skyring::transport {

// Layout of the shared block: a header, one RankBlock per local rank, then two slots of
// slotBytes per local rank. Each field written by one rank and polled by the others sits
// on its own cache line so polling does not slow the writer.
namespace {

constexpr std::uint64_t kMagic = 0x736b7972696e6701ull;  // "skyring" + layout version 1
constexpr std::size_t kLine = 64;
constexpr std::size_t kReasonBytes = 448;

struct alignas(kLine) Header {
  std::uint64_t magic;
  std::uint64_t size;
  std::uint64_t slotBytes;
  alignas(kLine) std::atomic<std::uint32_t> abortState;  // 0 none, 1 being written, 2 set
  std::uint32_t abortKind;
  char reason[kReasonBytes];
  alignas(kLine) std::atomic<std::uint32_t> bell;      // futex word: bumped on every event
  alignas(kLine) std::atomic<std::uint32_t> sleepers;  // ranks asleep on bell
};

struct alignas(kLine) Counter {
  std::atomic<std::uint64_t> value;
};

struct alignas(kLine) RankBlock {
  Counter counters[NodeChannel::kCounters];  // indexed by NodeChannel::Counter
  alignas(kLine) NodeCall calls[2];
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

std::size_t roundUp(std::size_t n, std::size_t to) {
  return (n + to - 1) / to * to;
}

std::size_t blockBytes(int size, std::size_t slotBytes) {
  return sizeof(Header) + static_cast<std::size_t>(size) * sizeof(RankBlock) +
         static_cast<std::size_t>(size) * 2 * slotBytes;
}

void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t value,
           const struct timespec* timeout) {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, timeout, nullptr,
                   0);
}

// False once the process is gone or a zombie (killed but not yet reaped by its launcher).
bool processAlive(int pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;  // no /proc: trust kill()
  const auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return true;
  const char state = line[close + 2];
  return state != 'Z' && state != 'X';
}

}  // namespace

// The mapping (or, in process, the allocation) of the block, shared by the channels of
// this process that use it.
struct NodeChannel::Shared {
  std::byte* base = nullptr;
  std::size_t bytes = 0;
  bool mapped = false;
  std::vector<std::byte> heap;  // in-process block (aligned by hand below)

  ~Shared() {
    if (mapped && base != nullptr) ::munmap(base, bytes);
  }
  Header& header() const { return *reinterpret_cast<Header*>(base); }
  RankBlock& rank(int r) const { return reinterpret_cast<RankBlock*>(base + sizeof(Header))[r]; }
  std::byte* slots() const { return base + sizeof(Header) + header().size * sizeof(RankBlock); }
  void initialise(int size, std::size_t slotBytes) {
    auto* h = new (base) Header{};
    h->magic = kMagic;
    h->size = static_cast<std::uint64_t>(size);
    h->slotBytes = slotBytes;
    for (int r = 0; r < size; ++r)
      new (&rank(r)) RankBlock{};
  }
};

NodeChannel::NodeChannel(std::shared_ptr<Shared> shared, int rank, std::vector<int> worldRanks,
                         std::vector<int> pids, bool singleCopy)
    : shared_(std::move(shared)),
      rank_(rank),
      size_(static_cast<int>(worldRanks.size())),
      worldRanks_(std::move(worldRanks)),
      pids_(std::move(pids)),
      singleCopy_(singleCopy) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cpus = ::sched_getaffinity(0, sizeof(set), &set) == 0
                       ? CPU_COUNT(&set)
                       : static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  oversubscribed_ = size_ > std::max(cpus, 1);
}

NodeChannel::~NodeChannel() = default;

std::size_t NodeChannel::slotBytes() const noexcept {
  return shared_->header().slotBytes;
}

// ---- setup ----------------------------------------------------------------------------

NodeChannel::Local::Local(int size, std::size_t slotBytes, std::vector<int> worldRanks)
    : shared_(std::make_shared<Shared>()), size_(size), worldRanks_(std::move(worldRanks)) {
  if (worldRanks_.empty()) {
    for (int r = 0; r < size; ++r)
      worldRanks_.push_back(r);
  }
  slotBytes = roundUp(std::max<std::size_t>(slotBytes, kLine), kLine);
  const std::size_t bytes = blockBytes(size, slotBytes);
  shared_->heap.resize(bytes + kLine);
  auto addr = reinterpret_cast<std::uintptr_t>(shared_->heap.data());
  shared_->base = reinterpret_cast<std::byte*>(roundUp(addr, kLine));
  shared_->bytes = bytes;
  shared_->initialise(size, slotBytes);
}

NodeChannel::Local::~Local() = default;

std::unique_ptr<NodeChannel> NodeChannel::Local::channel(int rank) {
  return std::unique_ptr<NodeChannel>(new NodeChannel(
      shared_, rank, worldRanks_, std::vector<int>(static_cast<std::size_t>(size_), 0), true));
}

namespace {

// What each local rank tells the others at setup.
struct Hello {
  char name[64];  // shared memory object name (leader only)
  std::int32_t pid;
  std::uint64_t probeAddr;  // address of a word peers read to test cross-memory attach
};

std::vector<Hello> exchangeHello(const NodeChannel::Exchange& exchange, const Hello& mine) {
  const auto all = exchange(std::as_bytes(std::span(&mine, 1)));
  std::vector<Hello> out(all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    SKYRING_CHECK(all[i].size() == sizeof(Hello), TransportError, {}, "node channel setup: local ",
                  "rank ", i, " sent ", all[i].size(), " bytes, expected ", sizeof(Hello));
    std::memcpy(&out[i], all[i].data(), sizeof(Hello));
  }
  return out;
}

std::string uniqueName() {
  std::random_device rd;
  std::ostringstream os;
  os << "/skyring-" << ::getpid() << "-" << std::hex << rd() << rd();
  return os.str();
}

}  // namespace

std::unique_ptr<NodeChannel> NodeChannel::openShared(int localRank, std::vector<int> worldRanks,
                                                     std::size_t slotBytes,
                                                     const Exchange& exchange) {
  const int size = static_cast<int>(worldRanks.size());
  const ErrorContext ctx{localRank < size ? worldRanks[static_cast<std::size_t>(localRank)] : -1,
                         -1, "node channel setup"};
  slotBytes = roundUp(std::max<std::size_t>(slotBytes, kLine), kLine);
  const std::size_t bytes = blockBytes(size, slotBytes);
  auto shared = std::make_shared<Shared>();
  shared->bytes = bytes;

  // Leader: create, size and initialise the block before anyone learns its name.
  Hello mine{};
  mine.pid = static_cast<std::int32_t>(::getpid());
  const std::uint64_t probe = kMagic ^ static_cast<std::uint64_t>(mine.pid);
  mine.probeAddr = reinterpret_cast<std::uint64_t>(&probe);
  std::string name;
  std::string error;
  if (localRank == 0) {
    name = uniqueName();
    const int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      error = std::string("shm_open: ") + std::strerror(errno);
    } else {
      if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
        error = std::string("ftruncate: ") + std::strerror(errno);
      } else {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
          error = std::string("mmap: ") + std::strerror(errno);
        } else {
          shared->base = static_cast<std::byte*>(p);
          shared->mapped = true;
          shared->initialise(size, slotBytes);
        }
      }
      ::close(fd);
    }
    if (error.empty()) std::snprintf(mine.name, sizeof(mine.name), "%s", name.c_str());
  }
  // The leader's name leaves /dev/shm on every way out: after everyone attached, or when
  // anything below throws (a peer that died or timed out in an exchange, a failed attach).
  struct Unlink {
    std::string name;
    ~Unlink() {
      if (!name.empty()) ::shm_unlink(name.c_str());
    }
  } unlink{localRank == 0 && error.empty() ? name : std::string()};
  const auto hellos = exchangeHello(exchange, mine);
  const std::string leaderName = hellos[0].name;
  if (leaderName.empty()) {
    SKYRING_THROW(TransportError, ctx, "the node's first rank could not create shared memory",
                  error.empty() ? "" : ": ", error);
  }

  // Others: attach.
  if (localRank != 0) {
    const int fd = ::shm_open(leaderName.c_str(), O_RDWR, 0600);
    struct stat st {};
    if (fd < 0) {
      error = std::string("shm_open(") + leaderName + "): " + std::strerror(errno);
    } else if (::fstat(fd, &st) != 0 || static_cast<std::size_t>(st.st_size) != bytes) {
      // Mapping a block of another size would read past its end (SIGBUS) or misplace
      // every slot: the ranks disagree on its layout (SKYRING_SHM_* settings).
      ::close(fd);
      error = "the node's shared block has " + std::to_string(st.st_size) +
              " bytes where this rank's settings make " + std::to_string(bytes) +
              " (SKYRING_SHM_SLOT_BYTES / SKYRING_SHM_RING_BYTES differ between ranks?)";
    } else {
      void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      ::close(fd);
      if (p == MAP_FAILED) {
        error = std::string("mmap: ") + std::strerror(errno);
      } else {
        shared->base = static_cast<std::byte*>(p);
        shared->mapped = true;
        if (shared->header().magic != kMagic || shared->header().size != std::uint64_t(size) ||
            shared->header().slotBytes != slotBytes)
          error = "shared block has another layout or size";
      }
    }
  }

  // Test cross-memory attach on every peer while their probes are alive, and tell everyone
  // whether this rank could attach and read.
  std::vector<int> pids(static_cast<std::size_t>(size));
  bool cmaOk = true;
  for (int p = 0; p < size; ++p) {
    pids[static_cast<std::size_t>(p)] = hellos[static_cast<std::size_t>(p)].pid;
    if (p == localRank) continue;
    std::uint64_t got = 0;
    iovec local{&got, sizeof(got)};
    iovec remote{reinterpret_cast<void*>(hellos[static_cast<std::size_t>(p)].probeAddr),
                 sizeof(got)};
    const auto n =
        ::process_vm_readv(hellos[static_cast<std::size_t>(p)].pid, &local, 1, &remote, 1, 0);
    if (n != static_cast<ssize_t>(sizeof(got)) ||
        got != (kMagic ^ static_cast<std::uint64_t>(hellos[static_cast<std::size_t>(p)].pid)))
      cmaOk = false;
  }
  Hello status{};
  status.pid = error.empty() ? (cmaOk ? 2 : 1) : 0;  // 0 failed, 1 attached, 2 attached + CMA
  if (!error.empty()) std::snprintf(status.name, sizeof(status.name), "%s", error.c_str());
  const auto statuses = exchangeHello(exchange, status);
  bool singleCopy = true;
  for (int p = 0; p < size; ++p) {
    const auto& s = statuses[static_cast<std::size_t>(p)];
    SKYRING_CHECK(s.pid != 0, TransportError, ctx, "local rank ", p, " (rank ",
                  worldRanks[static_cast<std::size_t>(p)],
                  ") could not attach the node's shared memory: ", s.name);
    singleCopy = singleCopy && s.pid == 2;
  }
  return std::unique_ptr<NodeChannel>(new NodeChannel(
      std::move(shared), localRank, std::move(worldRanks), std::move(pids), singleCopy));
}

// ---- calls ----------------------------------------------------------------------------

ErrorContext NodeChannel::context(int peer, const char* op) const {
  return ErrorContext{worldRank(rank_), peer < 0 ? -1 : worldRank(peer), op};
}

// Publisher and sleeper form a store-buffer (Dekker) pattern: the publisher stores its
// counter then reads sleepers; a sleeper bumps sleepers then reads the counters. With all
// four accesses seq_cst at least one side sees the other, so no wake-up is lost. (On x86
// the seq_cst store is the only fence; the loads are plain.)
void NodeChannel::ring() noexcept {
  Header& h = shared_->header();
  if (h.sleepers.load(std::memory_order_seq_cst) == 0) return;
  h.bell.fetch_add(1, std::memory_order_seq_cst);
  futex(&h.bell, FUTEX_WAKE, INT_MAX, nullptr);
}

void NodeChannel::arrive(std::uint64_t seq, const NodeCall& call) noexcept {
  RankBlock& me = shared_->rank(rank_);
  me.calls[seq & 1] = call;
  post(Counter::arrived, seq);
}

void NodeChannel::finish(std::uint64_t seq) noexcept {
  post(Counter::finished, seq);
}

void NodeChannel::post(Counter counter, std::uint64_t value) noexcept {
  shared_->rank(rank_).counters[static_cast<std::size_t>(counter)].value.store(
      value, std::memory_order_seq_cst);
  ring();
}

const NodeCall& NodeChannel::call(int peer, std::uint64_t seq) const noexcept {
  return shared_->rank(peer).calls[seq & 1];
}

std::span<std::byte> NodeChannel::slot(int peer, std::uint64_t seq) const noexcept {
  const std::size_t bytes = slotBytes();
  return {shared_->slots() + (static_cast<std::size_t>(peer) * 2 + (seq & 1)) * bytes, bytes};
}

std::span<std::byte> NodeChannel::region(int peer) const noexcept {
  return {slot(peer, 0).data(), 2 * slotBytes()};
}

void NodeChannel::waitArrived(std::uint64_t seq, Clock::time_point deadline, const char* op) {
  waitAll(Counter::arrived, seq, deadline, op);
}

void NodeChannel::waitFinished(std::uint64_t seq, Clock::time_point deadline, const char* op) {
  waitAll(Counter::finished, seq, deadline, op);
}

// Spin a little (a peer on another core answers within a microsecond), then yield (with
// more ranks than cores the peer needs this core), then sleep on the futex, waking to
// check the deadline, the abort flag and the peers' processes.
void NodeChannel::waitAll(Counter counter, std::uint64_t value, Clock::time_point deadline,
                          const char* op) {
  const auto index = static_cast<std::size_t>(counter);
  auto ready = [&](int p) {
    return shared_->rank(p).counters[index].value.load(std::memory_order_seq_cst) >= value;
  };
  auto allReady = [&] {
    for (int p = 0; p < size_; ++p)
      if (p != rank_ && !ready(p)) return false;
    return true;
  };
  // Spinning only pays when every rank has a core of its own; otherwise it steals the
  // core of the rank being waited for.
  const int spins = oversubscribed_ ? 0 : 4000;
  for (int i = 0; i < spins; ++i) {
    if (allReady()) return;
    cpuRelax();
  }
  throwIfAborted(op);
  const auto yieldUntil = Clock::now() + std::chrono::microseconds(200);
  while (Clock::now() < yieldUntil) {
    if (allReady()) return;
    ::sched_yield();
  }

  Header& h = shared_->header();
  h.sleepers.fetch_add(1, std::memory_order_seq_cst);
  struct Awake {
    Header& h;
    ~Awake() { h.sleepers.fetch_sub(1, std::memory_order_seq_cst); }
  } awake{h};
  auto nextCheck = Clock::now() + std::chrono::milliseconds(100);
  for (;;) {
    const std::uint32_t bell = h.bell.load(std::memory_order_seq_cst);
    if (allReady()) return;
    throwIfAborted(op);
    const auto now = Clock::now();
    if (now >= nextCheck || now >= deadline) {
      nextCheck = now + std::chrono::milliseconds(100);
      std::vector<int> dead;
      std::vector<int> missing;
      for (int p = 0; p < size_; ++p) {
        if (p == rank_ || ready(p)) continue;
        missing.push_back(p);
        if (pids_[static_cast<std::size_t>(p)] != 0 &&
            !processAlive(pids_[static_cast<std::size_t>(p)]))
          dead.push_back(p);
      }
      if (!dead.empty()) {
        SKYRING_THROW(TransportError, context(dead.front(), op), "rank ", worldRank(dead.front()),
                      " (pid ", pids_[static_cast<std::size_t>(dead.front())],
                      ") died: its process is gone");
      }
      if (now >= deadline) {
        std::ostringstream os;
        for (std::size_t i = 0; i < missing.size(); ++i)
          os << (i ? ", " : "") << worldRank(missing[i]);
        SKYRING_THROW(
            Timeout, context(missing.size() == 1 ? missing.front() : -1, op), "rank",
            missing.size() > 1 ? "s " : " ", os.str(), " did not ",
            counter == Counter::arrived ? "arrive at" : "progress in", " node call #",
            counter == Counter::arrived || counter == Counter::finished ? value : value >> 32,
            " within the timeout");
      }
    }
    const auto until = std::min({deadline, nextCheck, now + std::chrono::milliseconds(10)});
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(until - now).count();
    struct timespec ts {
      static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)
    };
    futex(&h.bell, FUTEX_WAIT, bell, &ts);
  }
}

void NodeChannel::read(int peer, std::uint64_t remote, void* local, std::size_t bytes,
                       const char* op) {
  transfer(peer, remote, static_cast<std::byte*>(local), bytes, false, op);
}

void NodeChannel::write(int peer, std::uint64_t remote, const void* local, std::size_t bytes,
                        const char* op) {
  transfer(peer, remote, const_cast<std::byte*>(static_cast<const std::byte*>(local)), bytes, true,
           op);
}

// One copy between this rank's memory and a peer's: memcpy within this process, else
// cross-memory attach, which may move fewer bytes than asked and is then called again.
void NodeChannel::transfer(int peer, std::uint64_t remote, std::byte* local, std::size_t bytes,
                           bool toPeer, const char* op) {
  const int pid = pids_[static_cast<std::size_t>(peer)];
  if (pid == 0) {
    auto* theirs = reinterpret_cast<std::byte*>(remote);
    std::memcpy(toPeer ? theirs : local, toPeer ? local : theirs, bytes);
    return;
  }
  while (bytes > 0) {
    iovec l{local, bytes};
    iovec r{reinterpret_cast<void*>(remote), bytes};
    const ssize_t n = toPeer ? ::process_vm_writev(pid, &l, 1, &r, 1, 0)
                             : ::process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n <= 0) {
      SKYRING_THROW(TransportError, context(peer, op), toPeer ? "writing " : "reading ", bytes,
                    toPeer ? " bytes to rank " : " bytes from rank ", worldRank(peer),
                    " failed: ", n < 0 ? std::strerror(errno) : "no progress",
                    n < 0 && errno == ESRCH ? " (its process is gone)" : "");
    }
    local += n;
    remote += static_cast<std::uint64_t>(n);
    bytes -= static_cast<std::size_t>(n);
  }
}

void NodeChannel::abort(ErrorKind kind, const std::string& reason) noexcept {
  Header& h = shared_->header();
  std::uint32_t expected = 0;
  if (h.abortState.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    h.abortKind = static_cast<std::uint32_t>(kind);
    std::snprintf(h.reason, sizeof(h.reason), "%s", reason.c_str());
    h.abortState.store(2, std::memory_order_release);
  }
  h.bell.fetch_add(1, std::memory_order_seq_cst);
  futex(&h.bell, FUTEX_WAKE, INT_MAX, nullptr);
}

void NodeChannel::throwIfAborted(const char* op) const {
  const Header& h = shared_->header();
  if (h.abortState.load(std::memory_order_acquire) != 2) return;
  throwError(static_cast<ErrorKind>(h.abortKind), h.reason, context(-1, op));
}

}  // namespace skyring::transport
