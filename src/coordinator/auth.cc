// The coordinator's job-token proof (auth.h).
#include "coordinator/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/random.h"
#include "skyring/error.h"

namespace skyring::coordinator::auth {
namespace {

const ErrorContext kCtx{-1, -1, "coordinator auth"};

std::array<std::byte, 32> hmac(std::span<const std::byte> key, std::span<const std::byte> data) {
  std::array<std::byte, 32> mac{};
  unsigned int length = 0;
  if (::HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
             reinterpret_cast<const unsigned char*>(data.data()), data.size(),
             reinterpret_cast<unsigned char*>(mac.data()), &length) == nullptr ||
      length != mac.size()) {
    SKYRING_THROW(TransportError, kCtx, "HMAC-SHA256 failed in OpenSSL");
  }
  return mac;
}

void append(std::vector<std::byte>& out, std::string_view s) {
  const auto b = std::as_bytes(std::span(s.data(), s.size()));
  out.insert(out.end(), b.begin(), b.end());
}

// Fixed-size fields and a length-prefixed name, so no two claims hash alike; the label
// keeps a client's proof from being replayed as the server's.
wire::Mac prove(const Key& key, std::string_view label, const wire::Nonce& first,
                const wire::Nonce& second, std::string_view cluster) {
  std::vector<std::byte> data;
  append(data, label);
  data.insert(data.end(), first.begin(), first.end());
  data.insert(data.end(), second.begin(), second.end());
  data.push_back(static_cast<std::byte>(cluster.size() & 0xffu));
  data.push_back(static_cast<std::byte>((cluster.size() >> 8) & 0xffu));
  append(data, cluster);
  return hmac(key, data);
}

}  // namespace

Key deriveKey(std::string_view token) {
  static constexpr std::string_view kLabel = "skyring coordinator key v1";
  return hmac(std::as_bytes(std::span(token.data(), token.size())),
              std::as_bytes(std::span(kLabel.data(), kLabel.size())));
}

wire::Nonce randomNonce() {
  wire::Nonce nonce{};
  skyring::detail::fillRandom(nonce, kCtx);
  return nonce;
}

wire::Mac clientProof(const Key& key, const wire::Nonce& serverNonce,
                      const wire::Nonce& clientNonce, std::string_view cluster) {
  return prove(key, "skyring coordinator client v1", serverNonce, clientNonce, cluster);
}

wire::Mac serverProof(const Key& key, const wire::Nonce& serverNonce,
                      const wire::Nonce& clientNonce, std::string_view cluster) {
  return prove(key, "skyring coordinator server v1", clientNonce, serverNonce, cluster);
}

bool sameMac(const wire::Mac& a, const wire::Mac& b) noexcept {
  return ::CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace skyring::coordinator::auth
