// SealingTransport over the in-process transport: round trips, and an attacker on the wire
// (a Wiretap between the sealing decorator and the network) who alters, replays, reorders
// and truncates messages, each of which the receiver must refuse naming link and peer.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/cloud_world.h"
#include "common/exact_data.h"
#include "common/run_ranks.h"
#include "skyring/communicator.h"
#include "skyring/inprocess_transport.h"
#include "transport/aead.h"
#include "transport/sealing_transport.h"

namespace skyring::transport {
namespace {

using namespace std::chrono_literals;
using topology::LinkClass;

const auto kSoon = 5s;
const std::string kToken = "a job token of the tests, 42 chars long..";

// Ranks 0 and 1 in cloud A (nodes a1, a2), ranks 2 and 3 in cloud B.
std::shared_ptr<const topology::Topology> twoClouds() {
  return testing::topologyOf({"A1", "A2", "B1", "B2"});
}

// One run's X25519 key pairs, one per rank (as each rank's Runtime draws its own): the same
// pairs for every call with that run number.
std::vector<std::shared_ptr<const aead::KeyExchange>> keyPairs(int run) {
  static std::mutex mu;
  static std::map<int, std::vector<std::shared_ptr<const aead::KeyExchange>>> runs;
  std::lock_guard lock(mu);
  auto& pairs = runs[run];
  while (pairs.size() < 5)
    pairs.push_back(std::make_shared<const aead::KeyExchange>());
  return pairs;
}

// What rank `rank` of a run seals with: the token, and the run's public keys.
SealingOptions options(int rank, Cipher cipher = Cipher::aes256gcm, std::string secret = kToken,
                       int run = 1, int ranks = 4) {
  SealingOptions o;
  o.secret = std::move(secret);
  const auto pairs = keyPairs(run);
  for (int r = 0; r < ranks; ++r) {
    const auto key = pairs[static_cast<std::size_t>(r)]->publicKey();
    o.publicKeys.emplace_back(key.begin(), key.end());
  }
  o.keyExchange = pairs[static_cast<std::size_t>(rank)];
  o.jobId = "test-job";
  o.cipher = cipher;
  o.sealed[topology::index(LinkClass::crossCloud)] = true;
  return o;
}

std::vector<std::byte> pattern(std::size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 131 + static_cast<std::size_t>(seed) * 7 + 1) & 0xff);
  return v;
}

// Sits where the network is: sees (and may rewrite or withhold) what the sealing decorator
// sends. A withheld message is kept for the test to inject later through the raw transport.
class Wiretap final : public Transport {
 public:
  // Returns false to withhold the message.
  using Edit = std::function<bool(int peer, Tag tag, std::vector<std::byte>& wire)>;
  Wiretap(std::shared_ptr<Transport> inner, Edit edit)
      : inner_(std::move(inner)), edit_(std::move(edit)) {}

  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override {
    std::vector<std::byte> wire(data.begin(), data.end());
    std::lock_guard lock(mu_);
    seen.push_back(wire);
    if (edit_ && !edit_(peer, tag, wire)) {
      held.push_back(wire);
      return inner_->isend(rank(), kSinkTag, {});  // completes; nobody receives it
    }
    // The in-process transport copies eagerly, so wire may go when this returns.
    return inner_->isend(peer, tag, wire);
  }
  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override {
    return inner_->irecv(peer, tag, data);
  }
  void abort(ErrorKind kind, const std::string& reason) noexcept override {
    inner_->abort(kind, reason);
  }
  void shutdown() noexcept override { inner_->shutdown(); }

  static constexpr Tag kSinkTag = ~Tag{0};
  std::vector<std::vector<std::byte>> seen;
  std::vector<std::vector<std::byte>> held;

 private:
  std::shared_ptr<Transport> inner_;
  Edit edit_;
  std::mutex mu_;
};

// Rank 0 (cloud A) sends through a wiretap to rank 2 (cloud B); both seal.
struct Link {
  explicit Link(Wiretap::Edit edit = nullptr, SealingOptions senderOptions = options(0),
                SealingOptions receiverOptions = options(2))
      : world(4), topo(twoClouds()) {
    tap = std::make_shared<Wiretap>(world.transport(0), std::move(edit));
    sender = std::make_shared<SealingTransport>(tap, topo, std::move(senderOptions));
    receiver =
        std::make_shared<SealingTransport>(world.transport(2), topo, std::move(receiverOptions));
  }
  // Sends data from 0 to 2 on tag; returns the receive's outcome (rethrows its failure).
  std::vector<std::byte> roundTrip(Tag tag, const std::vector<std::byte>& data) {
    std::vector<std::byte> out(data.size());
    auto recv = receiver->irecv(0, tag, out);
    EXPECT_TRUE(sender->isend(2, tag, data)->waitUntil(Clock::now() + kSoon));
    if (!recv->waitUntil(Clock::now() + kSoon)) throw std::runtime_error("receive timed out");
    return out;
  }
  InProcessWorld world;
  std::shared_ptr<const topology::Topology> topo;
  std::shared_ptr<Wiretap> tap;
  std::shared_ptr<SealingTransport> sender;
  std::shared_ptr<SealingTransport> receiver;
};

// The receive fails with a TransportError naming the cross-cloud link and rank 0.
template <typename F>
void expectRefused(F&& f, const std::string& also = "failed authentication") {
  try {
    f();
    ADD_FAILURE() << "the message was accepted";
  } catch (const TransportError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cross-cloud link from rank 0"), std::string::npos) << what;
    EXPECT_NE(what.find(also), std::string::npos) << what;
  }
}

TEST(SealingTransport, RoundTripsEveryDtypeAndSizeWithBothCiphers) {
  for (Cipher cipher : {Cipher::aes256gcm, Cipher::chacha20poly1305}) {
    Link link(nullptr, options(0, cipher), options(2, cipher));
    Tag tag = 1;
    for (DType dtype : kAllDTypes) {
      for (std::size_t count : {0ul, 1ul, 7ul, 1000ul, 65537ul, (1ul << 18) + 3}) {
        const auto data = testing::makeInput(ReduceOp::sum, dtype, 1, count);
        EXPECT_EQ(link.roundTrip(tag, data), data) << aead::cipherName(cipher) << " " << count;
        // On the wire: 16 bytes longer, and not the plaintext.
        const auto& wire = link.tap->seen.back();
        ASSERT_EQ(wire.size(), data.size() + aead::kTagBytes);
        if (data.size() >= 16) {
          EXPECT_FALSE(std::equal(data.begin(), data.begin() + 16, wire.begin()));
        }
        tag = tag % 3 + 1;  // tags recur: per-tag counters advance
      }
    }
  }
}

TEST(SealingTransport, TagsMayBeReceivedInAnotherOrderThanSent) {
  Link link;
  const auto a = pattern(100, 1), b = pattern(200, 2), c = pattern(300, 3);
  std::vector<std::byte> ra(100), rb(200), rc(300);
  ASSERT_TRUE(link.sender->isend(2, 7, a)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(link.sender->isend(2, 8, b)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(link.sender->isend(2, 7, c)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(link.receiver->irecv(0, 8, rb)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(link.receiver->irecv(0, 7, ra)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(link.receiver->irecv(0, 7, rc)->waitUntil(Clock::now() + kSoon));
  EXPECT_EQ(ra, a);
  EXPECT_EQ(rb, b);
  EXPECT_EQ(rc, c);
}

TEST(SealingTransport, OnlyTheChosenClassesAreSealed) {
  InProcessWorld world(4);
  auto topo = twoClouds();
  auto tap = std::make_shared<Wiretap>(world.transport(0), nullptr);
  SealingTransport sealed(tap, topo, options(0));
  EXPECT_FALSE(sealed.seals(1));  // intra-cloud
  EXPECT_TRUE(sealed.seals(2));
  const auto data = pattern(64, 5);
  std::vector<std::byte> out(64);
  auto one = world.transport(1);
  auto recv = one->irecv(0, 3, out);  // plain, as rank 1 does not seal
  ASSERT_TRUE(sealed.isend(1, 3, data)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(recv->waitUntil(Clock::now() + kSoon));
  EXPECT_EQ(out, data);
  EXPECT_EQ(tap->seen.back(), data);
}

TEST(SealingTransport, AlteredCiphertextOrTagIsRefused) {
  for (std::size_t which : {0ul, 500ul, 1000ul + aead::kTagBytes - 1}) {
    Link link([which](int, Tag, std::vector<std::byte>& wire) {
      wire[which] ^= std::byte{0x01};
      return true;
    });
    std::vector<std::byte> out;
    expectRefused([&] { out = link.roundTrip(5, pattern(1000, 1)); });
  }
}

TEST(SealingTransport, ReplayIsRefused) {
  Link link;
  const auto data = pattern(256, 3);
  EXPECT_EQ(link.roundTrip(9, data), data);
  const auto replay = link.tap->seen.back();
  std::vector<std::byte> out(256);
  auto recv = link.receiver->irecv(0, 9, out);
  ASSERT_TRUE(link.world.transport(0)->isend(2, 9, replay)->waitUntil(Clock::now() + kSoon));
  expectRefused([&] { recv->waitUntil(Clock::now() + kSoon); });
  EXPECT_EQ(out, std::vector<std::byte>(256));  // nothing unauthenticated was released
}

TEST(SealingTransport, ReorderWithinATagIsRefused) {
  Link link([](int, Tag, std::vector<std::byte>&) { return false; });  // withhold all
  const auto first = pattern(128, 1), second = pattern(128, 2);
  ASSERT_TRUE(link.sender->isend(2, 4, first)->waitUntil(Clock::now() + kSoon));
  ASSERT_TRUE(link.sender->isend(2, 4, second)->waitUntil(Clock::now() + kSoon));
  ASSERT_EQ(link.tap->held.size(), 2u);
  std::vector<std::byte> out(128);
  auto recv = link.receiver->irecv(0, 4, out);
  ASSERT_TRUE(
      link.world.transport(0)->isend(2, 4, link.tap->held[1])->waitUntil(Clock::now() + kSoon));
  expectRefused([&] { recv->waitUntil(Clock::now() + kSoon); });
}

TEST(SealingTransport, MessageMovedToAnotherTagIsRefused) {
  Link link([](int, Tag, std::vector<std::byte>&) { return false; });
  ASSERT_TRUE(link.sender->isend(2, 4, pattern(64, 1))->waitUntil(Clock::now() + kSoon));
  std::vector<std::byte> out(64);
  auto recv = link.receiver->irecv(0, 5, out);
  ASSERT_TRUE(
      link.world.transport(0)->isend(2, 5, link.tap->held[0])->waitUntil(Clock::now() + kSoon));
  expectRefused([&] { recv->waitUntil(Clock::now() + kSoon); });
}

TEST(SealingTransport, TruncatedMessageIsRefused) {
  Link link([](int, Tag, std::vector<std::byte>& wire) {
    wire.pop_back();
    return true;
  });
  expectRefused([&] { link.roundTrip(6, pattern(100, 1)); }, "is sealed");
}

TEST(SealingTransport, AnotherTokenOrCipherIsRefused) {
  {
    Link link(nullptr, options(0, Cipher::aes256gcm, "another token of 16+ chars"));
    expectRefused([&] { link.roundTrip(1, pattern(10, 1)); });
  }
  {
    Link link(nullptr, options(0, Cipher::chacha20poly1305));
    expectRefused([&] { link.roundTrip(1, pattern(10, 1)); });
  }
}

// A relaunch with the same token and job id draws new key pairs: what one run sealed does
// not open in another (and its nonces, which restart at zero, meet new keys).
TEST(SealingTransport, KeysAreNewInEveryRun) {
  Link link(nullptr, options(0, Cipher::aes256gcm, kToken, 1),
            options(2, Cipher::aes256gcm, kToken, 2));
  expectRefused([&] { link.roundTrip(1, pattern(10, 1)); });
}

// A public key that is no key (a low-order point: all zeros) cannot give a link key: the
// send fails naming the peer, and nothing is sent.
TEST(SealingTransport, UnusablePublicKeyIsRefused) {
  SealingOptions o = options(0);
  o.publicKeys[2].assign(32, std::byte{0});
  Link link(nullptr, o);
  try {
    link.sender->isend(2, 1, pattern(8, 1));
    ADD_FAILURE() << "sealed with an unusable key";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("keys of the link with rank 2"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(link.tap->seen.empty());
}

TEST(SealingTransport, CounterWrapIsRefusedNotRepeated) {
  SealingOptions sender = options(0), receiver = options(2);
  sender.messagesPerTag = receiver.messagesPerTag = 3;
  Link link(nullptr, sender, receiver);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(link.roundTrip(2, pattern(8, i)), pattern(8, i));
  EXPECT_THROW(link.sender->isend(2, 2, pattern(8, 0)), InvalidArgument);
  std::vector<std::byte> out(8);
  EXPECT_THROW(link.receiver->irecv(0, 2, out), InvalidArgument);
  EXPECT_EQ(link.roundTrip(3, pattern(8, 9)), pattern(8, 9));  // other tags go on
}

TEST(SealingTransport, PlainPeerIsRefusedByTheSealedPeerAndViceVersa) {
  InProcessWorld world(4);
  auto topo = twoClouds();
  SealingTransport sealed(world.transport(0), topo, options(0));
  auto plain = world.transport(2);
  const auto data = pattern(32, 1);
  std::vector<std::byte> out(32);
  // Sealed sends to plain: the plain receive fails (16 bytes too many).
  auto plainRecv = plain->irecv(0, 1, out);
  sealed.isend(2, 1, data);
  EXPECT_THROW(plainRecv->waitUntil(Clock::now() + kSoon), TransportError);
  // Plain sends to sealed: the sealed receive fails and says why.
  auto sealedRecv = sealed.irecv(2, 1, out);
  plain->isend(0, 1, data);
  try {
    sealedRecv->waitUntil(Clock::now() + kSoon);
    ADD_FAILURE() << "a plain message was accepted";
  } catch (const TransportError& e) {
    EXPECT_NE(std::string(e.what()).find("is sealed"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("SKYRING_ENCRYPT"), std::string::npos) << e.what();
  }
}

// In a collective the first rank that is refused aborts the group: every rank fails, the
// sealed ones and the plain ones, within the timeout and without a hang.
TEST(SealingTransport, MixedSealedAndPlainAllreduceFailsOnEveryRank) {
  auto topo = testing::topologyOf({"A1", "A2", "B1", "B2"});
  Config config;
  config.timeout = 5s;
  std::mutex mu;
  std::vector<std::string> errors(4);
  testing::runCloudRanks(
      topo, config,
      [&](Communicator& comm) {
        std::vector<float> buffer(1000, 1.0f);
        try {
          comm.allreduce(view(std::span(buffer)), ReduceOp::sum);
        } catch (const Error& e) {
          std::lock_guard lock(mu);
          errors[static_cast<std::size_t>(comm.rank())] = e.what();
        }
      },
      [&](int rank, std::shared_ptr<Transport> t) -> std::shared_ptr<Transport> {
        if (rank >= 2) return t;  // cloud B does not seal
        return std::make_shared<SealingTransport>(t, topo, options(rank));
      });
  bool named = false;
  for (const auto& e : errors) {
    EXPECT_FALSE(e.empty()) << "a rank finished the allreduce";
    named = named || e.find("bytes but the receive expects") != std::string::npos;
  }
  EXPECT_TRUE(named) << errors[0];
}

TEST(SealingTransport, OptionsFromConfig) {
  EXPECT_FALSE(SealingOptions::fromConfig(Config::fromMap({})));  // no token: plain, as before
  const auto o = SealingOptions::fromConfig(Config::fromMap({{"SKYRING_JOB_TOKEN", kToken}}));
  ASSERT_TRUE(o);
  EXPECT_TRUE(o->sealed[topology::index(LinkClass::crossCloud)]);
  EXPECT_FALSE(o->sealed[topology::index(LinkClass::intraCloud)]);
  EXPECT_NE(o->cipher, Cipher::automatic);
  const auto all =
      SealingOptions::fromConfig(Config::fromMap({{"SKYRING_JOB_TOKEN", kToken},
                                                  {"SKYRING_ENCRYPT", "all"},
                                                  {"SKYRING_CIPHER", "chacha20-poly1305"}}));
  ASSERT_TRUE(all);
  EXPECT_TRUE(all->sealed[topology::index(LinkClass::intraNode)]);
  EXPECT_EQ(all->cipher, Cipher::chacha20poly1305);
  EXPECT_FALSE(SealingOptions::fromConfig(
      Config::fromMap({{"SKYRING_JOB_TOKEN", kToken}, {"SKYRING_ENCRYPT", "none"}})));
  EXPECT_THROW(Config::fromMap({{"SKYRING_ENCRYPT", "cross_cloud"}}), InvalidArgument);
  EXPECT_THROW(Config::fromMap({{"SKYRING_ENCRYPT", "yes"}}), InvalidArgument);
  EXPECT_THROW(Config::fromMap({{"SKYRING_CIPHER", "rot13"}}), InvalidArgument);
}

// Allreduce across two clouds gives the same bits sealed as plain, exact and compressed
// (the codec runs above the transport, so it compresses before the bytes are sealed).
TEST(SealingTransport, SealedAllreduceMatchesPlainBitForBit) {
  auto topo = testing::topologyOf({"A1", "A2", "B1", "B2", "B3"});
  const std::size_t count = 10007;
  std::atomic<int> sealedMessages{0};
  auto run = [&](bool seal, const std::string& codec) {
    std::vector<std::vector<float>> out(static_cast<std::size_t>(topo->size()));
    testing::runCloudRanks(
        topo, Config{},
        [&](Communicator& comm) {
          std::vector<float> buffer(count);
          for (std::size_t i = 0; i < count; ++i)
            buffer[i] =
                static_cast<float>((i * 7 + static_cast<std::size_t>(comm.rank())) % 13) * 0.37f;
          CollectiveOptions o;
          o.compression = codec;
          comm.allreduce(view(std::span(buffer)), ReduceOp::sum, o);
          out[static_cast<std::size_t>(comm.rank())] = buffer;
        },
        [&](int me, std::shared_ptr<Transport> t) -> std::shared_ptr<Transport> {
          if (!seal) return t;
          auto tap = std::make_shared<Wiretap>(t, [&, me](int peer, Tag, auto&) {
            if (topo->linkClass(me, peer) == LinkClass::crossCloud) ++sealedMessages;
            return true;
          });
          return std::make_shared<SealingTransport>(tap, topo,
                                                    options(me, Cipher::aes256gcm, kToken, 1, 5));
        });
    return out;
  };
  for (const std::string codec : {"none", "int8"}) {
    sealedMessages = 0;
    EXPECT_EQ(run(true, codec), run(false, codec)) << codec;
    EXPECT_GT(sealedMessages.load(), 0) << codec;
  }
}

}  // namespace
}  // namespace skyring::transport
