// The TCP store under attack: garbage, truncated frames and huge lengths before and after
// the join, slow clients, a crowd of idle connections, and clients that try to make the
// server hold a lot of memory. The server must drop them and go on serving the job.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <memory>
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
using store_wire::Op;

const milliseconds kTimeout(20000);

std::vector<std::uint8_t> helloPrefix() {
  return {'S', 'K', 'Y', 'R', 'S', 'T', 'O', 'R', 0, 0, 0, 2};
}

// After the join a rank's malformed request drops only its own connection. Each case
// gets a fresh store, as a dropped rank counts as gone for the rest of its job.
TEST(StoreAttacks, MalformedRequestsAfterTheJoinDropTheConnection) {
  const std::vector<std::vector<std::uint8_t>> garbage = {
      {0xff, 0, 0, 0, 1, 'k'},                       // unknown op
      {1, 0xff, 0xff, 0xff, 0xff},                   // key length beyond the limit
      {1, 0, 0, 0, 1, 'k', 0x7f, 0xff, 0xff, 0xff},  // value length beyond the limit
      {1, 0, 0, 0, 1, 'k', 0, 0x10, 0, 1},           // just over kMaxValueBytes
      {2, 0, 0, 0, 1, 'k', 0, 0, 0, 3, 1, 2, 3},     // get whose wait is not 8 bytes
      {4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0}};            // leave without a culprit
  for (const auto& bytes : garbage) {
    TcpStoreServer server(kHost, 0, job(2));
    RawSocket raw(server.port());
    ASSERT_EQ(raw.join(job(2), 1).verdict, hs::Verdict::ok);
    ASSERT_TRUE(raw.send(bytes));
    EXPECT_TRUE(raw.closedByServer());
    TcpStoreClient client(kHost, server.port(), kTimeout, job(2), 0);
    client.set("k", bytesOf("v"));
    EXPECT_EQ(stringOf(client.get("k")), "v");
  }
}

TEST(StoreAttacks, TruncatedFramesAndHugeLengthsBeforeTheJoin) {
  TcpStoreServer server(kHost, 0, job(2));
  TcpStoreClient waiting(kHost, server.port(), kTimeout, job(2), 0);
  std::thread waiter([&] { EXPECT_EQ(stringOf(waiting.get("after")), "ok"); });
  {
    std::vector<std::uint8_t> huge = helloPrefix();  // a job id length of 65535
    huge.insert(huge.end(), {0xff, 0xff});
    RawSocket raw(server.port());
    ASSERT_TRUE(raw.send(huge));
    EXPECT_TRUE(raw.closedByServer());
  }
  for (std::size_t cut : {std::size_t{3}, std::size_t{20}, std::size_t{70}}) {
    // A real hello cut short, and the connection closed: nothing is claimed.
    RawSocket raw(server.port());
    const std::vector<std::byte> challenge = raw.recvExactly(hs::kChallengeBytes);
    ASSERT_FALSE(challenge.empty());
    hs::Hello hello;
    hello.jobId = "test-job";
    hello.worldSize = 2;
    hello.rank = 1;
    const std::vector<std::byte> bytes = hs::encodeHello(hello);
    ASSERT_TRUE(raw.send(std::span(bytes).first(std::min(cut, bytes.size() - 1))));
  }
  {
    // A hello with a wrong proof for rank 1: refused, and rank 1 is still free.
    RawSocket raw(server.port());
    EXPECT_EQ(raw.join(job(2, "test-job", "not-the-key-of-this-job"), 1).verdict,
              hs::Verdict::badProof);
  }
  TcpStoreClient client(kHost, server.port(), kTimeout, job(2), 1);
  client.set("after", bytesOf("ok"));
  waiter.join();
}

TEST(StoreAttacks, SlowClientsAreDropped) {
  StoreServerOptions options;
  options.handshakeTimeout = milliseconds(1000);  // room for a loaded (sanitized) run
  options.requestTimeout = milliseconds(1000);
  TcpStoreServer server(kHost, 0, job(3), options);
  TcpStoreClient rank0(kHost, server.port(), kTimeout, job(3), 0);

  const auto start = Clock::now();
  RawSocket silent(server.port());  // connects and never says a word
  RawSocket halfHello(server.port());
  ASSERT_TRUE(halfHello.send(helloPrefix()));
  RawSocket slowRank(server.port());  // joins, then sends half a request and stalls
  ASSERT_EQ(slowRank.join(job(3), 1).verdict, hs::Verdict::ok);
  const std::vector<std::byte> frame = RawSocket::request(Op::set, "k", bytesOf("value"));
  ASSERT_TRUE(slowRank.send(std::span(frame).first(frame.size() - 2)));
  EXPECT_TRUE(silent.closedByServer());
  EXPECT_TRUE(halfHello.closedByServer());
  EXPECT_TRUE(slowRank.closedByServer());
  EXPECT_GE(since(start), milliseconds(900));
  EXPECT_LT(since(start), milliseconds(5000));
  // The joined rank waits as long as it likes for an answer: a parked get is no stall.
  rank0.set("mine", bytesOf("v"));
  EXPECT_EQ(stringOf(rank0.get("mine")), "v");
}

TEST(StoreAttacks, ACrowdOfIdleConnectionsDoesNotKeepRanksOut) {
  constexpr int kIdle = 1100, kRanks = 4;
  ASSERT_TRUE(raiseFileLimit(4 * kIdle)) << "cannot open enough files for this test";
  TcpStoreServer server(kHost, 0, job(kRanks));
  std::vector<std::unique_ptr<RawSocket>> crowd;
  for (int i = 0; i < kIdle; ++i) {
    crowd.push_back(std::make_unique<RawSocket>(server.port()));
    ASSERT_TRUE(crowd.back()->ok()) << "connection " << i;
  }
  const auto start = Clock::now();
  runRanks(kRanks, [&](int rank) {
    TcpStoreClient client(kHost, server.port(), kTimeout, job(kRanks), rank);
    const auto all = allgather(client, "ag/", bytesOf(std::to_string(rank)));
    for (int r = 0; r < kRanks; ++r)
      EXPECT_EQ(stringOf(all[static_cast<std::size_t>(r)]), std::to_string(r));
    barrier(client, "b/");
  });
  EXPECT_LT(since(start), milliseconds(10000));
  // The server kept at most kMaxPendingConnections of the crowd: the rest were dropped.
  std::size_t dropped = 0;
  for (auto& raw : crowd) {
    ::fcntl(raw->fd(), F_SETFL, O_NONBLOCK);
    std::byte buf[64];
    while (::recv(raw->fd(), buf, sizeof buf, 0) > 0) {
    }
    if (::recv(raw->fd(), buf, sizeof buf, 0) == 0 || errno == ECONNRESET) ++dropped;
  }
  EXPECT_GE(dropped, kIdle - store_wire::kMaxPendingConnections);
}

TEST(StoreAttacks, RunningOutOfFileDescriptorsCostsOnlyStrangers) {
  // The server runs in a child process allowed 64 open files; a crowd of 1100 idle
  // connections waits in its listen queue. Out of descriptors, it drops the oldest
  // connection that has not joined to accept the next, so the ranks still get in.
  constexpr int kIdle = 1100, kRanks = 4;
  ASSERT_TRUE(raiseFileLimit(4 * kIdle)) << "cannot open enough files for this test";
  int portPipe[2], stopPipe[2];
  ASSERT_EQ(::pipe(portPipe), 0);
  ASSERT_EQ(::pipe(stopPipe), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = 64;
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) std::_Exit(3);
    try {
      TcpStoreServer server(kHost, 0, job(kRanks));
      const int port = server.port();
      char stop = 0;
      if (::write(portPipe[1], &port, sizeof port) != sizeof port ||
          ::read(stopPipe[0], &stop, 1) < 0) {
        std::_Exit(4);
      }
    } catch (...) {
      std::_Exit(2);
    }
    std::_Exit(0);
  }
  int port = 0;
  ASSERT_EQ(::read(portPipe[0], &port, sizeof port), static_cast<ssize_t>(sizeof port));
  {
    std::vector<std::unique_ptr<RawSocket>> crowd;
    for (int i = 0; i < kIdle; ++i)
      crowd.push_back(std::make_unique<RawSocket>(port));
    const auto start = Clock::now();
    EXPECT_NO_THROW(runRanks(kRanks, [&](int rank) {
      TcpStoreClient client(kHost, port, kTimeout, job(kRanks), rank);
      const auto all = allgather(client, "ag/", bytesOf(std::to_string(rank)));
      EXPECT_EQ(stringOf(all[static_cast<std::size_t>(kRanks - 1)]), std::to_string(kRanks - 1));
      barrier(client, "b/");
    }));
    EXPECT_LT(since(start), milliseconds(10000));
  }
  ASSERT_EQ(::write(stopPipe[1], "x", 1), 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "server process status " << status;
  for (int fd : {portPipe[0], portPipe[1], stopPipe[0], stopPipe[1]})
    ::close(fd);
}

// Sends bytes, blocking for up to 3 s at a time (a server that stops reading, or drops
// the connection, ends it early).
void pour(int fd, std::span<const std::byte> bytes) {
  timeval tv{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
}

TEST(StoreAttacks, UnfinishedValuesDoNotExhaustMemory) {
  constexpr int kClients = 8;
  constexpr std::size_t kValue = std::size_t{63} << 20;
  const std::vector<std::byte> payload(kValue, std::byte{0x42});
  TcpStoreServer server(kHost, 0, job(2 * kClients + 1));
  std::vector<std::unique_ptr<RawSocket>> clients;
  std::vector<std::vector<std::byte>> headers;  // then as much of payload as the client sends
  std::vector<std::size_t> lengths;
  for (int i = 0; i < kClients; ++i) {
    // Strangers pour 63 MiB before any join; ranks announce a 63 MiB value and send it,
    // or send all but the last byte of the largest value allowed, and wait.
    clients.push_back(std::make_unique<RawSocket>(server.port()));
    headers.emplace_back();
    lengths.push_back(kValue);
    clients.push_back(std::make_unique<RawSocket>(server.port()));
    ASSERT_EQ(clients.back()->join(job(2 * kClients + 1), i).verdict, hs::Verdict::ok);
    const std::size_t announced = i % 2 == 0 ? kValue : store_wire::kMaxValueBytes;
    headers.push_back(RawSocket::request(Op::set, "big" + std::to_string(i), {}));
    detail::putU32(headers.back().data() + headers.back().size() - 4,
                   static_cast<std::uint32_t>(announced));
    lengths.push_back(announced - 1);
  }
  const long withClients = residentKiB();
  ASSERT_GT(withClients, 0);
  runRanks(2 * kClients, [&](int i) {
    const auto at = static_cast<std::size_t>(i);
    pour(clients[at]->fd(), headers[at]);
    pour(clients[at]->fd(), std::span(payload).first(lengths[at]));
  });
  const long during = residentKiB();
  // The server holds at most one largest request per rank (here 4 MiB); it was 557 MB.
  EXPECT_LT(during - withClients, 64 * 1024)
      << "the server grew from " << withClients << " to " << during << " KiB";
  TcpStoreClient client(kHost, server.port(), kTimeout, job(2 * kClients + 1), 2 * kClients);
  client.set("still", bytesOf("serving"));
  EXPECT_EQ(stringOf(client.get("still")), "serving");
}

TEST(StoreAttacks, TheStoreHasATotalLimit) {
  StoreServerOptions options;
  options.maxStoredBytes = 3 * store_wire::kMaxValueBytes;
  TcpStoreServer server(kHost, 0, job(1), options);
  TcpStoreClient client(kHost, server.port(), kTimeout, job(1), 0);
  const std::vector<std::byte> value(store_wire::kMaxValueBytes - 16);
  for (int i = 0; i < 3; ++i)
    client.set("v" + std::to_string(i), value);
  try {
    client.set("v3", value);
    FAIL() << "the store took more than its limit";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("kMaxStoredBytes"), std::string::npos) << e.what();
  }
  client.set("v0", {});  // replacing shrinks it again
  client.set("v3", value);
}

}  // namespace
}  // namespace skyring::bootstrap
