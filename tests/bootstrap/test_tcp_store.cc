// The TCP store: its operations, the collective helpers with ranks as threads, and its
// failure behaviour (late server, missing key, dead server, garbage before the join).
// Authentication, duplicate ranks and limits: test_store_security.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/store_test_util.h"
#include "bootstrap/tcp_store.h"
#include "common/run_ranks.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

using namespace skyring::bootstrap::testing;  // NOLINT(google-build-using-namespace)
using skyring::testing::runRanks;

const milliseconds kTimeout(10000);

TEST(TcpStore, SetGetAndOverwrite) {
  TcpStoreServer server(kHost, 0, job(2));
  ASSERT_GT(server.port(), 0);
  TcpStoreClient client(kHost, server.port(), kTimeout, job(2), 0);
  client.set("a", bytesOf("alpha"));
  EXPECT_EQ(stringOf(client.get("a")), "alpha");
  client.set("a", bytesOf("beta"));
  EXPECT_EQ(stringOf(client.get("a")), "beta");
  client.set("empty", {});
  EXPECT_TRUE(client.get("empty").empty());

  std::vector<std::byte> big(store_wire::kMaxValueBytes);  // many TCP segments both ways
  for (std::size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<std::byte>(i * 31 % 251);
  client.set(std::string("bin\0key", 7), big);
  EXPECT_EQ(client.get(std::string("bin\0key", 7)), big);

  TcpStoreClient other(kHost, server.port(), kTimeout, job(2), 1);
  const StoreEntry entry = other.getEntry("a");
  EXPECT_EQ(stringOf(entry.value), "beta");
  EXPECT_EQ(entry.writer, 0);  // who set it
}

TEST(TcpStore, RejectsOversizedKeysAndBadArguments) {
  TcpStoreServer server(kHost, 0, job(1));
  TcpStoreClient client(kHost, server.port(), kTimeout, job(1), 0);
  EXPECT_THROW(client.set(std::string(store_wire::kMaxKeyBytes + 1, 'k'), {}), InvalidArgument);
  const std::vector<std::byte> tooBig(store_wire::kMaxValueBytes + 1);
  try {
    client.set("k", tooBig);
    FAIL() << "an oversized value was sent";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("kMaxValueBytes"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TcpStoreClient(kHost, 0, kTimeout, job(1), 0), InvalidArgument);
  EXPECT_THROW(TcpStoreClient(kHost, server.port(), milliseconds(0), job(1), 0), InvalidArgument);
  EXPECT_THROW(TcpStoreClient(kHost, server.port(), kTimeout, job(1), 1), InvalidArgument);
  EXPECT_THROW(TcpStoreClient(kHost, server.port(), kTimeout, job(3), -1), InvalidArgument);
  EXPECT_THROW(TcpStoreClient(kHost, server.port(), kTimeout,
                              job(1, std::string(store_wire::kMaxJobIdBytes + 1, 'j')), 0),
               InvalidArgument);
  EXPECT_THROW(TcpStoreServer(kHost, 70000, job(1)), InvalidArgument);
  EXPECT_THROW(TcpStoreServer(kHost, 0, job(0)), InvalidArgument);
  // The client is still usable after rejected calls.
  client.set("k", bytesOf("v"));
  EXPECT_EQ(stringOf(client.get("k")), "v");
}

TEST(TcpStore, GetWaitsForALaterSet) {
  TcpStoreServer server(kHost, 0, job(2));
  TcpStoreClient waiter(kHost, server.port(), kTimeout, job(2), 0);
  std::thread setter([&] {
    TcpStoreClient client(kHost, server.port(), kTimeout, job(2), 1);
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
  constexpr int kThreads = 8, kAdds = 200;
  TcpStoreServer server(kHost, 0, job(kThreads + 1));
  std::mutex mu;
  std::set<std::int64_t> seen;
  runRanks(kThreads, [&](int rank) {
    TcpStoreClient client(kHost, server.port(), kTimeout, job(kThreads + 1), rank);
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

  TcpStoreClient client(kHost, server.port(), kTimeout, job(kThreads + 1), kThreads);
  EXPECT_EQ(client.add("counter", 0), kThreads * kAdds);
  EXPECT_EQ(client.add("counter", -5), kThreads * kAdds - 5);
  EXPECT_EQ(client.add("fresh", -3), -3);
  client.set("text", bytesOf("abc"));
  EXPECT_THROW(client.add("text", 1), InvalidArgument);
  EXPECT_THROW(client.set("counter", bytesOf("x")), TransportError);  // a counter stays one
  EXPECT_EQ(client.add("counter", 0), kThreads * kAdds - 5);          // connection still fine
}

TEST(TcpStore, OneClientSharedByThreads) {
  TcpStoreServer server(kHost, 0, job(1));
  TcpStoreClient client(kHost, server.port(), kTimeout, job(1), 0);
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
  TcpStoreServer server(kHost, 0, job(size));
  std::atomic<int> arrived{0};
  runRanks(size, [&](int rank) {
    TcpStoreClient client(kHost, server.port(), kTimeout, job(size), rank);
    for (int round = 0; round < 3; ++round) {
      // Rank r contributes r + round bytes (rank 0 of round 0: none).
      std::vector<std::byte> mine(static_cast<std::size_t>(rank + round),
                                  static_cast<std::byte>(rank * 7 + round));
      auto all = allgather(client, "ag/" + std::to_string(round) + "/", mine);
      ASSERT_EQ(all.size(), static_cast<std::size_t>(size));
      for (int r = 0; r < size; ++r) {
        EXPECT_EQ(all[static_cast<std::size_t>(r)],
                  std::vector<std::byte>(static_cast<std::size_t>(r + round),
                                         static_cast<std::byte>(r * 7 + round)))
            << "rank " << rank << " round " << round << " from " << r;
      }

      if (rank == size - 1) std::this_thread::sleep_for(milliseconds(50));  // a late rank
      arrived.fetch_add(1);
      barrier(client, "barrier/" + std::to_string(round) + "/");
      // Nobody leaves before everyone of this round has arrived.
      EXPECT_GE(arrived.load(), size * (round + 1));
      barrier(client, "barrier/" + std::to_string(round) + "/after/");
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, TcpStoreWorld, ::testing::Values(1, 2, 5, 11));

TEST(TcpStore, ClientConnectsBeforeTheServerExists) {
  const int port = unusedPort();
  std::optional<TcpStoreServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(milliseconds(200));
    server.emplace(kHost, port, job(1));
  });
  const auto start = Clock::now();
  TcpStoreClient client(kHost, port, kTimeout, job(1), 0);
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
    TcpStoreClient client(kHost, port, milliseconds(300), job(1), 0);
    FAIL() << "connected to a port nobody listens on";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find(kHost + ":" + std::to_string(port)), std::string::npos)
        << e.what();
  }
  EXPECT_GE(since(start), milliseconds(250));
  EXPECT_LT(since(start), milliseconds(2000));
}

TEST(TcpStore, GetOfAMissingKeyTimesOutNamingTheKey) {
  TcpStoreServer server(kHost, 0, job(1));
  TcpStoreClient client(kHost, server.port(), milliseconds(300), job(1), 0);
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
  TcpStoreServer server(kHost, 0, job(3));
  TcpStoreClient client(kHost, server.port(), milliseconds(300), job(3), 0);
  try {
    allgather(client, "ag/", bytesOf("x"));
    FAIL() << "allgather without rank 1 returned";
  } catch (const Timeout& e) {
    EXPECT_EQ(e.rank(), 0);
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("ag/1"), std::string::npos) << e.what();
  }
  try {
    barrier(client, "b/");
    FAIL() << "barrier without ranks 1 and 2 returned";
  } catch (const Timeout& e) {
    EXPECT_NE(std::string(e.what()).find("only 1 of 3"), std::string::npos) << e.what();
  }
}

TEST(TcpStore, ServerDestroyedWhileAClientWaits) {
  auto server = std::make_unique<TcpStoreServer>(kHost, 0, job(1));
  TcpStoreClient client(kHost, server->port(), kTimeout, job(1), 0);
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

TEST(TcpStore, GarbageBeforeTheJoinDoesNotDisturbTheJob) {
  TcpStoreServer server(kHost, 0, job(2));
  TcpStoreClient waiting(kHost, server.port(), kTimeout, job(2), 0);
  std::thread waiter([&] { EXPECT_EQ(stringOf(waiting.get("after")), "ok"); });

  const std::vector<std::vector<std::uint8_t>> garbage = {
      {0xff, 0, 0, 0, 1, 'k'},                              // not the store's magic
      {1, 0, 0, 0, 1, 'k', 0, 0, 0, 0},                     // a request without a join
      {'S', 'K', 'Y', 'R', 'S', 'T', 'O', 'R', 0, 0, 0, 2,  // a hello whose job id
       0xff, 0xff},                                         // is beyond the limit
      {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P'}};  // not even the protocol
  for (const auto& bytes : garbage) {
    RawSocket raw(server.port());
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw.send(bytes));
    EXPECT_TRUE(raw.closedByServer());
  }
  {
    RawSocket raw(server.port());  // half a hello, then gone
    ASSERT_TRUE(raw.ok());
    ASSERT_TRUE(raw.send({'S', 'K', 'Y', 'R', 'S', 'T', 'O', 'R', 0, 0}));
  }

  TcpStoreClient client(kHost, server.port(), kTimeout, job(2), 1);
  client.set("after", bytesOf("ok"));
  EXPECT_EQ(stringOf(client.get("after")), "ok");
  waiter.join();
}

}  // namespace
}  // namespace skyring::bootstrap
