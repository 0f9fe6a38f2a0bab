// The out-of-band channel picked from Config::launch: torchrun-style ranks as threads
// exchanging through the TCP store hosted by rank 0; a world of one with no launcher.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "bootstrap/out_of_band.h"

namespace skyring::bootstrap {
namespace {

int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(OutOfBand, AloneIsAWorldOfOne) {
  auto oob = makeOutOfBand(Config::fromMap({}));
  EXPECT_EQ(oob->size(), 1);
  const std::byte b{7};
  auto all = oob->allgather(std::span(&b, 1));
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0][0], std::byte{7});
  oob->barrier();
}

TEST(OutOfBand, TorchrunStyleRanksExchangeThroughTheStore) {
  constexpr int kRanks = 4;
  const std::string port = std::to_string(freePort());
  std::vector<std::thread> threads;
  std::vector<int> ok(kRanks, 0);
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      Config c = Config::fromMap({{"RANK", std::to_string(r)},
                                  {"WORLD_SIZE", std::to_string(kRanks)},
                                  {"MASTER_ADDR", "127.0.0.1"},
                                  {"MASTER_PORT", port},
                                  {"SKYRING_INIT_TIMEOUT_MS", "10000"}});
      auto oob = makeOutOfBand(c);
      std::vector<std::byte> mine(static_cast<std::size_t>(r), std::byte(r));
      for (int round = 0; round < 3; ++round) {
        auto all = oob->allgather(mine);
        bool good = all.size() == kRanks;
        for (int p = 0; good && p < kRanks; ++p) {
          good = all[p] == std::vector<std::byte>(static_cast<std::size_t>(p), std::byte(p));
        }
        oob->barrier();
        ok[r] += good ? 1 : 0;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  for (int r = 0; r < kRanks; ++r)
    EXPECT_EQ(ok[r], 3) << "rank " << r;
}

}  // namespace
}  // namespace skyring::bootstrap
