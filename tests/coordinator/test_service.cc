// The coordinator service and its Client end to end on 127.0.0.1: rounds with 3 clients,
// quorum and deadline, late submissions, refusals with reasons, garbage and slow
// connections beside a good client, the connection limit, resumption from a checkpoint.
// The service runs in-process on a thread (port 0); every wait is bounded by timeouts.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <thread>

#include "coordinator/auth.h"
#include "coordinator/service.h"
#include "coordinator_test_util.h"
#include "skyring/coordinator.h"
#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

using namespace std::chrono_literals;
using test::seeded;

constexpr std::size_t kN = 1000;
const std::string kToken = "job-secret";

ServiceOptions serviceOptions(std::uint32_t quorum = 3, LatePolicy late = LatePolicy::drop) {
  ServiceOptions o;
  o.token = kToken;
  o.aggregator = test::options3(quorum, late);
  o.aggregator.deadline = 60s;
  o.initialWeights = seeded(kN, 1);
  o.idleTimeout = 5s;
  o.weightsFrameElements = 300;  // several weights frames per fetch
  return o;
}

ClientOptions clientOptions(const Service& s, const std::string& cluster,
                            const std::string& token = kToken) {
  ClientOptions o;
  o.port = s.port();
  o.cluster = cluster;
  o.token = token;
  o.connectTimeout = 2s;
  o.connectAttempts = 2;
  o.ioTimeout = 10s;
  o.roundTimeout = 10s;
  o.chunkElements = 128;
  return o;
}

// What an uninterrupted aggregator makes of the same submissions (order does not matter).
std::vector<float> expected(const ServiceOptions& so,
                            const std::vector<std::pair<std::string, std::vector<float>>>& subs,
                            const std::string& codec = "none") {
  Aggregator agg(so.aggregator, test::freshState(so.initialWeights), Clock::now());
  std::uint64_t samples = 10;
  for (const auto& [name, delta] : subs)
    test::submit(agg, name, 0, delta, samples++, Clock::now(), 128, codec);
  agg.poll(Clock::now() + 1h);
  return agg.state().weights;
}

// A raw connection for the malformed cases: frames by hand, the handshake optional.
struct Raw {
  explicit Raw(std::uint16_t port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  }
  ~Raw() { ::close(fd); }
  void send(std::span<const std::byte> b) {
    ASSERT_EQ(::send(fd, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
  }
  // The next frame, or nullopt when the service closed the connection (or 5 s passed).
  std::optional<wire::Frame> next(std::chrono::milliseconds wait = 5s) {
    wire::Frame f;
    const auto until = std::chrono::steady_clock::now() + wait;
    while (!decoder.next(f)) {
      pollfd p{fd, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1) return {};
      std::byte buf[65536];
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return {};
      decoder.feed(std::span(buf, static_cast<std::size_t>(n)));
    }
    return f;
  }
  // True when the service closes the connection within wait.
  bool closedWithin(std::chrono::milliseconds wait) {
    while (auto f = next(wait)) {
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) return false;
    std::byte b;
    return ::recv(fd, &b, 1, MSG_DONTWAIT) == 0;
  }
  void hello(const std::string& cluster) {
    auto c = next();
    ASSERT_TRUE(c);
    const auto ch = wire::parseChallenge(*c);
    const auto key = auth::deriveKey(kToken);
    wire::Hello h{cluster, auth::randomNonce(), {}};
    h.proof = auth::clientProof(key, ch.serverNonce, h.clientNonce, cluster);
    send(wire::encode(h));
    auto w = next();
    ASSERT_TRUE(w);
    ASSERT_EQ(w->type, wire::FrameType::welcome);
  }
  wire::ErrorMessage expectError() {
    auto f = next();
    EXPECT_TRUE(f);
    if (!f) return {};
    EXPECT_EQ(f->type, wire::FrameType::error);
    return wire::parseError(*f);
  }
  int fd = -1;
  wire::FrameDecoder decoder;
};

TEST(CoordinatorService, FullRoundWithThreeClients) {
  auto so = serviceOptions();
  Service service(so);
  service.start();
  const std::vector<std::string> names = {"aws", "azure", "gcp"};
  std::vector<std::pair<std::string, std::vector<float>>> subs;
  for (unsigned i = 0; i < 3; ++i)
    subs.emplace_back(names[i], seeded(kN, 10 + i, 0.1f));
  std::vector<std::vector<float>> got(3, std::vector<float>(kN));
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      Client c(clientOptions(service, names[i]));
      EXPECT_EQ(c.openRound(), 0u);
      EXPECT_EQ(c.elementCount(), kN);
      EXPECT_EQ(c.submit(0, subs[i].second, 10 + i), SubmitOutcome::counted);
      // A retry of the same (cluster, round) is never counted twice.
      const auto again = c.submit(0, subs[i].second, 10 + i);
      EXPECT_TRUE(again == SubmitOutcome::duplicate || again == SubmitOutcome::late);
      EXPECT_EQ(c.fetch(0, got[i]), 0u);
    });
  }
  for (auto& t : threads)
    t.join();
  const auto want = expected(so, subs);
  for (unsigned i = 0; i < 3; ++i)
    EXPECT_EQ(std::memcmp(got[i].data(), want.data(), kN * 4), 0) << names[i];
  Client c(clientOptions(service, "aws"));
  EXPECT_EQ(c.openRound(), 1u);
  const auto st = c.status(0);
  EXPECT_EQ(st.state, RoundInfo::State::closed);
  EXPECT_TRUE(st.counted);
}

TEST(CoordinatorService, DeadlineClosesWithQuorumAndTheMissingClientIsLate) {
  auto so = serviceOptions(2);
  so.aggregator.deadline = 300ms;
  Service service(so);
  service.start();
  const auto a = seeded(kN, 20, 0.1f), b = seeded(kN, 21, 0.1f);
  Client aws(clientOptions(service, "aws")), azure(clientOptions(service, "azure"));
  EXPECT_EQ(aws.submit(0, a, 10, "int8"), SubmitOutcome::counted);
  EXPECT_EQ(azure.submit(0, b, 11, "int8"), SubmitOutcome::counted);
  std::vector<float> w(kN);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(aws.fetch(0, w), 0u);  // waits for the deadline: gcp never came
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms);
  const auto want = expected(so, {{"aws", a}, {"azure", b}}, "int8");
  EXPECT_EQ(std::memcmp(w.data(), want.data(), kN * 4), 0);
  Client gcp(clientOptions(service, "gcp"));
  EXPECT_EQ(gcp.openRound(), 1u);
  EXPECT_EQ(gcp.submit(0, seeded(kN, 22), 5), SubmitOutcome::late);
  // It rejoins from the current weights.
  std::vector<float> latest(kN);
  EXPECT_EQ(gcp.fetch(kLatest, latest), 0u);
  EXPECT_EQ(latest, w);
}

TEST(CoordinatorService, LateSubmissionIsCarriedWhenConfigured) {
  auto so = serviceOptions(2, LatePolicy::carry);
  so.aggregator.deadline = 200ms;
  Service service(so);
  service.start();
  Client aws(clientOptions(service, "aws")), azure(clientOptions(service, "azure"));
  ASSERT_EQ(aws.submit(0, seeded(kN, 30, 0.1f), 1), SubmitOutcome::counted);
  ASSERT_EQ(azure.submit(0, seeded(kN, 31, 0.1f), 1), SubmitOutcome::counted);
  std::vector<float> w(kN);
  ASSERT_EQ(aws.fetch(0, w), 0u);
  Client gcp(clientOptions(service, "gcp"));
  EXPECT_EQ(gcp.submit(0, seeded(kN, 32, 0.1f), 1), SubmitOutcome::carried);
}

TEST(CoordinatorService, WrongTokenAndUnknownClusterAreRefusedWithAReason) {
  Service service(serviceOptions());
  service.start();
  try {
    Client c(clientOptions(service, "aws", "not-the-token"));
    FAIL() << "a wrong token was accepted";
  } catch (const TransportError& e) {
    EXPECT_NE(e.detail().find("wrong job token"), std::string::npos) << e.detail();
  }
  try {
    Client c(clientOptions(service, "oracle"));
    FAIL() << "an unknown cluster was accepted";
  } catch (const TransportError& e) {
    EXPECT_NE(e.detail().find("unknown cluster 'oracle'"), std::string::npos) << e.detail();
  }
  // Another wire version: refused with its code before anything else.
  Raw raw(service.port());
  ASSERT_TRUE(raw.next());  // the challenge
  auto frame = wire::encode(wire::Status{0});
  frame[4] = std::byte{2};
  raw.send(frame);
  const auto e = raw.expectError();
  EXPECT_EQ(e.code, wire::ErrorCode::badVersion);
  EXPECT_NE(e.reason.find("version 2"), std::string::npos) << e.reason;
}

TEST(CoordinatorService, BadInputClosesOnlyThatConnection) {
  auto so = serviceOptions();
  so.idleTimeout = 300ms;
  Service service(so);
  service.start();
  std::vector<float> w(kN);
  Client good(clientOptions(service, "gcp"));

  Raw garbage(service.port());
  ASSERT_TRUE(garbage.next());  // the challenge
  garbage.send(std::as_bytes(std::span("GET / HTTP/1.1\r\n\r\n", 18)));
  EXPECT_EQ(garbage.expectError().code, wire::ErrorCode::badFrame);
  EXPECT_TRUE(garbage.closedWithin(2s));

  Raw oversized(service.port());
  oversized.hello("aws");
  auto big = wire::encode(wire::Status{0});
  big[8] = big[9] = big[10] = std::byte{0xff};  // a length of ~4 GiB: refused at once
  oversized.send(big);
  const auto e = oversized.expectError();
  EXPECT_EQ(e.code, wire::ErrorCode::badFrame);
  EXPECT_NE(e.reason.find("exceeds the limit"), std::string::npos) << e.reason;

  Raw mismatch(service.port());
  mismatch.hello("aws");
  mismatch.send(wire::encode(wire::SubmitBegin{0, wire::SubmitCodec::none, kN + 1, 1}));
  const auto m = mismatch.expectError();
  EXPECT_EQ(m.code, wire::ErrorCode::badRequest);
  EXPECT_NE(m.reason.find("the model has 1000"), std::string::npos) << m.reason;

  // A slow client: half a header, then nothing; it is cut off by the idle timeout.
  Raw slow(service.port());
  slow.hello("azure");
  const auto frame = wire::encode(wire::Status{0});
  slow.send(std::span(frame).first(7));
  EXPECT_TRUE(slow.closedWithin(3s));

  // A truncated frame from a client that then leaves.
  {
    Raw truncated(service.port());
    truncated.hello("aws");
    truncated.send(std::span(frame).first(20));
  }

  // Meanwhile, and after, the good client is served.
  EXPECT_EQ(good.status(0).state, RoundInfo::State::open);
  for (const char* name : {"aws", "azure"}) {
    Client c(clientOptions(service, name));
    EXPECT_EQ(c.submit(0, seeded(kN, 40, 0.1f), 1), SubmitOutcome::counted);
  }
  EXPECT_EQ(good.submit(0, seeded(kN, 41, 0.1f), 1), SubmitOutcome::counted);
  EXPECT_EQ(good.fetch(0, w), 0u);
}

TEST(CoordinatorService, AClusterThatDropsMidSubmissionIsUndoneAndMayReconnect) {
  auto so = serviceOptions();
  Service service(so);
  service.start();
  std::vector<std::pair<std::string, std::vector<float>>> subs;
  for (unsigned i = 0; i < 3; ++i)
    subs.emplace_back(std::vector<std::string>{"aws", "azure", "gcp"}[i], seeded(kN, 80 + i, 0.1f));
  const auto chunks = test::encodeChunks(seeded(kN, 99), 128);
  {  // aws starts with other values and vanishes mid-submission: undone
    Raw gone(service.port());
    gone.hello("aws");
    gone.send(wire::encode(wire::SubmitBegin{0, wire::SubmitCodec::none, kN, 10}));
    ASSERT_EQ(gone.next()->type, wire::FrameType::roundStatus);
    gone.send(wire::encode(wire::SubmitChunk{chunks[0].first, chunks[0].second}));
  }
  // azure starts on one connection, then reconnects (the old one still open) and begins
  // again: the old connection's close in the middle must not undo the new submission.
  auto stale = std::make_unique<Raw>(service.port());
  stale->hello("azure");
  stale->send(wire::encode(wire::SubmitBegin{0, wire::SubmitCodec::none, kN, 11}));
  ASSERT_EQ(stale->next()->type, wire::FrameType::roundStatus);
  stale->send(wire::encode(wire::SubmitChunk{chunks[0].first, chunks[0].second}));
  Raw fresh(service.port());
  fresh.hello("azure");
  fresh.send(wire::encode(wire::SubmitBegin{0, wire::SubmitCodec::none, kN, 11}));
  ASSERT_EQ(fresh.next()->type, wire::FrameType::roundStatus);
  const auto azureChunks = test::encodeChunks(subs[1].second, 128);
  fresh.send(wire::encode(wire::SubmitChunk{azureChunks[0].first, azureChunks[0].second}));
  stale.reset();
  std::this_thread::sleep_for(50ms);  // the service sees the close
  for (std::size_t c = 1; c < azureChunks.size(); ++c)
    fresh.send(wire::encode(wire::SubmitChunk{azureChunks[c].first, azureChunks[c].second}));
  fresh.send(wire::encode(wire::SubmitEnd{0}));
  const auto ended = fresh.next();
  ASSERT_TRUE(ended);
  ASSERT_EQ(ended->type, wire::FrameType::roundStatus);
  EXPECT_TRUE(wire::parseRoundStatus(*ended).counted);
  Client aws(clientOptions(service, "aws")), gcp(clientOptions(service, "gcp"));
  EXPECT_EQ(aws.submit(0, subs[0].second, 10), SubmitOutcome::counted);
  EXPECT_EQ(gcp.submit(0, subs[2].second, 12), SubmitOutcome::counted);
  std::vector<float> w(kN);
  ASSERT_EQ(gcp.fetch(0, w), 0u);
  const auto want = expected(so, subs);
  EXPECT_EQ(std::memcmp(w.data(), want.data(), kN * 4), 0);
}

TEST(CoordinatorService, ConnectionLimit) {
  auto so = serviceOptions();
  so.maxConnections = 2;
  Service service(so);
  service.start();
  auto first = std::make_unique<Raw>(service.port());
  Raw second(service.port());
  ASSERT_TRUE(first->next());
  ASSERT_TRUE(second.next());
  try {
    Client c(clientOptions(service, "aws"));
    FAIL() << "a third connection was served";
  } catch (const TransportError& e) {
    EXPECT_NE(e.detail().find("too many connections"), std::string::npos) << e.detail();
  }
  first.reset();  // one leaves: the next is served
  std::this_thread::sleep_for(100ms);
  Client c(clientOptions(service, "aws"));
  EXPECT_EQ(c.status(0).state, RoundInfo::State::open);
}

TEST(CoordinatorService, AFloodOfConnectionsIsLimitedAndTheOthersAreServed) {
  auto so = serviceOptions();
  so.maxConnections = 64;
  Service service(so);
  service.start();
  Client good(clientOptions(service, "gcp"));  // in before the flood
  std::vector<std::unique_ptr<Raw>> flood;
  for (int i = 0; i < 400; ++i)
    flood.push_back(std::make_unique<Raw>(service.port()));
  int refused = 0;
  for (auto& r : flood) {
    auto f = r->next(2s);
    ASSERT_TRUE(f);
    if (f->type == wire::FrameType::error) {
      EXPECT_EQ(wire::parseError(*f).code, wire::ErrorCode::overloaded);
      ++refused;
    }
  }
  EXPECT_EQ(refused, 400 - 63);  // 64 in all, good included
  EXPECT_EQ(good.status(0).state, RoundInfo::State::open);
  flood.clear();
  std::this_thread::sleep_for(100ms);
  for (const char* name : {"aws", "azure"}) {
    Client c(clientOptions(service, name));
    EXPECT_EQ(c.submit(0, seeded(kN, 90, 0.1f), 1), SubmitOutcome::counted);
  }
  EXPECT_EQ(good.submit(0, seeded(kN, 91, 0.1f), 1), SubmitOutcome::counted);
}

TEST(CoordinatorService, ResumesFromItsCheckpoint) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("skyring-coord-svc-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto so = serviceOptions();
  so.checkpointDir = dir.string();
  so.aggregator.outer.kind = OuterKind::nesterov;
  std::vector<float> afterOne(kN);
  const std::vector<std::string> names = {"aws", "azure", "gcp"};
  {
    Service service(so);
    service.start();
    for (unsigned i = 0; i < 3; ++i) {
      Client c(clientOptions(service, names[i]));
      EXPECT_EQ(c.submit(0, seeded(kN, 50 + i, 0.1f), 7), SubmitOutcome::counted);
    }
    Client c(clientOptions(service, "aws"));
    ASSERT_EQ(c.fetch(0, afterOne), 0u);
  }
  Service restarted(so);
  restarted.start();
  EXPECT_EQ(restarted.openRound(), 1u);
  Client c(clientOptions(restarted, "azure"));
  EXPECT_EQ(c.openRound(), 1u);
  std::vector<float> w(kN);
  EXPECT_EQ(c.fetch(kLatest, w), 0u);
  EXPECT_EQ(std::memcmp(w.data(), afterOne.data(), kN * 4), 0);
  // A resubmission of the closed round is known and not counted again.
  EXPECT_EQ(c.submit(0, seeded(kN, 51, 0.1f), 7), SubmitOutcome::duplicate);
  std::filesystem::remove_all(dir);
}

TEST(CoordinatorService, ServesMetrics) {
  auto so = serviceOptions();
  so.metricsPort = 0;
  Service service(so);
  service.start();
  ASSERT_GT(service.metricsPort(), 0);
  for (const char* name : {"aws", "azure", "gcp"}) {
    Client c(clientOptions(service, name));
    EXPECT_EQ(c.submit(0, seeded(kN, 60, 0.1f), 1), SubmitOutcome::counted);
  }
  try {
    Client c(clientOptions(service, "aws", "wrong"));
  } catch (const TransportError&) {
  }
  Raw http(static_cast<std::uint16_t>(service.metricsPort()));
  const std::string get = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  http.send(std::as_bytes(std::span(get)));
  std::string body;
  char buf[4096];
  for (ssize_t n; (n = ::recv(http.fd, buf, sizeof(buf), 0)) > 0;)
    body.append(buf, static_cast<std::size_t>(n));
  EXPECT_NE(body.find("skyring_coordinator_rounds_total 1\n"), std::string::npos) << body;
  EXPECT_NE(body.find("skyring_coordinator_submissions_total{outcome=\"counted\"} 3\n"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("skyring_coordinator_refusals_total 1\n"), std::string::npos) << body;
  EXPECT_NE(body.find("skyring_coordinator_round_seconds_count 1\n"), std::string::npos) << body;
}

TEST(CoordinatorService, RefusesANonLoopbackAddressWithoutTls) {
  auto so = serviceOptions();
  so.address = "0.0.0.0";
  try {
    Service s(so);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(e.detail().find("without TLS"), std::string::npos) << e.detail();
  }
}

TEST(CoordinatorClient, ConnectFailsInBoundedTime) {
  ClientOptions o;
  o.port = 1;  // nothing listens there
  o.cluster = "aws";
  o.connectAttempts = 2;
  o.connectTimeout = 500ms;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(Client c(o), TransportError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

}  // namespace
}  // namespace skyring::coordinator
