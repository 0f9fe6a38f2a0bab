// aead_bench: what sealing costs one core. Seal and open throughput of AES-256-GCM and
// ChaCha20-Poly1305 (transport/aead.h, the calls SealingTransport makes per message: a
// fresh EVP context each, so small sizes include that setup) beside memcpy of the same
// bytes, from 4 KiB to 64 MiB, with each operation's ratio to memcpy ("cp").
//
//   aead_bench [-r REPEATS] [--max BYTES]
//
// Each cell is the median of REPEATS (default 5) timed runs; a run repeats the operation
// until it has moved at least 32 MiB (one call at 64 MiB). Single-threaded: per core.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "transport/aead.h"

namespace {

namespace aead = skyring::transport::aead;
using skyring::Cipher;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kRunBytes = std::size_t{32} << 20;

// Median GB/s (1e9 bytes per second) of op over `repeats` runs on `bytes` bytes.
double medianGBps(std::size_t bytes, int repeats, const std::function<void()>& op) {
  const std::size_t calls = std::max<std::size_t>(1, kRunBytes / bytes);
  op();  // warm: page faults, the cipher's tables
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    for (std::size_t i = 0; i < calls; ++i)
      op();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    rates.push_back(static_cast<double>(bytes * calls) / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

std::string sizeText(std::size_t b) {
  if (b >= (1u << 20)) return std::to_string(b >> 20) + " MiB";
  return std::to_string(b >> 10) + " KiB";
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 5;
  std::size_t maxBytes = std::size_t{64} << 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-r" && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--max" && i + 1 < argc) {
      maxBytes = static_cast<std::size_t>(std::strtoull(argv[++i], nullptr, 10));
    } else {
      std::fprintf(stderr, "usage: aead_bench [-r REPEATS] [--max BYTES]\n");
      return 2;
    }
  }
  const std::vector<std::byte> secret(32, std::byte{7});
  const aead::Key key =
      aead::deriveKey("aead_bench secret of 16+ chars", std::span(secret.data(), 8));
  std::printf(
      "# AEAD throughput per core, GB/s (1e9 B/s), median of %d; CPU AES instructions: "
      "%s\n",
      repeats, aead::cpuHasAes() ? "yes" : "no");
  std::printf("# %8s %8s | %-35s | %-35s\n", "", "", "aes-256-gcm", "chacha20-poly1305");
  std::printf("# %8s %8s | %8s %8s %8s %8s | %8s %8s %8s %8s\n", "size", "memcpy", "seal", "open",
              "seal/cp", "open/cp", "seal", "open", "seal/cp", "open/cp");
  for (std::size_t bytes = 4096; bytes <= maxBytes; bytes *= 4) {
    std::vector<std::byte> plain(bytes, std::byte{0x5a});
    std::vector<std::byte> sealed(bytes + aead::kTagBytes);
    std::vector<std::byte> opened(bytes);
    const double copy = medianGBps(bytes, repeats, [&] {
      std::memcpy(opened.data(), plain.data(), bytes);
      asm volatile("" : : "r"(opened.data()) : "memory");
    });
    std::printf("  %8s %8.2f", sizeText(bytes).c_str(), copy);
    for (Cipher cipher : {Cipher::aes256gcm, Cipher::chacha20poly1305}) {
      std::uint64_t counter = 0;  // a fresh nonce per seal, as the transport does
      auto nonce = [&counter] {
        aead::Nonce n{};
        ++counter;
        std::memcpy(n.data(), &counter, sizeof counter);
        return n;
      };
      const double seal =
          medianGBps(bytes, repeats, [&] { aead::seal(cipher, key, nonce(), {}, plain, sealed); });
      const aead::Nonce last = nonce();
      aead::seal(cipher, key, last, {}, plain, sealed);
      const double open = medianGBps(bytes, repeats, [&] {
        if (!aead::open(cipher, key, last, {}, sealed, opened)) std::abort();
      });
      std::printf(" | %8.2f %8.2f %8.3f %8.3f", seal, open, seal / copy, open / copy);
    }
    std::printf("\n");
  }
  return 0;
}
