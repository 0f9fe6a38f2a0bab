// kill -9 of the skyring-coordinator process at random points of its rounds, restarted
// from its checkpoint each time, while 3 clients submit and fetch with retries: the final
// weights equal an uninterrupted aggregation's bit for bit, and no round is lost or
// counted twice. Bounded: a few rounds, every client call under its timeouts.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "coordinator/aggregator.h"
#include "coordinator_test_util.h"
#include "skyring/coordinator.h"
#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t kN = 100000;
constexpr std::uint64_t kRounds = 8;
const std::vector<std::string> kNames = {"aws", "azure", "gcp"};

std::vector<float> deltaOf(std::size_t cluster, std::uint64_t round) {
  return test::seeded(kN, static_cast<unsigned>(100 + 10 * round + cluster), 0.05f);
}

// A free loopback port (bound and released; the service binds it with SO_REUSEADDR).
std::uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

class Process {
 public:
  explicit Process(std::vector<std::string> args) {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      const int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, STDOUT_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Process() { kill(); }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

TEST(CoordinatorServiceRestart, KillNineAtRandomPointsLosesNothing) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("skyring-coord-kill-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "ckpt");
  std::ofstream(dir / "token") << "kill-test-token\n";
  const std::uint16_t port = freePort();
  const std::vector<std::string> args = {SKYRING_COORDINATOR_BIN,
                                         "--clusters",
                                         "aws,azure,gcp",
                                         "--elements",
                                         std::to_string(kN),
                                         "--token-file",
                                         (dir / "token").string(),
                                         "--port",
                                         std::to_string(port),
                                         "--checkpoint-dir",
                                         (dir / "ckpt").string(),
                                         "--outer",
                                         "nesterov"};
  auto service = std::make_unique<Process>(args);

  std::atomic<bool> failed{false};
  std::atomic<int> retries{0};  // calls cut off by a kill (reported, not required)
  std::vector<std::vector<float>> finals(3, std::vector<float>(kN));
  std::vector<std::thread> clients;
  for (std::size_t i = 0; i < 3; ++i) {
    clients.emplace_back([&, i] {
      ClientOptions o;
      o.port = port;
      o.cluster = kNames[i];
      o.token = "kill-test-token";
      o.connectTimeout = 1s;
      o.connectAttempts = 40;  // up to ~1 min of restarts
      o.ioTimeout = 5s;
      o.roundTimeout = 10s;
      o.chunkElements = 4096;
      std::optional<Client> c;
      const auto giveUp = std::chrono::steady_clock::now() + 60s;
      for (std::uint64_t r = 0; r < kRounds && !failed; ++r) {
        const auto delta = deltaOf(i, r);
        for (;;) {
          try {
            if (!c) c.emplace(o);
            const auto outcome = c->submit(r, delta, 10 + i);
            EXPECT_TRUE(outcome == SubmitOutcome::counted || outcome == SubmitOutcome::duplicate)
                << submitOutcomeName(outcome);
            EXPECT_EQ(c->fetch(r, finals[i]), r);
            break;
          } catch (const Error& e) {
            ++retries;
            if (failed || std::chrono::steady_clock::now() > giveUp) {
              ADD_FAILURE() << kNames[i] << " round " << r << ": " << e.what();
              failed = true;
              return;
            }
            std::this_thread::sleep_for(20ms);
          }
        }
      }
    });
  }
  // Kill and restart at random points while the clients work.
  std::mt19937 rng(20261129);
  std::uniform_int_distribution<int> pause(5, 80);
  for (int k = 0; k < 8; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause(rng)));
    service->kill();
    service = std::make_unique<Process>(args);
  }
  for (auto& t : clients)
    t.join();
  service.reset();
  std::cout << "[   INFO   ] " << retries << " client calls cut off by kill -9 and retried\n";

  // The uninterrupted run: the same submissions into one aggregator.
  AggregatorOptions ao;
  ao.clusters = kNames;
  ao.quorum = 3;
  ao.outer.kind = OuterKind::nesterov;
  Aggregator agg(ao, test::freshState(std::vector<float>(kN, 0.0f)), Clock::now());
  for (std::uint64_t r = 0; r < kRounds; ++r)
    for (std::size_t i = 0; i < 3; ++i)
      test::submit(agg, kNames[i], r, deltaOf(i, r), 10 + i, Clock::now(), 4096);
  ASSERT_EQ(agg.state().round, kRounds);
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_EQ(std::memcmp(finals[i].data(), agg.state().weights.data(), kN * 4), 0) << kNames[i];
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace skyring::coordinator
