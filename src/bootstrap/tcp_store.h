// A small TCP key-value store for bootstrapping without MPI (torchrun-style launch):
// rank 0 hosts a TcpStoreServer at MASTER_ADDR:MASTER_PORT and every rank, rank 0
// included, talks to it through a TcpStoreClient. Ranks exchange a few bytes each
// (worker addresses, hostnames) with allgather() and line up with barrier().
//
// Keys are never deleted: the store lives only for the bootstrap and holds a few bytes
// per rank and exchange. Each exchange therefore uses a fresh key prefix.
//
// Who may talk to it. MASTER_PORT is reachable by other jobs and, beyond loopback, by
// other hosts, so every connection proves before any request that it belongs to this
// job, and the server proves the same to the client:
//   - the job identity is (job id, world size); the job id is SKYRING_JOB_ID or the
//     launcher's (Config::jobId()), and may be empty;
//   - key = HMAC-SHA256(SKYRING_JOB_TOKEN, "skyring store key v2") when the job has a
//     token (a secret: a process without it can neither read nor write), else
//     SHA-256("skyring store job id v2" | job id), which is NOT a secret: it only keeps
//     jobs apart;
//   - each connection claims one rank; a rank is claimed once per job. A second claim
//     during start-up (two launches on one port, a repeated RANK) fails the whole join:
//     without distinct job ids two identical launches cannot be told apart, and the
//     first N distinct claims may well come from both, so every rank must fail rather
//     than some forming a mixed group. Start-up lasts until every rank has joined and
//     the store has then been quiet (no request, no get waiting) for kStartupQuiet:
//     after that the job is running (it uses the store again only for its goodbye) and
//     a late claim is refused without touching it;
//   - a connection may replace only keys it set itself, and a get reports which rank
//     set the value, so allgather() accepts rank r's record only from rank r.
//
// Wire protocol, version 2 (integers unsigned big-endian unless noted).
//
// Join (store_handshake.h encodes it), before any request:
//   challenge (server): magic "SKYRSTOR" | u32 version | 32-byte nonce S (getrandom)
//   hello (client):     magic | u32 version | u16 n | job id (n bytes) | u32 worldSize
//                       | u32 rank | 32-byte nonce C
//                       | HMAC(key, "skyring store client v2" | S | C | n | job id
//                              | worldSize | rank)
//   welcome (server):   u8 verdict | i32 culprit rank | u16 n | the store's job id
//                       | u32 the store's worldSize | u16 m | message (m bytes)
//                       | HMAC(key, "skyring store server v2" | C | S | n | job id
//                              | worldSize | rank)   (zeros unless the verdict is ok)
//   verdicts: 0 ok, 1 another job, 2 another world size, 3 wrong proof (another token),
//   4 rank already claimed during start-up (the join has failed), 5 rank already claimed
//   by a running job (refused), 6 the join failed earlier (message: why). Proofs are
//   compared in constant time. The client checks the server's proof, so it never trusts
//   a fake store.
//
// Requests, one at a time per connection (the client reads each response first):
//   request:  u8 op | u32 keyLength | key bytes | u32 valueLength | value bytes
//   response: u8 status | i32 rank | u32 valueLength | value bytes
//
//   op 1 set: stores value under key (replacing the old value if this rank set it);
//             wakes parked gets. Response: ok, empty.
//   op 2 get: value is a u64 wait in milliseconds. If key exists the response is ok
//             with its value and, in rank, the rank that set it (-1 for a counter);
//             otherwise the server parks the request and answers when the key is set or
//             the wait has passed (timeout, empty).
//   op 3 add: value is an i64 delta (two's complement). The key holds an i64 counter
//             (8 bytes, same encoding; a missing key counts as 0) that no rank owns; the
//             response is ok with the new counter value. Wakes parked gets like set.
//   op 4 leave: value is an i32 culprit rank (-1: none) and a reason. This rank gives
//             up (the job failed); it is treated as gone (below). Response: ok.
//   status 0 ok, 1 timeout, 2 error (the request was refused; value: why, e.g. "key is
//   not a counter"), 3 failed (the join failed or a rank is gone; value: why, rank: the
//   rank at fault or -1).
//
// Failing fast. When a rank's connection closes, or it leaves, before the job is done,
// every parked and later get of a missing key fails (status failed, naming that rank):
// the key may be one only that rank would have set. (A rank closes its connection only
// after the goodbye barrier, whose keys all exist by then, or when it has failed.) When
// the join has failed (a duplicate claim), every request of every rank fails likewise.
//
// Limits (store_wire below; errors name them): keys of kMaxKeyBytes, values of
// kMaxValueBytes, kMaxStoredBytes in all, job ids of kMaxJobIdBytes. A connection that
// has not completed its join within kHandshakeTimeout is dropped, and so is the oldest
// of them when kMaxPendingConnections are waiting (a joined rank is never dropped for
// room); a request that has begun must arrive whole within kRequestTimeout (slow
// clients). The server drops a connection that sends anything malformed (unknown op, an
// oversized length, a get/add value that is not 8 bytes) and keeps serving everyone
// else; it never dies of a client. Requests that arrive behind a parked get are served,
// in order, once it is answered.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace skyring::bootstrap {

namespace store_wire {
enum class Op : std::uint8_t { set = 1, get = 2, add = 3, leave = 4 };
enum class Status : std::uint8_t { ok = 0, timeout = 1, error = 2, failed = 3 };
inline constexpr std::size_t kMaxKeyBytes = 4096;
// Worker addresses and topology records are a few KiB at most.
inline constexpr std::size_t kMaxValueBytes = std::size_t{1} << 20;
inline constexpr std::size_t kMaxStoredBytes = std::size_t{256} << 20;
inline constexpr std::size_t kMaxJobIdBytes = 1024;
inline constexpr std::size_t kMaxPendingConnections = 256;
inline constexpr std::chrono::milliseconds kHandshakeTimeout{5000};
inline constexpr std::chrono::milliseconds kRequestTimeout{30000};
inline constexpr std::chrono::milliseconds kStartupQuiet{2000};
inline constexpr std::size_t kRequestHeaderBytes = 1 + 4;  // op, keyLength
inline constexpr std::size_t kResponseHeaderBytes = 1 + 4 + 4;
}  // namespace store_wire

// Who a store serves and a client belongs to. The token is only ever used as an HMAC key:
// never logged nor sent.
struct StoreIdentity {
  std::string jobId;  // may be empty: the job is then known by its port and world size
  int worldSize = 1;
  std::string token;  // the job's secret; empty: none
};

// The server's limits; the defaults are store_wire's (tests shorten the waits).
struct StoreServerOptions {
  std::chrono::milliseconds handshakeTimeout = store_wire::kHandshakeTimeout;
  std::chrono::milliseconds requestTimeout = store_wire::kRequestTimeout;
  std::chrono::milliseconds startupQuiet = store_wire::kStartupQuiet;
  std::size_t maxPendingConnections = store_wire::kMaxPendingConnections;
  std::size_t maxStoredBytes = store_wire::kMaxStoredBytes;
};

// Serves the store from one background thread that poll()s the listening socket and
// every client connection, so any number of clients may be connected and parked in
// get() at once.
//
// Ownership and threading: the server owns its socket, its thread and the data. port()
// may be called from any thread. The destructor stops the thread and closes every
// connection; clients still waiting then fail with TransportError. If the serving
// thread itself fails, it closes every connection the same way, so no client is left
// hanging; memory is bounded by the limits above, and running short of memory or file
// descriptors costs a connection that has not joined, never the server.
class TcpStoreServer {
 public:
  // Listens on bindAddr (a numeric IPv4/IPv6 address or a hostname, bound to the first
  // of its addresses that is one of this host's; "0.0.0.0" for every IPv4 interface) and
  // port (0: an ephemeral port, see port()), for the job `identity` names. SO_REUSEADDR
  // is set so a restarted job can reuse MASTER_PORT at once. Throws InvalidArgument for a
  // port outside [0, 65535], a world size < 1, a job id longer than kMaxJobIdBytes, or a
  // bindAddr none of whose addresses belongs to this host; TransportError if the address
  // cannot be resolved or bound (port in use).
  TcpStoreServer(const std::string& bindAddr, int port, const StoreIdentity& identity,
                 const StoreServerOptions& options = {});
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  // Waits until no joined client is connected any more, or `bound` has passed (false).
  // Rank 0 calls this before it closes the store when it leaves without a goodbye, so that
  // ranks still reading the last exchange (all of which reach the same verdict and leave)
  // can finish instead of finding the store gone.
  bool lingerUntilAlone(std::chrono::milliseconds bound) const noexcept;

  // The port actually bound.
  int port() const noexcept { return port_; }

 private:
  class Loop;  // the serving thread's state, defined in tcp_store_server.cc
  int port_ = 0;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

// A key's value and the rank that set it (-1: a counter, which no rank owns).
struct StoreEntry {
  std::vector<std::byte> value;
  int writer = -1;
};

// One connection to a TcpStoreServer, joined as one rank of one job.
//
// Every call waits at most `timeout` (from the constructor) and throws Timeout beyond
// it; a closed or reset connection throws TransportError, as do all later calls once
// the connection has failed (the client never reconnects). A Timeout from get() for a
// missing key leaves the connection usable; any other failure closes it. When the store
// reports that the join failed or that a rank is gone, the call throws TransportError
// whose peer is the rank at fault.
//
// Thread-safety: calls may come from several threads; they are served one at a time,
// in turn, so a thread parked in get() delays the others' calls (within their own
// timeout). A rank has one connection (a second would be a second claim on the rank).
class TcpStoreClient {
 public:
  // Connects to host:port (IPv4/IPv6 address or hostname, resolved with getaddrinfo) and
  // joins as `rank` of the job `identity` names, retrying refused connections,
  // unresolvable names and connections the server dropped before answering until
  // `timeout` has passed, as the server may start after its clients. Throws Timeout
  // naming host:port and the last error; InvalidArgument for a port outside [1, 65535],
  // a timeout <= 0, a rank outside [0, worldSize) or a job id over kMaxJobIdBytes;
  // TransportError when the store refuses the join (another job, another world size, a
  // different token, the rank claimed twice, all ranks joined already, the join failed)
  // or is not a skyring store of this job (it fails the handshake or its proof).
  TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout,
                 const StoreIdentity& identity, int rank);
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  // Stores a copy of value under key, replacing any previous value this rank set. Throws
  // InvalidArgument for a key or value over the protocol limits; TransportError when the
  // store refuses (another rank set key, key is a counter, the store is full).
  void set(const std::string& key, std::span<const std::byte> value);
  // Returns key's value, waiting until some client sets it. Throws Timeout naming the
  // key if it is not set within the timeout (checked by the server, so the wait does
  // not poll); TransportError naming the rank if a rank is gone before it was set.
  std::vector<std::byte> get(const std::string& key);
  // get(), and which rank set the value.
  StoreEntry getEntry(const std::string& key);
  // Adds delta to the counter under key (created as 0) atomically across all clients
  // and returns the new value. Throws InvalidArgument if key holds a value that set()
  // stored, or on overflow.
  std::int64_t add(const std::string& key, std::int64_t delta);
  // This rank gives up (the job failed): the store fails every rank's wait for a missing
  // key at once with `reason`, naming `culprit` (-1: none), instead of letting them wait
  // for this rank. Best effort, bounded by a second; the connection is closed after.
  void leave(int culprit, std::string_view reason) noexcept;
  // After the last exchange (the ranks' goodbye): waits until the server closes this
  // connection, i.e. until rank 0's store has stopped serving, or until the deadline.
  // A process that init()s again at once must not join the old store, which still holds
  // this rank's claim (the join would fail as a duplicate claim). Returns whether the
  // server closed it in time.
  bool awaitServerClose(std::chrono::steady_clock::time_point deadline) noexcept;

  int rank() const noexcept { return rank_; }
  int worldSize() const noexcept { return worldSize_; }
  // "host:port", for messages.
  const std::string& endpoint() const noexcept { return endpoint_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Response;
  Response request(store_wire::Op op, const std::string& key, std::span<const std::byte> value,
                   Clock::time_point replyDeadline, const char* opName);
  // One connection attempt's join; fd_ is connected. Returns false (with `error` set)
  // when the server dropped the connection before answering, so it is worth retrying.
  bool join(const StoreIdentity& identity, Clock::time_point deadline, std::string& error);
  void closeConnection() noexcept;

  std::string endpoint_;
  std::chrono::milliseconds timeout_;
  int rank_;
  int worldSize_;
  // One request on the connection at a time: a call waits (until its deadline) for
  // busy_ to clear, then owns fd_ and failure_ until it clears busy_ again. (Not a
  // timed_mutex: ThreadSanitizer misreads its clock-based lock.)
  std::mutex mu_;
  std::condition_variable turnFree_;
  bool busy_ = false;    // guarded by mu_
  int fd_ = -1;          // owned by the busy call; -1 once the connection failed
  std::string failure_;  // owned by the busy call; why the connection was closed
};

// Every rank's bytes, indexed by rank, for the client.worldSize() ranks that call this
// with the same prefix (a fresh prefix per exchange, e.g. "ucx-addr/"). Sizes may differ
// between ranks. Stores mine under prefix + rank and reads the other keys, accepting
// rank r's record only if rank r's connection set it. Throws Timeout naming the missing
// rank if one does not contribute within the client's timeout, TransportError if the
// store fails, a rank is gone, or a record was set by another rank than its own.
std::vector<std::vector<std::byte>> allgather(TcpStoreClient& client, const std::string& prefix,
                                              std::span<const std::byte> mine);

// Returns once all ranks have called barrier with this prefix (a fresh prefix per
// barrier, e.g. "barrier/3/"). Throws like allgather; a Timeout says how many ranks had
// arrived.
void barrier(TcpStoreClient& client, const std::string& prefix);

}  // namespace skyring::bootstrap
