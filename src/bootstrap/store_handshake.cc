// The TCP store's join handshake: encoding, parsing and proofs (see store_handshake.h).
#include "bootstrap/store_handshake.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <cstdint>

#include <cerrno>
#include <cstring>

#include "bootstrap/tcp_store_socket.h"
#include "core/random.h"
#include "skyring/error.h"

namespace skyring::bootstrap::handshake {
namespace {

// Appends big-endian fields to a byte vector.
class Writer {
 public:
  void bytes(std::span<const std::byte> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void text(const std::string& s) { bytes(std::as_bytes(std::span(s.data(), s.size()))); }
  void u8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void u16(std::uint16_t v) {
    u8(static_cast<std::uint8_t>(v >> 8));
    u8(static_cast<std::uint8_t>(v & 0xffU));
  }
  void u32(std::uint32_t v) {
    std::byte b[4];
    detail::putU32(b, v);
    bytes(b);
  }
  std::vector<std::byte> take() { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
};

// Reads big-endian fields; any read past the end marks it short (the result is then
// "incomplete", never garbage).
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool has(std::size_t n) const { return !short_ && in_.size() - pos_ >= n; }
  std::span<const std::byte> bytes(std::size_t n) {
    if (!has(n)) {
      short_ = true;
      return {};
    }
    const auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::uint8_t u8() {
    const auto b = bytes(1);
    return b.empty() ? 0 : std::to_integer<std::uint8_t>(b[0]);
  }
  std::uint16_t u16() {
    const auto b = bytes(2);
    if (b.empty()) return 0;
    return static_cast<std::uint16_t>((std::to_integer<unsigned>(b[0]) << 8) |
                                      std::to_integer<unsigned>(b[1]));
  }
  std::uint32_t u32() {
    const auto b = bytes(4);
    return b.empty() ? 0 : detail::getU32(b.data());
  }
  std::string text(std::size_t n) {
    const auto b = bytes(n);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
  template <std::size_t N>
  void array(std::array<std::byte, N>& out) {
    const auto b = bytes(N);
    if (!b.empty()) std::memcpy(out.data(), b.data(), N);
  }
  bool isShort() const { return short_; }
  std::size_t used() const { return pos_; }

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  bool short_ = false;
};

// Every field that a proof covers, each with a fixed size or a length prefix, so no two
// different claims hash alike. The label keeps a client's proof from being replayed as
// the server's (and the other way round).
Mac prove(const Key& key, const char* label, const Nonce& first, const Nonce& second,
          const Hello& hello) {
  Writer w;
  w.text(label);
  w.bytes(first);
  w.bytes(second);
  w.u16(static_cast<std::uint16_t>(hello.jobId.size()));
  w.text(hello.jobId);
  w.u32(hello.worldSize);
  w.u32(hello.rank);
  const std::vector<std::byte> data = w.take();
  Mac mac{};
  unsigned int length = 0;
  if (::HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
             reinterpret_cast<const unsigned char*>(data.data()), data.size(),
             reinterpret_cast<unsigned char*>(mac.data()), &length) == nullptr ||
      length != mac.size()) {
    SKYRING_THROW(TransportError, (ErrorContext{-1, -1, "tcp store handshake"}),
                  "HMAC-SHA256 failed in OpenSSL");
  }
  return mac;
}

}  // namespace

Key deriveKey(const StoreIdentity& identity) {
  Key key{};
  const ErrorContext ctx{-1, -1, "tcp store handshake"};
  if (!identity.token.empty()) {
    static constexpr char kLabel[] = "skyring store key v2";
    unsigned int length = 0;
    if (::HMAC(EVP_sha256(), identity.token.data(), static_cast<int>(identity.token.size()),
               reinterpret_cast<const unsigned char*>(kLabel), sizeof kLabel - 1,
               reinterpret_cast<unsigned char*>(key.data()), &length) == nullptr ||
        length != key.size()) {
      SKYRING_THROW(TransportError, ctx, "HMAC-SHA256 failed in OpenSSL");
    }
    return key;
  }
  // No token: a key anyone who knows the job id can compute. It keeps jobs apart (a
  // process of another job fails the proof), nothing more.
  Writer w;
  w.text("skyring store job id v2");
  w.u16(static_cast<std::uint16_t>(identity.jobId.size()));
  w.text(identity.jobId);
  const std::vector<std::byte> data = w.take();
  unsigned int length = 0;
  if (::EVP_Digest(data.data(), data.size(), reinterpret_cast<unsigned char*>(key.data()), &length,
                   EVP_sha256(), nullptr) != 1 ||
      length != key.size()) {
    SKYRING_THROW(TransportError, ctx, "SHA-256 failed in OpenSSL");
  }
  return key;
}

Nonce randomNonce() {
  Nonce nonce{};
  skyring::detail::fillRandom(nonce, (ErrorContext{-1, -1, "tcp store handshake"}));
  return nonce;
}

Mac clientProof(const Key& key, const Nonce& serverNonce, const Hello& hello) {
  return prove(key, "skyring store client v2", serverNonce, hello.clientNonce, hello);
}

Mac serverProof(const Key& key, const Nonce& serverNonce, const Hello& hello) {
  return prove(key, "skyring store server v2", hello.clientNonce, serverNonce, hello);
}

bool sameMac(const Mac& a, const Mac& b) noexcept {
  return ::CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::vector<std::byte> encodeChallenge(const Nonce& serverNonce) {
  Writer w;
  w.bytes(std::as_bytes(std::span(kMagic)));
  w.u32(kVersion);
  w.bytes(serverNonce);
  return w.take();
}

Parse parseChallenge(std::span<const std::byte> in, std::uint32_t& version, Nonce& serverNonce) {
  // Judge the magic on what has arrived, so a server that sends a few bytes of something
  // else and waits is recognised at once.
  const std::size_t magicSeen = std::min(in.size(), kMagic.size());
  if (magicSeen > 0 && std::memcmp(in.data(), kMagic.data(), magicSeen) != 0) {
    return Parse::malformed;
  }
  Reader r(in);
  r.bytes(kMagic.size());
  version = r.u32();
  r.array(serverNonce);
  return r.isShort() ? Parse::incomplete : Parse::complete;
}

std::vector<std::byte> encodeHello(const Hello& hello) {
  Writer w;
  w.bytes(std::as_bytes(std::span(kMagic)));
  w.u32(hello.version);
  w.u16(static_cast<std::uint16_t>(hello.jobId.size()));
  w.text(hello.jobId);
  w.u32(hello.worldSize);
  w.u32(hello.rank);
  w.bytes(hello.clientNonce);
  w.bytes(hello.proof);
  return w.take();
}

Parse parseHello(std::span<const std::byte> in, Hello& hello, std::size_t& used) {
  const std::size_t magicSeen = std::min(in.size(), kMagic.size());
  if (magicSeen > 0 && std::memcmp(in.data(), kMagic.data(), magicSeen) != 0) {
    return Parse::malformed;
  }
  Reader r(in);
  r.bytes(kMagic.size());
  hello.version = r.u32();
  const std::size_t jobIdLength = r.u16();
  if (!r.isShort() && jobIdLength > store_wire::kMaxJobIdBytes) return Parse::malformed;
  hello.jobId = r.text(jobIdLength);
  hello.worldSize = r.u32();
  hello.rank = r.u32();
  r.array(hello.clientNonce);
  r.array(hello.proof);
  if (r.isShort()) return Parse::incomplete;
  used = r.used();
  return Parse::complete;
}

std::vector<std::byte> encodeWelcome(const Welcome& welcome) {
  Writer w;
  w.u8(static_cast<std::uint8_t>(welcome.verdict));
  w.u32(static_cast<std::uint32_t>(welcome.culprit));
  w.u16(static_cast<std::uint16_t>(welcome.jobId.size()));
  w.text(welcome.jobId);
  w.u32(welcome.worldSize);
  const std::size_t messageLength = std::min(welcome.message.size(), kMaxMessageBytes);
  w.u16(static_cast<std::uint16_t>(messageLength));
  w.text(welcome.message.substr(0, messageLength));
  w.bytes(welcome.proof);
  return w.take();
}

Parse parseWelcome(std::span<const std::byte> in, Welcome& welcome, std::size_t& used) {
  Reader r(in);
  const std::uint8_t verdict = r.u8();
  if (!r.isShort() && verdict > static_cast<std::uint8_t>(Verdict::joinFailed)) {
    return Parse::malformed;
  }
  welcome.verdict = static_cast<Verdict>(verdict);
  welcome.culprit = static_cast<std::int32_t>(r.u32());
  const std::size_t jobIdLength = r.u16();
  if (!r.isShort() && jobIdLength > store_wire::kMaxJobIdBytes) return Parse::malformed;
  welcome.jobId = r.text(jobIdLength);
  welcome.worldSize = r.u32();
  const std::size_t messageLength = r.u16();
  if (!r.isShort() && messageLength > kMaxMessageBytes) return Parse::malformed;
  welcome.message = r.text(messageLength);
  r.array(welcome.proof);
  if (r.isShort()) return Parse::incomplete;
  used = r.used();
  return Parse::complete;
}

}  // namespace skyring::bootstrap::handshake
