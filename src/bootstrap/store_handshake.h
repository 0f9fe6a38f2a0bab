// The TCP store's join handshake (internal): the messages of tcp_store.h's "Join" section,
// their encoding and parsing, and the HMAC-SHA256 proofs both sides compute (OpenSSL
// libcrypto). Shared by the server, the client and the tests that speak it by hand.
//
// Parsers never trust a length: each returns incomplete (read more), malformed (drop the
// connection) or complete with the bytes it used. Pure functions; any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bootstrap/tcp_store.h"

namespace skyring::bootstrap::handshake {

inline constexpr std::size_t kNonceBytes = 32;
inline constexpr std::size_t kMacBytes = 32;
using Nonce = std::array<std::byte, kNonceBytes>;
using Mac = std::array<std::byte, kMacBytes>;
// The HMAC key: derived from the token when the job has one, else from the job id (then
// it keeps jobs apart but is no secret). See tcp_store.h.
using Key = std::array<std::byte, 32>;

inline constexpr std::array<char, 8> kMagic = {'S', 'K', 'Y', 'R', 'S', 'T', 'O', 'R'};
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::size_t kChallengeBytes = kMagic.size() + 4 + kNonceBytes;
// Longest hello and welcome a peer may send (job id and message at their limits).
inline constexpr std::size_t kMaxMessageBytes = 2048;
inline constexpr std::size_t kMaxHelloBytes =
    kMagic.size() + 4 + 2 + store_wire::kMaxJobIdBytes + 4 + 4 + kNonceBytes + kMacBytes;
inline constexpr std::size_t kMaxWelcomeBytes =
    1 + 4 + 2 + store_wire::kMaxJobIdBytes + 4 + 2 + kMaxMessageBytes + kMacBytes;

enum class Verdict : std::uint8_t {
  ok = 0,
  otherJob = 1,        // the hello's job id is not the store's
  otherWorldSize = 2,  // same job id, different world size
  badProof = 3,        // the hello's HMAC is wrong: another token (or none)
  rankClaimed = 4,     // a second claim on a rank during start-up: the join has failed
  joinClosed = 5,      // a second claim on a rank of a running job: refused
  joinFailed = 6,      // the join failed earlier; the message says why
};

enum class Parse : std::uint8_t { incomplete, malformed, complete };

struct Hello {
  std::uint32_t version = kVersion;
  std::string jobId;
  std::uint32_t worldSize = 0;
  std::uint32_t rank = 0;
  Nonce clientNonce{};
  Mac proof{};
};

struct Welcome {
  Verdict verdict = Verdict::ok;
  std::int32_t culprit = -1;  // the rank at fault, -1 if none
  std::string jobId;          // the store's
  std::uint32_t worldSize = 0;
  std::string message;  // why, for a verdict other than ok
  Mac proof{};          // the server's proof (ok only; zeros otherwise)
};

Key deriveKey(const StoreIdentity& identity);
// 32 bytes from getrandom(2). Throws TransportError if the kernel gives none.
Nonce randomNonce();

// What a client proves: it knows the key, for this server nonce and this claim.
Mac clientProof(const Key& key, const Nonce& serverNonce, const Hello& hello);
// What the server proves in return, over the client's nonce (a fake store cannot).
Mac serverProof(const Key& key, const Nonce& serverNonce, const Hello& hello);
// Constant-time comparison (CRYPTO_memcmp).
bool sameMac(const Mac& a, const Mac& b) noexcept;

std::vector<std::byte> encodeChallenge(const Nonce& serverNonce);
// Parses a challenge. malformed: not a skyring store (bad magic). version is reported even
// when it differs from kVersion, so the caller can name both.
Parse parseChallenge(std::span<const std::byte> in, std::uint32_t& version, Nonce& serverNonce);

std::vector<std::byte> encodeHello(const Hello& hello);
Parse parseHello(std::span<const std::byte> in, Hello& hello, std::size_t& used);

std::vector<std::byte> encodeWelcome(const Welcome& welcome);
Parse parseWelcome(std::span<const std::byte> in, Welcome& welcome, std::size_t& used);

}  // namespace skyring::bootstrap::handshake
