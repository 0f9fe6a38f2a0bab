// The TCP store: its operations, the collective helpers with ranks as threads, and its
// failure behaviour (late server, missing key, dead server, garbage on the wire).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/tcp_store.h"
#include "common/run_ranks.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const std::string kHost = "127.0.0.1";
const milliseconds kTimeout(10000);

std::span<const std::byte> bytesOf(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

std::string stringOf(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

milliseconds since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

using skyring::testing::runRanks;

// A raw TCP connection to 127.0.0.1:port, for speaking (bad) protocol by hand.
class RawSocket {
 public:
  explicit RawSocket(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    timeval tv{5, 0};  // a recv that would hang fails the test instead
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return ok_; }
  bool send(const std::vector<std::uint8_t>& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // True when the server closed the connection (recv sees end of stream or a reset).
  bool closedByServer() {
    char c;
    const ssize_t n = ::recv(fd_, &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

 private:
  int fd_;
  bool ok_ = false;
};

// A port that nothing listens on right now: bound to port 0, read, and released.
int unusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(TcpStore, SetGetAndOverwrite) {
  TcpStoreServer server(kHost, 0);
  ASSERT_GT(server.port(), 0);
  TcpStoreClient client(kHost, server.port(), kTimeout);
  client.set("a", bytesOf("alpha"));
  EXPECT_EQ(stringOf(client.get("a")), "alpha");
  client.set("a", bytesOf("beta"));
  EXPECT_EQ(stringOf(client.get("a")), "beta");
  client.set("empty", {});
  EXPECT_TRUE(client.get("empty").empty());

  std::vector<std::byte> big(3 * 1024 * 1024 + 7);  // many TCP segments both ways
  for (std::size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<std::byte>(i * 31 % 251);
  client.set(std::string("bin\0key", 7), big);
  EXPECT_EQ(client.get(std::string("bin\0key", 7)), big);

  TcpStoreClient other(kHost, server.port(), kTimeout);
  EXPECT_EQ(stringOf(other.get("a")), "beta");
}

TEST(TcpStore, RejectsOversizedKeysAndBadArguments) {
  TcpStoreServer server(kHost, 0);
  TcpStoreClient client(kHost, server.port(), kTimeout);
  EXPECT_THROW(client.set(std::string(store_wire::kMaxKeyBytes + 1, 'k'), {}), InvalidArgument);
  EXPECT_THROW(TcpStoreClient(kHost, 0, kTimeout), InvalidArgument);
  EXPECT_THROW(TcpStoreClient(kHost, server.port(), milliseconds(0)), InvalidArgument);
  EXPECT_THROW(TcpStoreServer(kHost, 70000), InvalidArgument);
  EXPECT_THROW(allgather(client, "p/", 3, 3, {}), InvalidArgument);
  EXPECT_THROW(barrier(client, "p/", -1, 3), InvalidArgument);
  // The client is still usable after rejected calls.
  client.set("k", bytesOf("v"));
  EXPECT_EQ(stringOf(client.get("k")), "v");
}

TEST(TcpStore, GetWaitsForALaterSet) {
  TcpStoreServer server(kHost, 0);
  TcpStoreClient waiter(kHost, server.port(), kTimeout);
  std::thread setter([&] {
    TcpStoreClient client(kHost, server.port(), kTimeout);
    std::this_thread::sleep_for(milliseconds(150));
    client.set("late", bytesOf("here"));
  });
  const auto start = Clock::now();
  EXPECT_EQ(stringOf(waiter.get("late")), "here");
  EXPECT_GE(since(start), milliseconds(100));
  EXPECT_LT(since(start), kTimeout / 2);
  setter.join();
}

TEST(TcpStore, AddIsAtomicAcrossThreads) {
  TcpStoreServer server(kHost, 0);
  constexpr int kThreads = 8, kAdds = 200;
  std::mutex mu;
  std::set<std::int64_t> seen;
  runRanks(kThreads, [&](int) {
    TcpStoreClient client(kHost, server.port(), kTimeout);
    std::vector<std::int64_t> mine;
    for (int i = 0; i < kAdds; ++i)
      mine.push_back(client.add("counter", 1));
    std::lock_guard lock(mu);
    seen.insert(mine.begin(), mine.end());
  });
  // Every intermediate value was returned exactly once: no two adds interleaved.
  ASSERT_EQ(seen.size(), std::size_t{kThreads * kAdds});
  EXPECT_EQ(*seen.begin(), 1);
  EXPECT_EQ(*seen.rbegin(), kThreads * kAdds);

  TcpStoreClient client(kHost, server.port(), kTimeout);
  EXPECT_EQ(client.add("counter", 0), kThreads * kAdds);
  EXPECT_EQ(client.add("counter", -5), kThreads * kAdds - 5);
  EXPECT_EQ(client.add("fresh", -3), -3);
  client.set("text", bytesOf("abc"));
  EXPECT_THROW(client.add("text", 1), InvalidArgument);
  EXPECT_EQ(client.add("counter", 0), kThreads * kAdds - 5);  // connection still fine
}

TEST(TcpStore, OneClientSharedByThreads) {
  TcpStoreServer server(kHost, 0);
  TcpStoreClient client(kHost, server.port(), kTimeout);
  runRanks(4, [&](int r) {
    for (int i = 0; i < 50; ++i) {
      const std::string key = "t" + std::to_string(r) + "/" + std::to_string(i);
      client.set(key, bytesOf(key));
      EXPECT_EQ(stringOf(client.get(key)), key);
      client.add("shared", 1);
    }
  });
  EXPECT_EQ(client.add("shared", 0), 200);
}

class TcpStoreWorld : public ::testing::TestWithParam<int> {};

TEST_P(TcpStoreWorld, AllgatherAndBarrier) {
  const int size = GetParam();
  TcpStoreServer server(kHost, 0);
  std::atomic<int> arrived{0};
  runRanks(size, [&](int rank) {
    TcpStoreClient client(kHost, server.port(), kTimeout);
    for (int round = 0; round < 3; ++round) {
      // Rank r contributes r + round bytes (rank 0 of round 0: none).
      std::vector<std::byte> mine(static_cast<std::size_t>(rank + round),
                                  static_cast<std::byte>(rank * 7 + round));
      auto all = allgather(client, "ag/" + std::to_string(round) + "/", rank, size, mine);
      ASSERT_EQ(all.size(), static_cast<std::size_t>(size));
      for (int r = 0; r < size; ++r) {
        EXPECT_EQ(all[static_cast<std::size_t>(r)],
                  std::vector<std::byte>(static_cast<std::size_t>(r + round),
                                         static_cast<std::byte>(r * 7 + round)))
            << "rank " << rank << " round " << round << " from " << r;
      }

      if (rank == size - 1) std::this_thread::sleep_for(milliseconds(50));  // a late rank
      arrived.fetch_add(1);
      barrier(client, "barrier/" + std::to_string(round) + "/", rank, size);
      // Nobody leaves before everyone of this round has arrived.
      EXPECT_GE(arrived.load(), size * (round + 1));
      barrier(client, "barrier/" + std::to_string(round) + "/after/", rank, size);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, TcpStoreWorld, ::testing::Values(1, 2, 5, 11));

TEST(TcpStore, ClientConnectsBeforeTheServerExists) {
  const int port = unusedPort();
  std::optional<TcpStoreServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(milliseconds(200));
    server.emplace(kHost, port);
  });
  const auto start = Clock::now();
  TcpStoreClient client(kHost, port, kTimeout);
  EXPECT_GE(since(start), milliseconds(150));
  starter.join();
  client.set("k", bytesOf("v"));
  EXPECT_EQ(stringOf(client.get("k")), "v");
  EXPECT_EQ(server->port(), port);
}

TEST(TcpStore, ConnectTimesOutNamingTheEndpoint) {
  const int port = unusedPort();
  const auto start = Clock::now();
  try {
    TcpStoreClient client(kHost, port, milliseconds(300));
    FAIL() << "connected to a port nobody listens on";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find(kHost + ":" + std::to_string(port)), std::string::npos)
        << e.what();
  }
  EXPECT_GE(since(start), milliseconds(250));
  EXPECT_LT(since(start), milliseconds(2000));
}

TEST(TcpStore, GetOfAMissingKeyTimesOutNamingTheKey) {
  TcpStoreServer server(kHost, 0);
  TcpStoreClient client(kHost, server.port(), milliseconds(300));
  const auto start = Clock::now();
  try {
    client.get("never/set");
    FAIL() << "get of a missing key returned";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find("never/set"), std::string::npos) << e.what();
  }
  EXPECT_GE(since(start), milliseconds(250));
  EXPECT_LT(since(start), milliseconds(1500));
  // The server reported the timeout, so the connection is still in step.
  client.set("k", bytesOf("v"));
  EXPECT_EQ(stringOf(client.get("k")), "v");
}

TEST(TcpStore, AllgatherAndBarrierNameTheMissingRank) {
  TcpStoreServer server(kHost, 0);
  TcpStoreClient client(kHost, server.port(), milliseconds(300));
  try {
    allgather(client, "ag/", 0, 2, bytesOf("x"));
    FAIL() << "allgather without rank 1 returned";
  } catch (const Timeout& e) {
    EXPECT_EQ(e.rank(), 0);
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("ag/1"), std::string::npos) << e.what();
  }
  try {
    barrier(client, "b/", 0, 3);
    FAIL() << "barrier without ranks 1 and 2 returned";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find("only 1 of 3"), std::string::npos) << e.what();
  }
}

TEST(TcpStore, ServerDestroyedWhileAClientWaits) {
  auto server = std::make_unique<TcpStoreServer>(kHost, 0);
  TcpStoreClient client(kHost, server->port(), kTimeout);
  std::thread killer([&] {
    std::this_thread::sleep_for(milliseconds(200));
    server.reset();
  });
  const auto start = Clock::now();
  EXPECT_THROW(client.get("never/set"), TransportError);
  EXPECT_LT(since(start), kTimeout / 2);
  killer.join();
  EXPECT_THROW(client.set("k", bytesOf("v")), TransportError);  // no reconnect, no hang
}

TEST(TcpStore, GarbageDoesNotKillTheServer) {
  TcpStoreServer server(kHost, 0);
  TcpStoreClient waiting(kHost, server.port(), kTimeout);
  std::thread waiter([&] { EXPECT_EQ(stringOf(waiting.get("after")), "ok"); });

  const std::vector<std::vector<std::uint8_t>> garbage = {
      {0xff, 0, 0, 0, 1, 'k'},                              // unknown op
      {1, 0xff, 0xff, 0xff, 0xff},                          // key length beyond the limit
      {1, 0, 0, 0, 1, 'k', 0x7f, 0xff, 0xff, 0xff},         // value length beyond the limit
      {2, 0, 0, 0, 1, 'k', 0, 0, 0, 3, 1, 2, 3},            // get whose wait is not 8 bytes
      {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P'}};  // not even the protocol
  for (const auto& bytes : garbage) {
    RawSocket raw(server.port());
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw.send(bytes));
    EXPECT_TRUE(raw.closedByServer());
  }
  {
    RawSocket raw(server.port());  // half a request, then gone
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw.send({1, 0, 0, 0, 9, 'h', 'a'}));
  }
  {
    RawSocket raw(server.port());  // a set queued behind a parked get
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw.send({2, 0, 0, 0, 1, 'z', 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x27, 0x10}));
    ASSERT_TRUE(raw.send({1, 0, 0, 0, 1, 'z', 0, 0, 0, 0}));
  }

  TcpStoreClient client(kHost, server.port(), kTimeout);
  client.set("after", bytesOf("ok"));
  EXPECT_EQ(stringOf(client.get("after")), "ok");
  waiter.join();
}

}  // namespace
}  // namespace skyring::bootstrap
