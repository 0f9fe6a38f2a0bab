// The UCX transport against the semantics of transport.h: ranks are threads of this
// process (each with its own UCP context and worker, exchanging addresses through an
// in-process allgather), except for the killed-peer test, which needs a real process.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <barrier>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "collectives/tags.h"
#include "common/exact_data.h"
#include "common/run_ranks.h"
#include "skyring/communicator.h"
#include "skyring/ucx_transport.h"
#include "transport/ucx_tags.h"

namespace skyring::transport {
namespace {

using namespace std::chrono_literals;
const auto kSoon = 10s;

// UCX's memory-event hooks patch mmap, madvise and malloc, which the sanitizers'
// interceptors do not survive (CI runs this test under ASan and TSan), and they buy
// nothing for host memory. UCX reads UCX_MEM_EVENTS when it is loaded, before any code of
// this program runs, so the test re-executes itself once with the variable set.
const bool kNoMemoryHooks = [] {
  if (std::getenv("UCX_MEM_EVENTS") != nullptr) return true;
  ::setenv("UCX_MEM_EVENTS", "no", 1);
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string arg; std::getline(in, arg, '\0');)
    args.push_back(arg);
  std::vector<char*> argv;
  for (auto& arg : args)
    argv.push_back(arg.data());
  argv.push_back(nullptr);
  ::execv("/proc/self/exe", argv.data());
  return false;  // could not re-execute: run with the hooks
}();

using skyring::testing::runRanks;

// An allgather among threads: a barrier and one shared slot per rank.
class Hub {
 public:
  explicit Hub(int n) : slots_(static_cast<std::size_t>(n)), barrier_(n) {}
  AllgatherFn allgather(int rank) {
    return [this, rank](std::span<const std::byte> mine) {
      slots_[static_cast<std::size_t>(rank)].assign(mine.begin(), mine.end());
      barrier_.arrive_and_wait();
      auto all = slots_;
      barrier_.arrive_and_wait();
      return all;
    };
  }

 private:
  std::vector<std::vector<std::byte>> slots_;
  std::barrier<> barrier_;
};

// n connected ranks; shut down together so that flushing peers progress each other.
struct Group {
  explicit Group(int n, UcxOptions options = {}) : ranks(static_cast<std::size_t>(n)) {
    Hub hub(n);
    runRanks(n, [&](int r) { ranks[r] = makeUcxTransport(r, n, hub.allgather(r), options); });
  }
  ~Group() {
    runRanks(size(), [&](int r) { ranks[r]->shutdown(); });
  }
  int size() const { return static_cast<int>(ranks.size()); }
  Transport& operator[](int r) { return *ranks[static_cast<std::size_t>(r)]; }
  std::vector<std::shared_ptr<Transport>> ranks;
};

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 12)) & 0xff);
  return v;
}

void waitOrFail(Request& r) {
  ASSERT_TRUE(r.waitUntil(Clock::now() + kSoon)) << "request did not complete";
}

TEST(UcxTags, LayoutIsInjectiveWhereItMatters) {
  const ucx::TagLayout three(3);
  EXPECT_EQ(three.rankBits(), 2);
  EXPECT_EQ(three.data(1, 5) & ~three.senderMask(), 5u);  // small tags pass unchanged
  EXPECT_NE(three.data(1, 5), three.data(2, 5));
  for (int src = 0; src < 3; ++src)
    EXPECT_NE(three.data(src, ~Tag{0}), three.control(ucx::ControlKind::abort));
  // Calls that differ in opcode, signature or control at one sequence number never share a
  // UCX tag, nor do nearby sequence numbers (at least 32 apart up to 4095 ranks; 256 below
  // 512, ucx_tags.h).
  for (int size : {2, 3, 11, 511, 1000, 4095}) {
    const ucx::TagLayout layout(size);
    std::set<std::uint64_t> seen;
    const std::uint32_t calls = size < 512 ? 256 : 32;
    for (std::uint32_t seq = 0; seq < calls; ++seq) {
      for (auto op : {collectives::Opcode::allreduce, collectives::Opcode::broadcast}) {
        for (std::uint8_t sig : {0, 1, 37}) {
          for (std::uint32_t step : {0u, 1u, 9u}) {
            seen.insert(layout.data(0, collectives::makeTag(false, op, sig, 0, seq, step)));
            seen.insert(layout.data(0, collectives::makeTag(false, op, sig, 4095, seq, step)));
          }
        }
      }
      seen.insert(layout.data(0, collectives::makeTag(true, {}, 0, 0, seq, 0)));
    }
    EXPECT_EQ(seen.size(), calls * (2 * 3 * 3 * 2 + 1)) << "size " << size;
  }
  // Tags that differ in context, level, user tag or step never share a UCX tag, whatever
  // their other fields.
  for (int size : {2, 1000, 4095}) {
    const ucx::TagLayout layout(size);
    std::set<std::uint64_t> seen;
    for (std::uint32_t context : {0u, 1u, tags::kMaxContext, tags::kRuntimeEngineContext}) {
      for (std::uint32_t level : {0u, 2u, tags::kMaxLevel}) {
        for (std::uint32_t user : {0u, 4095u}) {
          for (std::uint32_t step : {0u, 0x3fffu}) {
            Tag t =
                collectives::makeTag(false, collectives::Opcode::alltoall, 39, user, 0x1ffff, step);
            t = tags::nameIfUnnamed(tags::nameIfUnnamed(t, tags::kContext, context), tags::kLevel,
                                    level);
            seen.insert(layout.data(size - 1, t));
          }
        }
      }
    }
    EXPECT_EQ(seen.size(), 4u * 3 * 2 * 2) << "size " << size;
  }
}

TEST(Ucx, SendBeforeAndAfterReceive) {
  Group g(2);
  const std::string early = "early", late = "late!";
  auto s1 = g[0].isend(1, 5, std::as_bytes(std::span(early)));  // unexpected at the receiver
  std::string got(5, '?');
  auto r1 = g[1].irecv(0, 5, std::as_writable_bytes(std::span(got)));
  waitOrFail(*r1);
  EXPECT_EQ(got, "early");
  auto r2 =
      g[1].irecv(0, 6, std::as_writable_bytes(std::span(got)));  // expected: posted before the send
  EXPECT_FALSE(r2->test());
  auto s2 = g[0].isend(1, 6, std::as_bytes(std::span(late)));
  waitOrFail(*r2);
  EXPECT_EQ(got, "late!");
  waitOrFail(*s1);
  waitOrFail(*s2);
  EXPECT_EQ(r2->peer(), 0);
}

// Both ranks wait at once: like any UCX rank, a sender makes progress (rendezvous
// transfers included) only while it tests or waits on a request.
TEST(Ucx, SameTagMatchesInOrder) {
  Group g(2);
  constexpr int kN = 200;
  std::vector<int> values(kN);
  std::vector<std::vector<std::byte>> big;
  for (unsigned i = 0; i < 3; ++i)
    big.push_back(pattern(1 << 20, i));
  runRanks(2, [&](int rank) {
    if (rank == 0) {
      std::vector<std::unique_ptr<Request>> sends;
      for (int i = 0; i < kN; ++i) {
        values[static_cast<std::size_t>(i)] = i;
        sends.push_back(g[0].isend(1, 1, std::as_bytes(std::span(&values[i], 1))));
      }
      for (auto& b : big)  // rendezvous messages on one tag keep their order too
        sends.push_back(g[0].isend(1, 2, b));
      for (auto& s : sends)
        waitOrFail(*s);
      return;
    }
    for (int i = 0; i < kN; ++i) {
      int v = -1;
      auto r = g[1].irecv(0, 1, std::as_writable_bytes(std::span(&v, 1)));
      waitOrFail(*r);
      ASSERT_EQ(v, i);
    }
    for (unsigned i = 0; i < 3; ++i) {
      std::vector<std::byte> got(1 << 20);
      auto r = g[1].irecv(0, 2, got);
      waitOrFail(*r);
      ASSERT_TRUE(got == big[i]) << "message " << i;
    }
  });
}

class UcxSizes : public ::testing::TestWithParam<int> {};

// Every rank sends to every rank (itself included) on many tags, including tags that
// differ only in the bits the layout folds; receives are posted in reverse order, so each
// must pick its message by peer and tag.
TEST_P(UcxSizes, ManyTagsAndPeersInterleaved) {
  Group g(GetParam());
  const int n = g.size();
  std::vector<Tag> tags;
  for (std::uint32_t seq = 0; seq < 4; ++seq) {
    for (std::uint8_t sig : {0, 1, 200})
      tags.push_back(collectives::makeTag(false, collectives::Opcode::allreduce, sig, 3, seq, 1));
    tags.push_back(collectives::makeTag(true, {}, 0, 3, seq, 1));
  }
  tags.push_back(0);
  tags.push_back(~Tag{0});
  const auto value = [&](int src, int dst, std::size_t t) {
    return static_cast<std::uint64_t>(src * 1000000 + dst * 1000) + t;
  };
  runRanks(n, [&](int r) {
    std::vector<std::uint64_t> out(tags.size() * static_cast<std::size_t>(n));
    std::vector<std::uint64_t> in(out.size(), 0);
    std::vector<std::unique_ptr<Request>> reqs;
    for (int p = 0; p < n; ++p) {
      for (std::size_t t = 0; t < tags.size(); ++t) {
        auto& slot = out[static_cast<std::size_t>(p) * tags.size() + t];
        slot = value(r, p, t);
        reqs.push_back(g[r].isend(p, tags[t], std::as_bytes(std::span(&slot, 1))));
      }
    }
    for (int p = n - 1; p >= 0; --p) {
      for (std::size_t t = tags.size(); t-- > 0;) {
        auto& slot = in[static_cast<std::size_t>(p) * tags.size() + t];
        reqs.push_back(g[r].irecv(p, tags[t], std::as_writable_bytes(std::span(&slot, 1))));
      }
    }
    for (auto& q : reqs)
      waitOrFail(*q);
    for (int p = 0; p < n; ++p) {
      for (std::size_t t = 0; t < tags.size(); ++t)
        ASSERT_EQ(in[static_cast<std::size_t>(p) * tags.size() + t], value(p, r, t));
    }
  });
}

TEST_P(UcxSizes, AllreduceOverUcx) {
  Group g(GetParam());
  Config config;
  config.timeout = 20s;
  config.ringChunkBytes = 4096;
  runRanks(g.size(), [&](int r) {
    Communicator comm(g.ranks[static_cast<std::size_t>(r)], config);
    for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{97}, std::size_t{20011},
                              std::size_t{1} << 20}) {
      auto data = testing::makeInput(ReduceOp::sum, DType::f32, r, count);
      comm.allreduce(testing::viewOf(data, DType::f32), ReduceOp::sum);
      ASSERT_TRUE(data == testing::expectedResult(ReduceOp::sum, DType::f32, g.size(), count))
          << "count " << count;
    }
    comm.barrier();
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, UcxSizes, ::testing::Values(2, 3, 4));

TEST(Ucx, ZeroByteMessages) {
  Group g(2);
  auto r = g[1].irecv(0, 3, {});
  auto s = g[0].isend(1, 3, {});
  waitOrFail(*r);
  waitOrFail(*s);
  auto s2 = g[0].isend(1, 4, {});  // unexpected
  auto r2 = g[1].irecv(0, 4, {});
  waitOrFail(*r2);
}

TEST(Ucx, LargeMessagesBothOrders) {
  Group g(2);
  constexpr std::size_t kBytes = 64u << 20;
  const auto data = pattern(kBytes, 3);
  std::vector<std::byte> got(kBytes);
  auto r = g[1].irecv(0, 9, got);  // posted first
  auto s = g[0].isend(1, 9, data);
  runRanks(2, [&](int rank) { waitOrFail(rank == 0 ? *s : *r); });
  EXPECT_TRUE(got == data);
  std::fill(got.begin(), got.end(), std::byte{0});
  s = g[0].isend(1, 10, data);  // unexpected rendezvous
  r = g[1].irecv(0, 10, got);
  runRanks(2, [&](int rank) { waitOrFail(rank == 0 ? *s : *r); });
  EXPECT_TRUE(got == data);
}

void expectSizeMismatch(Request& r, std::size_t sent, std::size_t expected) {
  try {
    r.waitUntil(Clock::now() + kSoon);
    FAIL() << "expected TransportError";
  } catch (const TransportError& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.peer(), 0);
    EXPECT_NE(what.find(std::to_string(sent) + " bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("expects " + std::to_string(expected)), std::string::npos) << what;
    EXPECT_NE(what.find("disagree"), std::string::npos) << what;
  }
}

TEST(Ucx, SizeMismatchFailsTheReceive) {
  Group g(2);
  for (std::size_t big : {std::size_t{12}, std::size_t{8} << 20}) {
    const auto msg = pattern(big, 1);
    std::vector<std::byte> small(big / 3), large(big * 2);
    auto s1 = g[0].isend(1, 1, msg);  // bigger than the receive: UCX truncates
    auto r1 = g[1].irecv(0, 1, small);
    runRanks(2, [&](int rank) {
      if (rank == 0) return (void)s1->waitUntil(Clock::now() + 2s);
      expectSizeMismatch(*r1, big, small.size());
    });
    auto s2 = g[0].isend(1, 2, msg);  // smaller than the receive
    auto r2 = g[1].irecv(0, 2, large);
    runRanks(2, [&](int rank) {
      if (rank == 0) return (void)s2->waitUntil(Clock::now() + 2s);
      expectSizeMismatch(*r2, big, large.size());
    });
  }
  // The pair still works afterwards.
  int ok = 7, got = 0;
  auto s = g[0].isend(1, 3, std::as_bytes(std::span(&ok, 1)));
  auto r = g[1].irecv(0, 3, std::as_writable_bytes(std::span(&got, 1)));
  waitOrFail(*r);
  EXPECT_EQ(got, 7);
}

double cpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}
TEST(Ucx, WaitTimesOutWithoutThrowingOrSpinning) {
  Group g(2);
  int v = 0;
  auto r = g[1].irecv(0, 1, std::as_writable_bytes(std::span(&v, 1)));
  auto start = Clock::now();
  EXPECT_FALSE(r->waitUntil(start + 50ms));
  EXPECT_GE(Clock::now() - start, 50ms);
  const double cpu = cpuSeconds();
  start = Clock::now();
  EXPECT_FALSE(r->waitUntil(start + 500ms));
  // Sleeping on the event fd: far less than the wall time (a spinning wait uses all of it).
  EXPECT_LT(cpuSeconds() - cpu, 0.25);
  EXPECT_FALSE(r->waitUntil(Clock::now() - 1s));  // past deadline: one look, no throw
}

TEST(Ucx, AbortReachesEveryRank) {
  Group g(4);
  int v = 0;
  std::vector<std::unique_ptr<Request>> pending(4);
  for (int r = 1; r < 4; ++r)
    pending[r] = g[r].irecv((r + 1) % 4, 1, std::as_writable_bytes(std::span(&v, 1)));
  const auto big = pattern(8 << 20, 2);
  runRanks(4, [&](int r) {
    if (r == 0) {
      std::this_thread::sleep_for(50ms);       // the others are waiting by now
      auto unmatched = g[0].isend(1, 2, big);  // rendezvous: its receive never comes
      g[0].abort(ErrorKind::timeout, "rank 2 did not take part");
      // Once aborted, giving up a pending send does not wait for it.
      const auto start = Clock::now();
      unmatched.reset();
      EXPECT_LT(Clock::now() - start, 500ms);
      return;
    }
    try {
      pending[static_cast<std::size_t>(r)]->waitUntil(Clock::now() + kSoon);
      ADD_FAILURE() << "expected Timeout on rank " << r;
    } catch (const Timeout& e) {
      EXPECT_EQ(e.peer(), -1);
      EXPECT_EQ(e.detail(), "rank 2 did not take part");
    }
  });
  g[1].abort(ErrorKind::transport, "second reason is ignored");
  for (int r = 0; r < 4; ++r)
    EXPECT_THROW(g[r].isend((r + 1) % 4, 1, {}), Timeout) << "rank " << r;
}

TEST(Ucx, ShutdownCancelsOwnAndFailsPeers) {
  Group g(2);
  int v = 0, w = 0;
  auto mine = g[0].irecv(1, 1, std::as_writable_bytes(std::span(&v, 1)));
  auto theirs = g[1].irecv(0, 1, std::as_writable_bytes(std::span(&w, 1)));
  // Rank 1 waits (and so progresses) while rank 0 leaves, as a live peer would.
  runRanks(2, [&](int rank) {
    if (rank == 0) {
      g[0].shutdown();
      EXPECT_THROW(mine->test(), Aborted);
      EXPECT_THROW(g[0].isend(1, 1, {}), Aborted);
      return;
    }
    try {
      theirs->waitUntil(Clock::now() + kSoon);
      ADD_FAILURE() << "expected TransportError";
    } catch (const TransportError& e) {
      EXPECT_EQ(e.peer(), 0);
      EXPECT_NE(std::string(e.what()).find("rank 0 has left"), std::string::npos) << e.what();
    }
  });
  EXPECT_THROW(g[1].isend(0, 1, {}), TransportError);
}

TEST(Ucx, DestroyedPendingSendClosesThatConnection) {
  Group g(2);
  const auto big = pattern(8 << 20, 5);
  auto unmatched = g[0].isend(1, 1, big);
  const auto start = Clock::now();
  unmatched.reset();  // waits out the grace period, then closes the connection to rank 1
  EXPECT_LT(Clock::now() - start, 3s);
  try {
    g[0].isend(1, 2, {});
    FAIL() << "expected TransportError";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("connection to rank 1 was closed"), std::string::npos)
        << e.what();
  }
  // Rank 1 is not told; it finds out when rank 0 leaves.
  int v = 0;
  auto r = g[1].irecv(0, 3, std::as_writable_bytes(std::span(&v, 1)));
  EXPECT_FALSE(r->test());
  runRanks(2, [&](int rank) {
    if (rank == 0) return g[0].shutdown();
    EXPECT_THROW(r->waitUntil(Clock::now() + kSoon), TransportError);
  });
}

TEST(Ucx, CancelledReceiveDoesNotSteal) {
  Group g(2);
  int first = 0, second = 0;
  { auto dropped = g[1].irecv(0, 1, std::as_writable_bytes(std::span(&first, 1))); }
  auto kept = g[1].irecv(0, 1, std::as_writable_bytes(std::span(&second, 1)));
  int v = 42;
  auto s = g[0].isend(1, 1, std::as_bytes(std::span(&v, 1)));
  waitOrFail(*kept);
  EXPECT_EQ(second, 42);
  EXPECT_EQ(first, 0);
}

TEST(Ucx, ConcurrentThreadsPerRank) {
  Group g(2);
  constexpr int kThreads = 3, kRounds = 200;
  runRanks(2 * kThreads, [&](int i) {
    const int rank = i % 2, tag = i / 2, peer = 1 - rank;
    for (int round = 0; round < kRounds; ++round) {
      int out = round * 10 + tag, in = -1;
      auto r =
          g[rank].irecv(peer, static_cast<Tag>(tag), std::as_writable_bytes(std::span(&in, 1)));
      auto s = g[rank].isend(peer, static_cast<Tag>(tag), std::as_bytes(std::span(&out, 1)));
      waitOrFail(*r);
      waitOrFail(*s);
      ASSERT_EQ(in, round * 10 + tag);
    }
  });
}

TEST(Ucx, BadArgumentsAreInvalidArgument) {
  Group g(2);
  EXPECT_THROW(g[0].isend(2, 1, {}), InvalidArgument);
  EXPECT_THROW(g[0].irecv(-1, 1, {}), InvalidArgument);
  Hub hub(1);
  EXPECT_THROW(makeUcxTransport(1, 1, hub.allgather(0)), InvalidArgument);
  EXPECT_THROW(makeUcxTransport(0, 0, hub.allgather(0)), InvalidArgument);
}

TEST(Ucx, HandshakeTimesOutNamingTheMissingRank) {
  // Rank 1 publishes a valid address but never takes part in the handshake.
  Hub hub(2);
  UcxOptions options;
  options.connectTimeout = 300ms;
  runRanks(2, [&](int r) {
    if (r == 0) {
      try {
        makeUcxTransport(0, 2, hub.allgather(0), options);
        ADD_FAILURE() << "expected Timeout";
      } catch (const Timeout& e) {
        EXPECT_NE(std::string(e.what()).find("rank 1 did not connect"), std::string::npos)
            << e.what();
      }
      return;
    }
    // Joins the address exchange, then stalls past rank 0's timeout. It may still find
    // rank 0's hello waiting and succeed; it must not hang either way.
    AllgatherFn slow = [&](std::span<const std::byte> mine) {
      auto all = hub.allgather(1)(mine);
      std::this_thread::sleep_for(1s);
      return all;
    };
    try {
      makeUcxTransport(1, 2, slow, options);
    } catch (const Error&) {
    }
  });
}

TEST(Ucx, AMalformedAddressIsRefusedNamingItsRank) {
  // Rank 0's out-of-band exchange hands it a bad record for rank 1: UCX must never see it
  // (a malformed address aborts the process inside ucp_ep_create).
  const std::vector<std::function<void(std::vector<std::vector<std::byte>>&)>> corruptions = {
      [](auto& all) { all[1].assign(40, std::byte{0x7f}); },   // not an address at all
      [](auto& all) { all[1].pop_back(); },                    // truncated
      [](auto& all) { all[1] = all[0]; },                      // another rank's
      [](auto& all) { all[1].resize(all[1].size() + 1000); },  // longer than it says
      [](auto& all) { all[1][12] = std::byte{0x0f}; },         // an unknown format
  };
  for (std::size_t i = 0; i < corruptions.size(); ++i) {
    Hub hub(2);
    UcxOptions options;
    options.connectTimeout = 300ms;
    runRanks(2, [&](int r) {
      if (r == 1) {
        try {
          makeUcxTransport(1, 2, hub.allgather(1), options);  // rank 0 never connects
        } catch (const Error&) {
        }
        return;
      }
      AllgatherFn bad = [&](std::span<const std::byte> mine) {
        auto all = hub.allgather(0)(mine);
        corruptions[i](all);
        return all;
      };
      try {
        makeUcxTransport(0, 2, bad, options);
        ADD_FAILURE() << "corruption " << i << " reached UCX";
      } catch (const TransportError& e) {
        EXPECT_EQ(e.peer(), 1);
        EXPECT_NE(std::string(e.what()).find("record of rank 1"), std::string::npos) << e.what();
      }
    });
  }
}

// Moves n bytes through fd with read or write, or throws.
template <typename Io, typename Byte>
void transferAll(Io io, int fd, Byte* p, std::size_t n) {
  for (std::size_t done = 0; done < n;) {
    const ssize_t k = io(fd, p + done, n - done);
    if (k <= 0) throw std::runtime_error("out-of-band socket failed");
    done += static_cast<std::size_t>(k);
  }
}

// The out-of-band exchange of two processes over a socket pair.
AllgatherFn socketAllgather(int fd, int rank) {
  return [fd, rank](std::span<const std::byte> mine) {
    const std::uint64_t n = mine.size();
    std::uint64_t m = 0;
    transferAll(::write, fd, reinterpret_cast<const char*>(&n), sizeof n);
    transferAll(::write, fd, mine.data(), mine.size());
    transferAll(::read, fd, reinterpret_cast<char*>(&m), sizeof m);
    std::vector<std::vector<std::byte>> all(2);
    all[static_cast<std::size_t>(rank)].assign(mine.begin(), mine.end());
    auto& theirs = all[static_cast<std::size_t>(1 - rank)];
    theirs.resize(m);
    transferAll(::read, fd, theirs.data(), m);
    return all;
  };
}

constexpr const char* kChildFd = "SKYRING_TEST_UCX_CHILD_FD";

// Rank 1 of Ucx.KilledPeerIsNamed, in its own process: connects, sends one message, and
// dies with its transport open when the parent says so.
TEST(UcxChild, DiesMidExchange) {
  const char* fd = std::getenv(kChildFd);
  if (fd == nullptr) GTEST_SKIP() << "runs only as the child process of Ucx.KilledPeerIsNamed";
  const int sock = std::atoi(fd);
  auto t = makeUcxTransport(1, 2, socketAllgather(sock, 1));
  const int v = 1;
  auto s = t->isend(0, 1, std::as_bytes(std::span(&v, 1)));
  s->waitUntil(Clock::now() + kSoon);
  char go = 0;
  [[maybe_unused]] auto n = ::read(sock, &go, 1);
  std::_Exit(0);
}

TEST(Ucx, KilledPeerIsNamed) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  // The child's end must survive exec; prepare everything before fork (only
  // async-signal-safe calls in the child).
  const int childFd = ::dup(sv[1]);
  ASSERT_GE(childFd, 0);
  std::string fdVar = std::string(kChildFd) + "=" + std::to_string(childFd);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e)
    envp.push_back(*e);
  envp.push_back(fdVar.data());
  envp.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char filter[] = "--gtest_filter=UcxChild.DiesMidExchange";
  char* argv[] = {self, filter, nullptr};
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execve(self, argv, envp.data());
    std::_Exit(127);
  }
  ::close(childFd);
  ::close(sv[1]);
  auto t = makeUcxTransport(0, 2, socketAllgather(sv[0], 0));
  int v = 0;
  auto r = t->irecv(1, 1, std::as_writable_bytes(std::span(&v, 1)));
  waitOrFail(*r);
  EXPECT_EQ(v, 1);
  auto pending = t->irecv(1, 2, std::as_writable_bytes(std::span(&v, 1)));
  ASSERT_EQ(::write(sv[0], "x", 1), 1);  // die now
  const auto start = Clock::now();
  try {
    pending->waitUntil(start + 30s);
    ADD_FAILURE() << "expected TransportError";
  } catch (const TransportError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("rank 1 died"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_THROW(t->isend(1, 3, {}), TransportError);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status)) << status;
  ::close(sv[0]);
}

}  // namespace
}  // namespace skyring::transport
