// Authenticated encryption for the sealing transport (sealing_transport.h) and its
// benchmark: AES-256-GCM or ChaCha20-Poly1305 through OpenSSL's EVP, and HKDF-SHA256 key
// derivation. Both ciphers take a 256-bit key and a 96-bit nonce and append a 128-bit tag.
//
// Contract: a (key, nonce) pair must never seal two different messages; the caller owns
// that (the sealing transport derives nonces from per-tag counters). seal() and open()
// keep no message state between calls (each thread reuses one EVP context per cipher,
// re-keyed on every call), so any thread may call them at once with any keys.
//
// Failure: open() returns false when the message does not authenticate (then the output
// holds zeros, never unauthenticated plaintext). OpenSSL failing outright (out of memory,
// a cipher missing from the build) throws TransportError; a message too large for one
// nonce (64 GiB) throws InvalidArgument.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "skyring/config.h"

namespace skyring::transport::aead {

inline constexpr std::size_t kKeyBytes = 32;
inline constexpr std::size_t kNonceBytes = 12;
inline constexpr std::size_t kTagBytes = 16;
// GCM allows 2^39 - 256 bits under one nonce; ChaCha20-Poly1305 more. One message stays
// well below both.
inline constexpr std::size_t kMaxMessageBytes = std::size_t{1} << 36;

using Key = std::array<std::byte, kKeyBytes>;
using Nonce = std::array<std::byte, kNonceBytes>;

// True where the CPU has AES instructions (x86 AES-NI with PCLMULQDQ, Arm's AES).
bool cpuHasAes() noexcept;
// cipher with automatic resolved by cpuHasAes().
Cipher resolve(Cipher cipher) noexcept;
// "aes-256-gcm", "chacha20-poly1305" (as SKYRING_CIPHER spells them), "auto".
std::string_view cipherName(Cipher cipher) noexcept;

// An X25519 key pair (RFC 7748), one per rank and run: its public half is published, the
// private half never leaves this object and goes with it. Thread-safe (const use).
class KeyExchange {
 public:
  static constexpr std::size_t kPublicBytes = 32;
  using Secret = std::array<std::byte, 32>;

  KeyExchange();  // a fresh pair from OpenSSL's CSPRNG
  ~KeyExchange();
  KeyExchange(const KeyExchange&) = delete;
  KeyExchange& operator=(const KeyExchange&) = delete;

  std::span<const std::byte> publicKey() const noexcept { return public_; }
  // The shared secret with the holder of peerPublic. Throws TransportError for a key that
  // is not 32 bytes or a low-order point (an all-zero secret, which OpenSSL refuses).
  Secret agree(std::span<const std::byte> peerPublic) const;

 private:
  void* key_ = nullptr;  // EVP_PKEY, kept out of this header
  std::array<std::byte, kPublicBytes> public_{};
};

// HKDF-SHA256 (RFC 5869) of secret with a fixed salt, expanded with info into one key.
Key deriveKey(std::string_view secret, std::span<const std::byte> info);

// Seals plaintext into out (plaintext.size() + kTagBytes bytes: ciphertext then tag).
// cipher must be resolved.
void seal(Cipher cipher, const Key& key, const Nonce& nonce, std::span<const std::byte> aad,
          std::span<const std::byte> plaintext, std::span<std::byte> out);
// Opens sealed (ciphertext then tag) into out (sealed.size() - kTagBytes bytes); false when
// it does not authenticate.
[[nodiscard]] bool open(Cipher cipher, const Key& key, const Nonce& nonce,
                        std::span<const std::byte> aad, std::span<const std::byte> sealed,
                        std::span<std::byte> out);

}  // namespace skyring::transport::aead
