// The UCX transport's aborts and goodbyes sealed (UcxOptions::controlSeal, as the Runtime
// sets it for sealed jobs): they still reach every rank, and one sealed with another key
// (a stranger's) is ignored while the job goes on. Built into test_ucx, whose start-up
// turns UCX's memory hooks off.
#include <gtest/gtest.h>

#include <barrier>
#include <thread>

#include "common/run_ranks.h"
#include "skyring/ucx_transport.h"
#include "transport/sealing_transport.h"

namespace skyring::transport {
namespace {

using namespace std::chrono_literals;
using skyring::testing::runRanks;
const auto kSoon = 10s;

// What rank `rank` seals its control messages with: secret, and the group's public keys.
SealingOptions sealing(const std::vector<std::shared_ptr<const aead::KeyExchange>>& pairs, int rank,
                       const std::string& secret) {
  SealingOptions o;
  o.secret = secret;
  o.jobId = "control-seal-test";
  o.cipher = Cipher::aes256gcm;
  for (const auto& p : pairs) {
    const auto key = p->publicKey();
    o.publicKeys.emplace_back(key.begin(), key.end());
  }
  o.keyExchange = pairs[static_cast<std::size_t>(rank)];
  return o;
}

// n UCX ranks as threads; rank r's control messages sealed with secrets[r].
struct SealedGroup {
  explicit SealedGroup(const std::vector<std::string>& secrets)
      : ranks(secrets.size()), slots(secrets.size()) {
    const int n = static_cast<int>(secrets.size());
    std::vector<std::shared_ptr<const aead::KeyExchange>> pairs;
    for (int r = 0; r < n; ++r)
      pairs.push_back(std::make_shared<const aead::KeyExchange>());
    std::barrier<> barrier(n);
    runRanks(n, [&](int r) {
      UcxOptions options;
      options.controlSeal = sealing(pairs, r, secrets[static_cast<std::size_t>(r)]).controlSeal(r);
      ranks[static_cast<std::size_t>(r)] = makeUcxTransport(
          r, n,
          [&, r](std::span<const std::byte> mine) {
            slots[static_cast<std::size_t>(r)].assign(mine.begin(), mine.end());
            barrier.arrive_and_wait();
            auto all = slots;
            barrier.arrive_and_wait();
            return all;
          },
          options);
    });
  }
  ~SealedGroup() {
    runRanks(static_cast<int>(ranks.size()), [&](int r) { ranks[r]->shutdown(); });
  }
  Transport& operator[](int r) { return *ranks[static_cast<std::size_t>(r)]; }
  std::vector<std::shared_ptr<Transport>> ranks;
  std::vector<std::vector<std::byte>> slots;
};

const std::string kToken = "the job's token, 16+ chars";

TEST(UcxControlSeal, SealedAbortReachesEveryRank) {
  SealedGroup g({kToken, kToken, kToken});
  int v = 0;
  std::vector<std::unique_ptr<Request>> pending(3);
  for (int r = 1; r < 3; ++r)
    pending[r] = g[r].irecv(0, 1, std::as_writable_bytes(std::span(&v, 1)));
  runRanks(3, [&](int r) {
    if (r == 0) {
      std::this_thread::sleep_for(50ms);
      g[0].abort(ErrorKind::timeout, "rank 0 gives up");
      return;
    }
    try {
      pending[static_cast<std::size_t>(r)]->waitUntil(Clock::now() + kSoon);
      ADD_FAILURE() << "expected Timeout on rank " << r;
    } catch (const Timeout& e) {
      EXPECT_EQ(e.detail(), "rank 0 gives up");
    }
  });
}

TEST(UcxControlSeal, ForgedAbortAndGoodbyeAreIgnored) {
  // Rank 2 seals with another token: its abort and goodbye do not open on 0 and 1.
  SealedGroup g({kToken, kToken, "a stranger's token, 16+ chars"});
  g[2].abort(ErrorKind::aborted, "forged: stop the job");
  g[2].shutdown();
  // Exchanges between 0 and 1 go on; each wait progresses the workers, which takes in the
  // forgeries (a genuine abort would fail the second exchange at the latest).
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(50ms);
    const int sent = 42 + i;
    int got = 0;
    auto recv = g[1].irecv(0, 7, std::as_writable_bytes(std::span(&got, 1)));
    auto send = g[0].isend(1, 7, std::as_bytes(std::span(&sent, 1)));
    ASSERT_TRUE(send->waitUntil(Clock::now() + kSoon));
    ASSERT_TRUE(recv->waitUntil(Clock::now() + kSoon));
    EXPECT_EQ(got, sent);
  }
}

TEST(UcxControlSeal, SealedGoodbyeIsHeard) {
  SealedGroup g({kToken, kToken});
  int w = 0;
  auto theirs = g[1].irecv(0, 1, std::as_writable_bytes(std::span(&w, 1)));
  runRanks(2, [&](int rank) {
    if (rank == 0) {
      g[0].shutdown();
      return;
    }
    try {
      theirs->waitUntil(Clock::now() + kSoon);
      ADD_FAILURE() << "expected TransportError";
    } catch (const TransportError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 has left"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace skyring::transport
