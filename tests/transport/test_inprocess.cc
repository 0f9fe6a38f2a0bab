#include <gtest/gtest.h>

#include <thread>

#include "skyring/inprocess_transport.h"

namespace skyring::transport {
namespace {

std::span<const std::byte> bytesOf(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

const auto kSoon = std::chrono::milliseconds(2000);

TEST(InProcessTransport, SendBeforeAndAfterReceive) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::string early = "early", late = "late!";
  a->isend(1, 5, bytesOf(early));  // unexpected: buffered until the receive
  std::string got(5, '?');
  auto r1 = b->irecv(0, 5, std::as_writable_bytes(std::span(got.data(), got.size())));
  EXPECT_TRUE(r1->test());
  EXPECT_EQ(got, "early");
  auto r2 = b->irecv(0, 6, std::as_writable_bytes(std::span(got.data(), got.size())));
  EXPECT_FALSE(r2->test());
  a->isend(1, 6, bytesOf(late));
  EXPECT_TRUE(r2->waitUntil(Clock::now() + kSoon));
  EXPECT_EQ(got, "late!");
}

TEST(InProcessTransport, SameTagMatchesInOrder) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  for (int i = 0; i < 10; ++i) {
    a->isend(1, 1, std::as_bytes(std::span(&i, 1)));
  }
  for (int i = 0; i < 10; ++i) {
    int v = -1;
    auto r = b->irecv(0, 1, std::as_writable_bytes(std::span(&v, 1)));
    ASSERT_TRUE(r->waitUntil(Clock::now() + kSoon));
    EXPECT_EQ(v, i);
  }
}

TEST(InProcessTransport, ZeroByteMessages) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  auto r = b->irecv(0, 3, {});
  a->isend(1, 3, {});
  EXPECT_TRUE(r->waitUntil(Clock::now() + kSoon));
}

TEST(InProcessTransport, SizeMismatchFailsTheReceive) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::string msg = "twelve bytes";
  a->isend(1, 1, bytesOf(msg));
  std::string small(4, ' ');
  auto r = b->irecv(0, 1, std::as_writable_bytes(std::span(small.data(), small.size())));
  try {
    r->test();
    FAIL() << "expected TransportError";
  } catch (const TransportError& e) {
    EXPECT_EQ(e.peer(), 0);
    EXPECT_NE(std::string(e.what()).find("12 bytes"), std::string::npos) << e.what();
  }
}

TEST(InProcessTransport, WaitTimesOutWithoutThrowing) {
  InProcessWorld world(2);
  auto b = world.transport(1);
  int v = 0;
  auto r = b->irecv(0, 1, std::as_writable_bytes(std::span(&v, 1)));
  const auto start = Clock::now();
  EXPECT_FALSE(r->waitUntil(start + std::chrono::milliseconds(50)));
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(50));
}

TEST(InProcessTransport, KilledPeerFailsPendingReceive) {
  InProcessWorld world(3);
  auto b = world.transport(1);
  int v = 0;
  auto r = b->irecv(2, 1, std::as_writable_bytes(std::span(&v, 1)));
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    world.kill(2);
  });
  try {
    r->waitUntil(Clock::now() + kSoon);
    FAIL() << "expected TransportError";
  } catch (const TransportError& e) {
    EXPECT_EQ(e.peer(), 2);
    EXPECT_NE(std::string(e.what()).find("rank 2 died"), std::string::npos) << e.what();
  }
  killer.join();
  EXPECT_THROW(b->isend(2, 1, {}), TransportError);
}

TEST(InProcessTransport, AbortReachesEveryRank) {
  InProcessWorld world(3);
  auto a = world.transport(0);
  auto c = world.transport(2);
  int v = 0;
  auto r = c->irecv(1, 1, std::as_writable_bytes(std::span(&v, 1)));
  a->abort(ErrorKind::timeout, "rank 1 did not take part");
  try {
    r->waitUntil(Clock::now() + kSoon);
    FAIL() << "expected Timeout";
  } catch (const Timeout& e) {
    EXPECT_EQ(e.peer(), -1);
    EXPECT_EQ(e.detail(), "rank 1 did not take part");
  }
  a->abort(ErrorKind::transport, "second reason is ignored");
  EXPECT_THROW(c->isend(0, 1, {}), Timeout);
}

TEST(InProcessTransport, ShutdownCancelsOwnAndFailsPeers) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  int v = 0;
  auto mine = a->irecv(1, 1, std::as_writable_bytes(std::span(&v, 1)));
  auto theirs = b->irecv(0, 1, std::as_writable_bytes(std::span(&v, 1)));
  a->shutdown();
  EXPECT_THROW(mine->test(), Aborted);
  EXPECT_THROW(theirs->test(), TransportError);
}

TEST(InProcessTransport, CancelledReceiveDoesNotSteal) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  int first = 0, second = 0;
  { auto dropped = b->irecv(0, 1, std::as_writable_bytes(std::span(&first, 1))); }
  auto kept = b->irecv(0, 1, std::as_writable_bytes(std::span(&second, 1)));
  int v = 42;
  a->isend(1, 1, std::as_bytes(std::span(&v, 1)));
  EXPECT_TRUE(kept->waitUntil(Clock::now() + kSoon));
  EXPECT_EQ(second, 42);
  EXPECT_EQ(first, 0);
}

TEST(InProcessTransport, BadPeerIsInvalidArgument) {
  InProcessWorld world(2);
  auto a = world.transport(0);
  EXPECT_THROW(a->isend(2, 1, {}), InvalidArgument);
  EXPECT_THROW(a->irecv(-1, 1, {}), InvalidArgument);
  EXPECT_THROW(InProcessWorld(0), InvalidArgument);
}

}  // namespace
}  // namespace skyring::transport
