// MeteringTransport and ShapingTransport over the in-process transport.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "common/run_ranks.h"
#include "skyring/inprocess_transport.h"
#include "skyring/metering_transport.h"
#include "skyring/shaping_transport.h"

namespace skyring::transport {
namespace {

using namespace std::chrono_literals;
using topology::LinkClass;
using topology::RankRecord;
using topology::Topology;

const auto kSoon = 5s;

// Ranks 0 and 1 share node a1 of cloud A, rank 2 is node a2 of cloud A, ranks 3 and 4 are
// nodes b1 and b2 of cloud B.
std::shared_ptr<const Topology> fiveRanks() {
  return std::make_shared<const Topology>(std::vector<RankRecord>{
      {"a1", "A", ""}, {"a1", "A", ""}, {"a2", "A", ""}, {"b1", "B", ""}, {"b2", "B", ""}});
}

std::vector<std::byte> pattern(std::size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 131 + static_cast<std::size_t>(seed) * 7) & 0xff);
  return v;
}

double msSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The WAN of the tests: 100 MB/s and 20 ms one way between clouds; 1 MB takes 10 ms on
// the wire and arrives 30 ms after posting.
LinkShapes wan() {
  LinkShapes s{};
  s[topology::index(LinkClass::crossCloud)] = LinkShape{100e6, 20ms};
  return s;
}
constexpr std::size_t kMegabyte = 1'000'000;

TEST(MeteringTransport, CountsExactBytesPerClass) {
  InProcessWorld world(5);
  auto topo = fiveRanks();
  MeteringTransport m(world.transport(0), topo);
  std::vector<std::shared_ptr<Transport>> peers;
  for (int r = 1; r < 5; ++r)
    peers.push_back(world.transport(r));

  const std::vector<std::pair<int, std::size_t>> sends = {{0, 10},    {1, 100},   {2, 1000},
                                                          {3, 10000}, {4, 20000}, {3, 0}};
  std::vector<std::vector<std::byte>> in;
  std::vector<std::unique_ptr<Request>> recvs;
  for (const auto& [peer, n] : sends) {
    in.emplace_back(n);
    recvs.push_back(peer == 0 ? m.irecv(0, 1, in.back())
                              : peers[static_cast<std::size_t>(peer - 1)]->irecv(0, 1, in.back()));
  }
  for (const auto& [peer, n] : sends) {
    const auto data = pattern(n, peer);
    ASSERT_TRUE(m.isend(peer, 1, data)->waitUntil(Clock::now() + kSoon));
  }
  for (auto& r : recvs)
    ASSERT_TRUE(r->waitUntil(Clock::now() + kSoon));

  EXPECT_THROW(m.isend(5, 1, {}), InvalidArgument);  // not posted, not counted

  const TrafficStats s = m.stats();
  EXPECT_EQ(s.bytesOver(LinkClass::self), 10u);
  EXPECT_EQ(s.bytesOver(LinkClass::intraNode), 100u);
  EXPECT_EQ(s.bytesOver(LinkClass::intraCloud), 1000u);
  EXPECT_EQ(s.bytesOver(LinkClass::crossCloud), 30000u);
  EXPECT_EQ(s.messagesOver(LinkClass::self), 1u);
  EXPECT_EQ(s.messagesOver(LinkClass::intraNode), 1u);
  EXPECT_EQ(s.messagesOver(LinkClass::intraCloud), 1u);
  EXPECT_EQ(s.messagesOver(LinkClass::crossCloud), 3u);  // the empty message counts too
  EXPECT_DOUBLE_EQ(s.egressDollars, 30000 * 0.08e-9);
  // Receiving is not metered.
  EXPECT_EQ(std::accumulate(s.bytes.begin(), s.bytes.end(), std::uint64_t{0}), 31110u);
}

TEST(MeteringTransport, ConcurrentAllToAll) {
  InProcessWorld world(5);
  auto topo = fiveRanks();
  std::vector<std::shared_ptr<MeteringTransport>> meters;
  for (int r = 0; r < 5; ++r)
    meters.push_back(std::make_shared<MeteringTransport>(world.transport(r), topo));
  // Rank r sends (r + 1) * 100 + peer bytes to every peer, 20 times, from 2 threads each.
  auto bytesFor = [](int from, int to) { return static_cast<std::size_t>((from + 1) * 100 + to); };
  constexpr int kRounds = 20;
  testing::runRanks(5, [&](int r) {
    auto& t = *meters[static_cast<std::size_t>(r)];
    std::vector<std::vector<std::byte>> out, in;
    std::vector<std::unique_ptr<Request>> reqs;
    for (int round = 0; round < kRounds; ++round) {
      for (int p = 0; p < 5; ++p) {
        in.emplace_back(bytesFor(p, r));
        reqs.push_back(t.irecv(p, static_cast<Tag>(round), in.back()));
        out.push_back(pattern(bytesFor(r, p), r));
        reqs.push_back(t.isend(p, static_cast<Tag>(round), out.back()));
      }
    }
    for (auto& q : reqs)
      ASSERT_TRUE(q->waitUntil(Clock::now() + kSoon));
  });
  for (int r = 0; r < 5; ++r) {
    TrafficStats expected;
    for (int p = 0; p < 5; ++p) {
      const auto c = topology::index(topo->linkClass(r, p));
      expected.bytes[c] += kRounds * bytesFor(r, p);
      expected.messages[c] += kRounds;
    }
    const TrafficStats got = meters[static_cast<std::size_t>(r)]->stats();
    EXPECT_EQ(got.bytes, expected.bytes) << "rank " << r;
    EXPECT_EQ(got.messages, expected.messages) << "rank " << r;
  }
}

TEST(MeteringTransport, RejectsTopologyOfAnotherSize) {
  InProcessWorld world(2);
  EXPECT_THROW(MeteringTransport(world.transport(0), fiveRanks()), InvalidArgument);
}

TEST(ShapingTransport, MessageTakesWireTimePlusLatency) {
  InProcessWorld world(5);
  ShapingTransport a(world.transport(0), fiveRanks(), wan());
  auto b = world.transport(3);
  const auto out = pattern(kMegabyte, 1);
  std::vector<std::byte> in(kMegabyte);
  auto recv = b->irecv(0, 7, in);
  const auto start = Clock::now();
  auto send = a.isend(3, 7, out);
  EXPECT_FALSE(recv->test());
  ASSERT_TRUE(recv->waitUntil(start + kSoon));
  const double ms = msSince(start);
  EXPECT_GE(ms, 30.0);
  EXPECT_LT(ms, 500.0);  // generous: CI machines are noisy
  EXPECT_EQ(in, out);
  EXPECT_TRUE(send->test());
}

TEST(ShapingTransport, SendCompletesAtDeparture) {
  InProcessWorld world(5);
  LinkShapes slow{};
  slow[topology::index(LinkClass::crossCloud)] = LinkShape{1e6, 0ms};  // 100 KB: 100 ms
  ShapingTransport a(world.transport(0), fiveRanks(), slow);
  const auto out = pattern(100'000, 2);
  const auto start = Clock::now();
  auto send = a.isend(4, 1, out);
  EXPECT_FALSE(send->test());
  EXPECT_FALSE(send->waitUntil(Clock::now() + 5ms));
  ASSERT_TRUE(send->waitUntil(start + kSoon));
  EXPECT_GE(msSince(start), 100.0);
  EXPECT_LT(msSince(start), 600.0);
}

TEST(ShapingTransport, BackToBackMessagesSerialize) {
  InProcessWorld world(5);
  ShapingTransport a(world.transport(0), fiveRanks(), wan());
  auto b = world.transport(3);
  const auto out1 = pattern(kMegabyte, 1), out2 = pattern(kMegabyte, 2);
  std::vector<std::byte> in1(kMegabyte), in2(kMegabyte);
  auto r1 = b->irecv(0, 7, in1);
  auto r2 = b->irecv(0, 7, in2);
  const auto start = Clock::now();
  auto s1 = a.isend(3, 7, out1);
  auto s2 = a.isend(3, 7, out2);
  ASSERT_TRUE(r1->waitUntil(start + kSoon));
  const double first = msSince(start);
  ASSERT_TRUE(r2->waitUntil(start + kSoon));
  const double second = msSince(start);
  EXPECT_GE(first, 30.0);
  EXPECT_GE(second, 40.0);  // waited 10 ms for the first to leave the wire
  EXPECT_LT(second, 500.0);
  EXPECT_EQ(in1, out1);
  EXPECT_EQ(in2, out2);
}

TEST(ShapingTransport, BandwidthIsSharedByPeersOfOneClass) {
  InProcessWorld world(5);
  ShapingTransport a(world.transport(0), fiveRanks(), wan());
  auto b1 = world.transport(3);
  auto b2 = world.transport(4);
  const auto out = pattern(kMegabyte, 3);
  std::vector<std::byte> in1(kMegabyte), in2(kMegabyte);
  auto r1 = b1->irecv(0, 1, in1);
  auto r2 = b2->irecv(0, 1, in2);
  const auto start = Clock::now();
  auto s1 = a.isend(3, 1, out);
  auto s2 = a.isend(4, 1, out);
  ASSERT_TRUE(r2->waitUntil(start + kSoon));
  EXPECT_GE(msSince(start), 40.0);
  ASSERT_TRUE(r1->waitUntil(start + kSoon));
}

TEST(ShapingTransport, UnshapedClassesPassStraightThrough) {
  InProcessWorld world(5);
  ShapingTransport a(world.transport(0), fiveRanks(), wan());
  auto mate = world.transport(1);
  auto far = world.transport(3);
  const auto big = pattern(kMegabyte, 4);
  std::vector<std::byte> farIn(kMegabyte), mateIn(16);
  auto farRecv = far->irecv(0, 1, farIn);
  auto mateRecv = mate->irecv(0, 1, mateIn);
  auto farSend = a.isend(3, 1, big);  // occupies the cross-cloud wire for 10 ms
  const auto small = pattern(16, 5);
  auto mateSend = a.isend(1, 1, small);
  // Intra-node is unshaped: delivered at posting, not behind the WAN message.
  EXPECT_TRUE(mateRecv->test());
  EXPECT_TRUE(mateSend->test());
  EXPECT_FALSE(farRecv->test());
  EXPECT_EQ(mateIn, small);
  ASSERT_TRUE(farRecv->waitUntil(Clock::now() + kSoon));
}

TEST(ShapingTransport, KeepsFifoPerPeerAndTag) {
  InProcessWorld world(5);
  LinkShapes fast{};
  fast[topology::index(LinkClass::crossCloud)] = LinkShape{50e6, 1ms};
  fast[topology::index(LinkClass::intraCloud)] = LinkShape{0, 2ms};  // latency only
  ShapingTransport a(world.transport(0), fiveRanks(), fast);
  constexpr int kMessages = 40;
  for (int peer : {2, 3}) {
    auto b = world.transport(peer);
    std::vector<std::vector<std::byte>> out, in;
    std::vector<std::unique_ptr<Request>> reqs;
    for (int i = 0; i < kMessages; ++i) {
      // Sizes vary (including empty) so a short message could overtake a long one if the
      // queue were not ordered; two tags interleave.
      const std::size_t n = static_cast<std::size_t>((i * 7919) % 20000) * (i % 5 != 0);
      out.push_back(pattern(n, i));
      in.emplace_back(n);
    }
    for (int i = 0; i < kMessages; ++i) {
      const auto k = static_cast<std::size_t>(i);
      reqs.push_back(a.isend(peer, static_cast<Tag>(i % 2), out[k]));
    }
    for (int i = 0; i < kMessages; ++i) {
      const auto k = static_cast<std::size_t>(i);
      reqs.push_back(b->irecv(0, static_cast<Tag>(i % 2), in[k]));
    }
    for (auto& r : reqs)
      ASSERT_TRUE(r->waitUntil(Clock::now() + kSoon));
    EXPECT_EQ(in, out) << "peer " << peer;
  }
}

TEST(ShapingTransport, RingOverTwoCloudsDeliversEverything) {
  InProcessWorld world(5);
  auto topo = fiveRanks();
  LinkShapes shapes = wan();
  shapes[topology::index(LinkClass::intraCloud)] = LinkShape{1e9, 1ms};
  std::vector<std::shared_ptr<Transport>> ts;
  for (int r = 0; r < 5; ++r)
    ts.push_back(std::make_shared<ShapingTransport>(world.transport(r), topo, shapes));
  const auto ring = topo->ringOrder();
  testing::runRanks(5, [&](int r) {
    const auto pos =
        static_cast<std::size_t>(std::find(ring.begin(), ring.end(), r) - ring.begin());
    const int next = ring[(pos + 1) % ring.size()];
    const int prev = ring[(pos + ring.size() - 1) % ring.size()];
    auto& t = *ts[static_cast<std::size_t>(r)];
    for (int step = 0; step < 4; ++step) {
      const auto out = pattern(64 * 1024, r * 10 + step);
      std::vector<std::byte> in(out.size());
      auto recv = t.irecv(prev, static_cast<Tag>(step), in);
      auto send = t.isend(next, static_cast<Tag>(step), out);
      ASSERT_TRUE(send->waitUntil(Clock::now() + kSoon));
      ASSERT_TRUE(recv->waitUntil(Clock::now() + kSoon));
      ASSERT_EQ(in, pattern(64 * 1024, prev * 10 + step));
    }
  });
}

TEST(ShapingTransport, AbortFailsPendingSendsAndReachesPeers) {
  InProcessWorld world(5);
  LinkShapes slow{};
  slow[topology::index(LinkClass::crossCloud)] = LinkShape{1e6, 0ms};  // 10 MB: 10 s
  ShapingTransport a(world.transport(0), fiveRanks(), slow);
  auto b = world.transport(3);
  const auto out = pattern(10 * kMegabyte, 6);
  std::vector<std::byte> in(out.size());
  auto recv = b->irecv(0, 1, in);
  auto send = a.isend(3, 1, out);
  std::thread aborter([&] {
    std::this_thread::sleep_for(20ms);
    a.abort(ErrorKind::timeout, "rank 4 did not take part");
  });
  const auto start = Clock::now();
  try {
    send->waitUntil(start + kSoon);
    ADD_FAILURE() << "the pending send completed";
  } catch (const Timeout& e) {
    EXPECT_EQ(e.detail(), "rank 4 did not take part");
    EXPECT_EQ(e.peer(), 3);
  }
  EXPECT_LT(msSince(start), 2000.0);  // woken by the abort, not at the departure
  aborter.join();
  EXPECT_THROW(recv->waitUntil(Clock::now() + kSoon), Timeout);
  EXPECT_THROW(a.isend(3, 1, out), Timeout);
  EXPECT_THROW(a.isend(1, 1, {}), Timeout);  // the unshaped path fails in the inner transport
}

TEST(ShapingTransport, ShutdownFailsPendingSendsWithAborted) {
  InProcessWorld world(5);
  LinkShapes slow{};
  slow[topology::index(LinkClass::crossCloud)] = LinkShape{1e6, 0ms};
  ShapingTransport a(world.transport(0), fiveRanks(), slow);
  const auto out = pattern(kMegabyte, 7);
  auto send = a.isend(3, 1, out);
  a.shutdown();
  EXPECT_THROW(send->test(), Aborted);
  EXPECT_THROW(a.isend(3, 1, out), Aborted);
}

TEST(ShapingTransport, DestructorDeliversQueuedMessages) {
  InProcessWorld world(5);
  auto b = world.transport(3);
  const auto out = pattern(1000, 8);
  std::vector<std::byte> in(out.size());
  auto recv = b->irecv(0, 1, in);
  {
    ShapingTransport a(world.transport(0), fiveRanks(), wan());
    a.isend(3, 1, out);  // request dropped at once: the message is still sent
  }
  EXPECT_TRUE(recv->test());
  EXPECT_EQ(in, out);
}

TEST(ShapingTransport, ComposesWithMetering) {
  InProcessWorld world(5);
  auto topo = fiveRanks();
  auto shaped = std::make_shared<ShapingTransport>(world.transport(0), topo, wan());
  MeteringTransport m(shaped, topo);
  auto b = world.transport(4);
  const auto out = pattern(kMegabyte, 9);
  std::vector<std::byte> in(out.size());
  auto recv = b->irecv(0, 1, in);
  const auto start = Clock::now();
  auto send = m.isend(4, 1, out);
  EXPECT_EQ(m.stats().bytesOver(LinkClass::crossCloud), kMegabyte);  // counted at posting
  ASSERT_TRUE(recv->waitUntil(start + kSoon));
  EXPECT_GE(msSince(start), 30.0);
}

TEST(ShapingTransport, RejectsBadShapes) {
  InProcessWorld world(5);
  LinkShapes bad{};
  bad[topology::index(LinkClass::crossCloud)] = LinkShape{-1, 0ms};
  EXPECT_THROW(ShapingTransport(world.transport(0), fiveRanks(), bad), InvalidArgument);
  bad[topology::index(LinkClass::crossCloud)] = LinkShape{1, -1ms};
  EXPECT_THROW(ShapingTransport(world.transport(0), fiveRanks(), bad), InvalidArgument);
  InProcessWorld two(2);
  EXPECT_THROW(ShapingTransport(two.transport(0), fiveRanks(), wan()), InvalidArgument);
}

TEST(ShapingTransport, ShapesFromCostModel) {
  const topology::CostModel costs;
  const LinkShapes s = ShapingTransport::shapesFrom(costs, {LinkClass::crossCloud});
  EXPECT_DOUBLE_EQ(s[topology::index(LinkClass::crossCloud)].bandwidthBytesPerSec, 1.25e9);
  EXPECT_EQ(s[topology::index(LinkClass::crossCloud)].latency, 30ms);
  EXPECT_EQ(s[topology::index(LinkClass::intraCloud)].bandwidthBytesPerSec, 0);
  EXPECT_EQ(s[topology::index(LinkClass::intraCloud)].latency, 0ms);
}

}  // namespace
}  // namespace skyring::transport
