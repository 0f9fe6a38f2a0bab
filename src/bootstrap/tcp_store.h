// A small TCP key-value store for bootstrapping without MPI (torchrun-style launch):
// rank 0 hosts a TcpStoreServer at MASTER_ADDR:MASTER_PORT and every rank, rank 0
// included, talks to it through a TcpStoreClient. Ranks exchange a few bytes each
// (worker addresses, hostnames) with allgather() and line up with barrier().
//
// Keys are never deleted: the store lives only for the bootstrap and holds a few bytes
// per rank and exchange. Each exchange therefore uses a fresh key prefix.
//
// Wire protocol (all integers unsigned big-endian unless noted). One connection per
// client; the client sends one request and reads its one response before the next.
//
//   request:  u8 op | u32 keyLength | key bytes | u32 valueLength | value bytes
//   response: u8 status | u32 valueLength | value bytes
//
//   op 1 set: stores value under key (replacing any old value); wakes parked gets.
//             Response: ok, empty.
//   op 2 get: value is a u64 wait in milliseconds. If key exists the response is ok
//             with its value; otherwise the server parks the request and answers when
//             the key is set (ok + value) or the wait has passed (timeout, empty).
//   op 3 add: value is an i64 delta (two's complement). The key holds an i64 counter
//             (8 bytes, same encoding; a missing key counts as 0); the response is ok
//             with the new counter value. Wakes parked gets like set.
//   status 0 ok, 1 timeout, 2 error (value: a message, e.g. "key is not a counter").
//
// Keys are at most kMaxKeyBytes and values at most kMaxValueBytes long. The server
// drops a connection that sends an unknown op, an oversized length or a get/add value
// that is not 8 bytes, and keeps serving everyone else. Requests that arrive behind a
// parked get are served, in order, once it is answered.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace skyring::bootstrap {

namespace store_wire {
enum class Op : std::uint8_t { set = 1, get = 2, add = 3 };
enum class Status : std::uint8_t { ok = 0, timeout = 1, error = 2 };
inline constexpr std::size_t kMaxKeyBytes = 4096;
inline constexpr std::size_t kMaxValueBytes = std::size_t{64} << 20;
inline constexpr std::size_t kRequestHeaderBytes = 1 + 4;  // op, keyLength
inline constexpr std::size_t kResponseHeaderBytes = 1 + 4;
}  // namespace store_wire

// Serves the store from one background thread that poll()s the listening socket and
// every client connection, so any number of clients may be connected and parked in
// get() at once.
//
// Ownership and threading: the server owns its socket, its thread and the data. port()
// may be called from any thread. The destructor stops the thread and closes every
// connection; clients still waiting then fail with TransportError. If the serving
// thread itself fails (out of memory), it closes every connection the same way, so no
// client is left hanging.
class TcpStoreServer {
 public:
  // Listens on bindAddr (numeric IPv4/IPv6 address or hostname; "0.0.0.0" for every
  // IPv4 interface, "" for every interface) and port (0: an ephemeral port, see port()).
  // SO_REUSEADDR is set so a restarted job can reuse MASTER_PORT at once. Throws InvalidArgument
  // for a port outside [0, 65535] and TransportError if the address cannot be resolved or bound
  // (port in use).
  TcpStoreServer(const std::string& bindAddr, int port);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  // The port actually bound.
  int port() const noexcept { return port_; }

 private:
  class Loop;  // the serving thread's state, defined in tcp_store_server.cc
  int port_ = 0;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

// One connection to a TcpStoreServer.
//
// Every call waits at most `timeout` (from the constructor) and throws Timeout beyond
// it; a closed or reset connection throws TransportError, as do all later calls once
// the connection has failed (the client never reconnects). A Timeout from get() for a
// missing key leaves the connection usable; any other failure closes it.
//
// Thread-safety: calls may come from several threads; they are served one at a time,
// in turn, so a thread parked in get() delays the others' calls (within their own
// timeout). Give each waiting thread its own client.
class TcpStoreClient {
 public:
  // Connects to host:port (IPv4/IPv6 address or hostname, resolved with getaddrinfo),
  // retrying refused connections and unresolvable names until `timeout` has passed, as
  // the server may start after its clients. Throws Timeout naming host:port and the
  // last error, or InvalidArgument for a port outside [1, 65535] or a timeout <= 0.
  TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  // Stores a copy of value under key, replacing any previous value. Throws
  // InvalidArgument for a key or value over the protocol limits.
  void set(const std::string& key, std::span<const std::byte> value);
  // Returns key's value, waiting until some client sets it. Throws Timeout naming the
  // key if it is not set within the timeout (checked by the server, so the wait does
  // not poll).
  std::vector<std::byte> get(const std::string& key);
  // Adds delta to the counter under key (created as 0) atomically across all clients
  // and returns the new value. Throws InvalidArgument if key holds a value that set()
  // stored and that is not 8 bytes long, or on overflow.
  std::int64_t add(const std::string& key, std::int64_t delta);

  // "host:port", for messages.
  const std::string& endpoint() const noexcept { return endpoint_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Response;
  Response request(store_wire::Op op, const std::string& key, std::span<const std::byte> value,
                   Clock::time_point replyDeadline, const char* opName);
  void closeConnection() noexcept;

  std::string endpoint_;
  std::chrono::milliseconds timeout_;
  // One request on the connection at a time: a call waits (until its deadline) for
  // busy_ to clear, then owns fd_ and failure_ until it clears busy_ again. (Not a
  // timed_mutex: ThreadSanitizer misreads its clock-based lock.)
  std::mutex mu_;
  std::condition_variable turnFree_;
  bool busy_ = false;    // guarded by mu_
  int fd_ = -1;          // owned by the busy call; -1 once the connection failed
  std::string failure_;  // owned by the busy call; why the connection was closed
};

// Every rank's bytes, indexed by rank, for `size` ranks that call this with the same
// prefix (a fresh prefix per exchange, e.g. "ucx-addr/"). Sizes may differ between
// ranks. Stores mine under prefix + rank and reads the other keys. Throws
// InvalidArgument if rank is not in [0, size), Timeout naming the missing rank if one
// does not contribute within the client's timeout, TransportError if the store fails.
std::vector<std::vector<std::byte>> allgather(TcpStoreClient& client, const std::string& prefix,
                                              int rank, int size, std::span<const std::byte> mine);

// Returns once all `size` ranks have called barrier with this prefix (a fresh prefix per
// barrier, e.g. "barrier/3/"). Throws like allgather; a Timeout says how many ranks
// had arrived.
void barrier(TcpStoreClient& client, const std::string& prefix, int rank, int size);

}  // namespace skyring::bootstrap
