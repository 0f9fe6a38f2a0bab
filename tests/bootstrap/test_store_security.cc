// The TCP store against strangers and mistakes: who may join (token, job id, world size,
// a fake store), duplicate and late claims on a rank, forged records, ranks that are
// gone, and where the server listens.
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/out_of_band.h"
#include "bootstrap/store_test_util.h"
#include "bootstrap/tcp_store.h"
#include "common/run_ranks.h"
#include "skyring/error.h"

namespace skyring::bootstrap {
namespace {

using namespace skyring::bootstrap::testing;  // NOLINT(google-build-using-namespace)
using skyring::testing::runRanks;

const milliseconds kTimeout(20000);
const std::string kToken = "a-token-of-more-than-16-chars";

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The message of the TransportError that fn throws ("" if it throws none).
template <typename Fn>
std::string transportErrorOf(Fn fn) {
  try {
    fn();
  } catch (const TransportError& e) {
    return e.what();
  }
  return "";
}

TEST(StoreJoin, WrongTokenIsRefused) {
  TcpStoreServer server(kHost, 0, job(2, "j", kToken));
  for (const std::string& token : {std::string("another-token-of-16-chars"), std::string()}) {
    const std::string what = transportErrorOf(
        [&] { TcpStoreClient client(kHost, server.port(), kTimeout, job(2, "j", token), 1); });
    EXPECT_TRUE(contains(what, "SKYRING_JOB_TOKEN differs from rank 0's")) << what;
  }
  // The refused ones claimed nothing: the right token still joins as rank 1.
  TcpStoreClient client(kHost, server.port(), kTimeout, job(2, "j", kToken), 1);
  client.set("k", bytesOf("v"));
}

TEST(StoreJoin, AnotherJobIsRefused) {
  TcpStoreServer server(kHost, 0, job(2, "job-A"));
  const std::string what = transportErrorOf(
      [&] { TcpStoreClient client(kHost, server.port(), kTimeout, job(2, "job-B"), 0); });
  EXPECT_TRUE(contains(what, "serves job 'job-A', this process belongs to job 'job-B'")) << what;
  EXPECT_TRUE(contains(what, "MASTER_PORT")) << what;
}

TEST(StoreJoin, AnotherWorldSizeIsRefused) {
  TcpStoreServer server(kHost, 0, job(4));
  const std::string what =
      transportErrorOf([&] { TcpStoreClient client(kHost, server.port(), kTimeout, job(3), 0); });
  EXPECT_TRUE(contains(what, "of 4 ranks")) << what;
  EXPECT_TRUE(contains(what, "WORLD_SIZE=3")) << what;
}

// A listener that sends `greeting` to whoever connects, then waits for the test's end.
class FakeServer {
 public:
  explicit FakeServer(std::vector<std::byte> greeting) : greeting_(std::move(greeting)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd_, 8), 0);
    EXPECT_EQ(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
  }
  ~FakeServer() {
    ::shutdown(fd_, SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }
  // Serves one connection with greeting, then answers whatever it reads with `answer`.
  void serveOnce(std::vector<std::byte> answer) {
    thread_ = std::thread([this, answer = std::move(answer)] {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      ::send(c, greeting_.data(), greeting_.size(), MSG_NOSIGNAL);
      std::byte buf[4096];
      timeval tv{5, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      if (::recv(c, buf, sizeof buf, 0) > 0 && !answer.empty()) {
        ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
      }
      ::recv(c, buf, sizeof buf, 0);  // until the client gives up
      ::close(c);
    });
  }

 private:
  std::vector<std::byte> greeting_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(StoreJoin, NotASkyringStoreIsNamed) {
  const std::string http = "HTTP/1.1 400 Bad Request\r\n\r\n";
  FakeServer fake(std::vector<std::byte>(bytesOf(http).begin(), bytesOf(http).end()));
  fake.serveOnce({});
  const auto start = Clock::now();
  const std::string what =
      transportErrorOf([&] { TcpStoreClient client(kHost, fake.port(), kTimeout, job(2), 1); });
  EXPECT_TRUE(contains(what, "is not a skyring store")) << what;
  EXPECT_LT(since(start), milliseconds(3000));
}

TEST(StoreJoin, AFakeStoreFailsItsProof) {
  // It speaks the protocol, but without the job's key: it welcomes anyone with a forged
  // proof, and the client must not trust it.
  FakeServer fake(hs::encodeChallenge(hs::randomNonce()));
  hs::Welcome welcome;
  welcome.jobId = "test-job";
  welcome.worldSize = 2;
  welcome.proof.fill(std::byte{0x5a});
  fake.serveOnce(hs::encodeWelcome(welcome));
  const std::string what = transportErrorOf(
      [&] { TcpStoreClient client(kHost, fake.port(), kTimeout, job(2, "test-job", kToken), 1); });
  EXPECT_TRUE(contains(what, "failed to prove")) << what;
}

TEST(StoreJoin, DuplicateClaimFailsTheWholeJoinFast) {
  constexpr int kRanks = 4;
  TcpStoreServer server(kHost, 0, job(kRanks));
  std::atomic<int> failedNamingRank{0};
  const auto start = Clock::now();
  // Ranks 0 and 1 join and wait in an allgather for ranks 2 and 3.
  std::vector<std::thread> ranks;
  std::atomic<int> joined{0};
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      TcpStoreClient client(kHost, server.port(), kTimeout, job(kRanks), r);
      joined.fetch_add(1);
      const std::string what = transportErrorOf([&] { allgather(client, "ag/", bytesOf("x")); });
      if (contains(what, "rank 1") && contains(what, "claim")) failedNamingRank.fetch_add(1);
    });
  }
  while (joined.load() < 2)
    std::this_thread::sleep_for(milliseconds(5));
  // A second process claims rank 1: it is refused, and the join fails for everyone.
  const std::string second = transportErrorOf(
      [&] { TcpStoreClient client(kHost, server.port(), kTimeout, job(kRanks), 1); });
  EXPECT_TRUE(contains(second, "two processes claim rank 1")) << second;
  for (auto& t : ranks)
    t.join();
  EXPECT_EQ(failedNamingRank.load(), 2);
  // Ranks that come later are told the same instead of joining a failed job.
  const std::string late = transportErrorOf(
      [&] { TcpStoreClient client(kHost, server.port(), kTimeout, job(kRanks), 2); });
  EXPECT_TRUE(contains(late, "two processes claim rank 1")) << late;
  EXPECT_LT(since(start), milliseconds(5000));
}

TEST(StoreJoin, ALateClaimDuringStartUpFailsTheJoin) {
  // Every rank has joined, but the job is still starting up (rank 0 waits for rank 1's
  // record): the first ranks to join may be a mix of two launches, so a second claim
  // fails them all.
  TcpStoreServer server(kHost, 0, job(2));
  TcpStoreClient rank0(kHost, server.port(), kTimeout, job(2), 0);
  TcpStoreClient rank1(kHost, server.port(), kTimeout, job(2), 1);
  std::thread late([&] {
    std::this_thread::sleep_for(milliseconds(200));
    const std::string what =
        transportErrorOf([&] { TcpStoreClient second(kHost, server.port(), kTimeout, job(2), 1); });
    EXPECT_TRUE(contains(what, "two processes claim rank 1")) << what;
  });
  const auto start = Clock::now();
  try {
    allgather(rank0, "ag/", bytesOf("x"));
    FAIL() << "the allgather returned although rank 1 was claimed twice";
  } catch (const TransportError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_TRUE(contains(e.what(), "two processes claim rank 1")) << e.what();
  }
  late.join();
  EXPECT_LT(since(start), milliseconds(3000));
  EXPECT_THROW(rank1.set("ag/1", bytesOf("y")), TransportError);
}

TEST(StoreJoin, ALateStrangerIsRefusedAndTheRunningJobGoesOn) {
  StoreServerOptions options;
  options.startupQuiet = milliseconds(200);
  TcpStoreServer server(kHost, 0, job(2), options);
  std::atomic<bool> strangerDone{false};
  runRanks(2, [&](int rank) {
    TcpStoreClient client(kHost, server.port(), kTimeout, job(2), rank);
    allgather(client, "ag/0/", bytesOf("r" + std::to_string(rank)));
    barrier(client, "b/");
    // Started up: the store is quiet for a while, as while the job trains.
    if (rank == 0) {
      std::this_thread::sleep_for(milliseconds(400));
      const std::string what = transportErrorOf(
          [&] { TcpStoreClient stranger(kHost, server.port(), kTimeout, job(2), 1); });
      EXPECT_TRUE(contains(what, "claimed rank 1") && contains(what, "refused")) << what;
      strangerDone = true;
    }
    while (!strangerDone.load())
      std::this_thread::sleep_for(milliseconds(5));
    const auto all = allgather(client, "ag/1/", bytesOf("s" + std::to_string(rank)));
    EXPECT_EQ(stringOf(all[0]), "s0");
    EXPECT_EQ(stringOf(all[1]), "s1");
    barrier(client, "b2/");
  });
}

TEST(StoreJoin, ARecordForgedByAnotherRankIsRefused) {
  // Rank 2 knows the key (no token) and plants an "address" under rank 1's key first.
  TcpStoreServer server(kHost, 0, job(3));
  RawSocket forger(server.port());
  ASSERT_EQ(forger.join(job(3), 2).verdict, hs::Verdict::ok);
  ASSERT_EQ(forger.set("ag/1", bytesOf("forged")), static_cast<int>(store_wire::Status::ok));
  ASSERT_EQ(forger.set("ag/2", bytesOf("two")), static_cast<int>(store_wire::Status::ok));

  TcpStoreClient rank0(kHost, server.port(), kTimeout, job(3), 0);
  TcpStoreClient rank1(kHost, server.port(), kTimeout, job(3), 1);
  // Rank 1 cannot store its own record over it, and rank 0 refuses the forged one.
  const std::string own = transportErrorOf([&] { rank1.set("ag/1", bytesOf("real")); });
  EXPECT_TRUE(contains(own, "was set by rank 2")) << own;
  const std::string seen = transportErrorOf([&] { allgather(rank0, "ag/", bytesOf("zero")); });
  EXPECT_TRUE(contains(seen, "the record of rank 1")) << seen;
  EXPECT_TRUE(contains(seen, "set by rank 2")) << seen;
  // Nor may anyone replace a record that is there.
  EXPECT_EQ(forger.set("ag/0", bytesOf("forged")), static_cast<int>(store_wire::Status::error));
}

TEST(StoreJoin, ARankThatIsGoneEndsEveryWaitNamingIt) {
  TcpStoreServer server(kHost, 0, job(3));
  TcpStoreClient rank0(kHost, server.port(), kTimeout, job(3), 0);
  auto rank2 = std::make_unique<TcpStoreClient>(kHost, server.port(), kTimeout, job(3), 2);
  std::thread closer([&] {
    std::this_thread::sleep_for(milliseconds(200));
    rank2.reset();  // its process "died" before the exchange
  });
  const auto start = Clock::now();
  try {
    allgather(rank0, "ag/", bytesOf("x"));
    FAIL() << "an allgather without ranks 1 and 2 returned";
  } catch (const TransportError& e) {
    EXPECT_EQ(e.peer(), 2);
    EXPECT_TRUE(contains(e.what(), "rank 2's connection to the store closed")) << e.what();
  }
  closer.join();
  EXPECT_LT(since(start), milliseconds(3000));
}

TEST(StoreJoin, ARankThatLeavesTellsEveryoneWhy) {
  TcpStoreServer server(kHost, 0, job(4));
  TcpStoreClient rank0(kHost, server.port(), kTimeout, job(4), 0);
  TcpStoreClient rank1(kHost, server.port(), kTimeout, job(4), 1);
  std::thread leaver([&] {
    std::this_thread::sleep_for(milliseconds(200));
    rank1.leave(3, "rank 3 did not contribute");
  });
  const auto start = Clock::now();
  try {
    barrier(rank0, "b/");
    FAIL() << "a barrier without ranks 2 and 3 returned";
  } catch (const TransportError& e) {
    EXPECT_EQ(e.peer(), 3);
    EXPECT_TRUE(contains(e.what(), "rank 1 gave up: rank 3 did not contribute")) << e.what();
  }
  leaver.join();
  EXPECT_LT(since(start), milliseconds(3000));
  EXPECT_THROW(rank1.set("k", {}), TransportError);  // it has left
}

TEST(StoreListen, ASecondRankZeroOnThePortFailsTheOtherJoinToo) {
  // Launch B's rank 0 finds launch A's store on MASTER_PORT (same job id, none given) and
  // claims rank 0 there: A's start-up fails too, instead of A's and B's first ranks
  // forming one group.
  const std::string port = std::to_string(unusedPort());
  const auto launch = [&](int rank) {
    return Config::fromMap({{"RANK", std::to_string(rank)},
                            {"WORLD_SIZE", "2"},
                            {"MASTER_ADDR", "127.0.0.1"},
                            {"MASTER_PORT", port},
                            {"SKYRING_INIT_TIMEOUT_MS", "20000"}});
  };
  // Launch A's rank 0 hosts the store and, having no job id, waits there for the join to
  // settle (store_out_of_band.cc): B's claim arrives meanwhile and fails A's start-up.
  std::string theirs;
  std::thread a0([&] { theirs = transportErrorOf([&] { makeOutOfBand(launch(0)); }); });
  // Until A's store listens (a plain connection it drops after its handshake timeout).
  for (int tries = 0; tries < 1000; ++tries) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(std::stoi(port)));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    if (up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string what = transportErrorOf([&] { makeOutOfBand(launch(0)); });
  a0.join();
  EXPECT_TRUE(contains(what, "rank 0 cannot host the store")) << what;
  // B's probe may reach the store before A's own client claims rank 0 (a slow thread, as
  // under TSan): then B is welcomed and A's claim is the second one. Either way B says
  // what happened, and A's join fails naming the two claims.
  EXPECT_TRUE(contains(what, "two launches on one MASTER_PORT")) << what;
  EXPECT_TRUE(contains(theirs, "two processes claim rank 0")) << theirs;
}

TEST(StoreListen, ANonLocalAddressIsRefusedNamingMasterAddr) {
  // 203.0.113.0/24 is reserved for documentation: no host has it.
  EXPECT_THROW(TcpStoreServer("203.0.113.7", 0, job(1)), InvalidArgument);
  try {
    makeOutOfBand(Config::fromMap({{"RANK", "0"},
                                   {"WORLD_SIZE", "2"},
                                   {"MASTER_ADDR", "203.0.113.7"},
                                   {"MASTER_PORT", std::to_string(unusedPort())}}));
    FAIL() << "rank 0 hosted a store on another host's address";
  } catch (const InvalidArgument& e) {
    EXPECT_TRUE(contains(e.what(), "rank 0 hosts the store")) << e.what();
    EXPECT_TRUE(contains(e.what(), "MASTER_ADDR")) << e.what();
    EXPECT_TRUE(contains(e.what(), "not an address of this host")) << e.what();
  }
}

// This host's first IPv4 address that is not loopback, or 0.
in_addr_t otherLocalAddress() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return 0;
  in_addr_t found = 0;
  for (const ifaddrs* a = list; a != nullptr && found == 0; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    const in_addr_t addr = reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr;
    if ((ntohl(addr) >> 24) != 127) found = addr;
  }
  ::freeifaddrs(list);
  return found;
}

TEST(StoreListen, LoopbackStaysLoopback) {
  TcpStoreServer server("localhost", 0, job(1));
  TcpStoreClient client("localhost", server.port(), kTimeout, job(1), 0);
  client.set("k", bytesOf("v"));
  const in_addr_t other = otherLocalAddress();
  if (other == 0) GTEST_SKIP() << "this host has no IPv4 address beside loopback";
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(server.port()));
  addr.sin_addr.s_addr = other;
  EXPECT_NE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0)
      << "a store for MASTER_ADDR=localhost answered on another interface";
  ::close(fd);
}

}  // namespace
}  // namespace skyring::bootstrap
