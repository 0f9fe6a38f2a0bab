// The /metrics endpoint: answers, refusals, a port already taken, and bounds against bad
// clients; then through the Runtime (SKYRING_METRICS_PORT).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "runtime/metrics_server.h"
#include "skyring/error.h"
#include "skyring/runtime.h"

namespace skyring {
namespace {

// Sends request to 127.0.0.1:port and returns everything the server sends back until it
// closes (or 10 s pass).
std::string exchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "connect failed";
  }
  std::size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may close early (a request too large)
    sent += static_cast<std::size_t>(n);
  }
  std::string reply;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
    reply.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return reply;
}

std::shared_ptr<metrics::Registry> sampleRegistry() {
  auto r = std::make_shared<metrics::Registry>(
      std::vector<std::pair<std::string, std::string>>{{"rank", "0"}});
  r->counter("skyring_test_total", "A test counter.").with({}).add(42);
  return r;
}

runtime::MetricsServerOptions quick() {
  runtime::MetricsServerOptions o;
  o.requestTimeout = std::chrono::milliseconds(500);
  return o;
}

TEST(MetricsServer, ServesMetricsAndRefusesTheRest) {
  runtime::MetricsServer server(sampleRegistry(), quick(), Logger());
  ASSERT_GT(server.port(), 0);
  const std::string ok = exchange(server.port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << ok;
  EXPECT_NE(ok.find("skyring_test_total{rank=\"0\"} 42\n"), std::string::npos) << ok;
  const std::string query = exchange(server.port(), "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(query.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << query;
  const std::string missing = exchange(server.port(), "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(missing.rfind("HTTP/1.1 404", 0), 0u) << missing;
  const std::string post =
      exchange(server.port(), "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405", 0), 0u) << post;
}

TEST(MetricsServer, BadRequestsAreRefusedAndBounded) {
  runtime::MetricsServer server(sampleRegistry(), quick(), Logger());
  const std::string garbage = exchange(server.port(), "\x01\x02 nonsense\r\n\r\n");
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  // A header far past the limit: refused without reading it all.
  const std::string huge = exchange(
      server.port(), "GET /metrics HTTP/1.1\r\nX: " + std::string(1 << 20, 'a') + "\r\n\r\n");
  EXPECT_TRUE(huge.empty() || huge.rfind("HTTP/1.1 400", 0) == 0) << huge.substr(0, 200);
  // A body on a GET: refused.
  const std::string body =
      exchange(server.port(), "GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_EQ(body.rfind("HTTP/1.1 400", 0), 0u) << body;
  // A client that says nothing is cut off after the request timeout, and the server
  // still answers the next one.
  const auto begin = std::chrono::steady_clock::now();
  EXPECT_EQ(exchange(server.port(), ""), "");
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(5));
  const std::string ok = exchange(server.port(), "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200", 0), 0u) << ok;
}

TEST(MetricsServer, PortInUseIsATransportErrorNamingIt) {
  runtime::MetricsServer first(sampleRegistry(), quick(), Logger());
  runtime::MetricsServerOptions same = quick();
  same.port = first.port();
  try {
    runtime::MetricsServer second(sampleRegistry(), same, Logger());
    FAIL() << "bound a port already in use";
  } catch (const TransportError& e) {
    EXPECT_NE(e.detail().find("127.0.0.1:" + std::to_string(first.port())), std::string::npos)
        << e.detail();
  }
  runtime::MetricsServerOptions bad = quick();
  bad.address = "not-an-address";
  EXPECT_THROW(runtime::MetricsServer(sampleRegistry(), bad, Logger()), InvalidArgument);
}

TEST(MetricsServer, StopsWithClientsConnected) {
  auto server = std::make_unique<runtime::MetricsServer>(sampleRegistry(),
                                                         runtime::MetricsServerOptions{}, Logger());
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(server->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const auto begin = std::chrono::steady_clock::now();
  server.reset();  // a connection mid-request does not hold it up (its timeout is 5 s)
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(2));
  ::close(fd);
}

// Through the Runtime: a world of one serving on a free port, its series present.
TEST(RuntimeMetrics, ServesTheRuntimesSeries) {
  Config config;
  config.metricsPort = 0;
  auto rt = Runtime::init(config);
  ASSERT_GT(rt->metricsPort(), 0);
  std::vector<float> g(1000, 1.0f);
  rt->engine().allreduceAsync("g", Tensor::of(g)).wait();
  const std::string text = exchange(rt->metricsPort(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  for (const char* series :
       {"skyring_bytes_sent_total{rank=\"0\",link=\"cross_cloud\"}",
        "skyring_egress_dollars_total{rank=\"0\"}", "skyring_engine_queue_depth{rank=\"0\"} 0",
        "skyring_collective_seconds_count{rank=\"0\",op=\"allreduce\",algorithm=\"ring\"} 1",
        "skyring_fusion_fill_ratio_count", "skyring_rank_info{rank=\"0\",cloud=\"default\""}) {
    EXPECT_NE(text.find(series), std::string::npos) << series << " missing from\n" << text;
  }
}

// A port already taken: a warning, and the runtime works without the endpoint.
TEST(RuntimeMetrics, PortInUseIsAWarningAndTrainingGoesOn) {
  runtime::MetricsServer squatter(sampleRegistry(), quick(), Logger());
  Config config;
  config.metricsPort = squatter.port();
  testing::internal::CaptureStderr();
  auto rt = Runtime::init(config);
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("not serving /metrics on 127.0.0.1:" + std::to_string(squatter.port())),
            std::string::npos)
      << log;
  EXPECT_EQ(rt->metricsPort(), 0);
  std::vector<float> g(10, 2.0f);
  rt->engine().allreduceAsync("g", Tensor::of(g)).wait();
  EXPECT_EQ(g[0], 2.0f);
}

}  // namespace
}  // namespace skyring
