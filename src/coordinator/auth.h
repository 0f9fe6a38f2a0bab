// The coordinator's job-token proof (internal), the same HMAC-SHA256 challenge as the
// bootstrap store's (src/bootstrap/store_handshake.h): on connect the server sends a
// fresh nonce (challenge); the client answers with its cluster name, its own nonce and
// HMAC(key, client label | server nonce | client nonce | cluster); the server checks it
// in constant time and proves the key back over the nonces in the other order (welcome),
// so neither side learns anything replayable and a fake coordinator is found out.
//
// key = HMAC-SHA256(token, "skyring coordinator key v1"). An empty token gives a key
// anyone can compute: the service allows that only on loopback (tests).
//
// Pure functions over OpenSSL's libcrypto; any thread. Failures of OpenSSL itself throw
// TransportError.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "coordinator/wire.h"

namespace skyring::coordinator::auth {

using Key = std::array<std::byte, 32>;

Key deriveKey(std::string_view token);
// 32 bytes from getrandom(2); throws TransportError if the kernel gives none.
wire::Nonce randomNonce();
wire::Mac clientProof(const Key& key, const wire::Nonce& serverNonce,
                      const wire::Nonce& clientNonce, std::string_view cluster);
wire::Mac serverProof(const Key& key, const wire::Nonce& serverNonce,
                      const wire::Nonce& clientNonce, std::string_view cluster);
// Constant-time comparison (CRYPTO_memcmp).
bool sameMac(const wire::Mac& a, const wire::Mac& b) noexcept;

}  // namespace skyring::coordinator::auth
