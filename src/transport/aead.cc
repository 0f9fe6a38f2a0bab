// AEAD and HKDF through OpenSSL's EVP (see aead.h).
#include "transport/aead.h"

#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>

#include "skyring/error.h"

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace skyring::transport::aead {
namespace {

// EVP's update calls take int lengths: longer messages go in slices of this size.
constexpr std::size_t kSliceBytes = std::size_t{1} << 30;

// The HKDF salt: fixed, so that the key depends on the secret and the info alone; it only
// separates skyring's keys from any other use of the same secret.
constexpr std::string_view kSalt = "skyring seal salt v1";

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }
};
using Ctx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

struct PkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* c) const noexcept { EVP_PKEY_CTX_free(c); }
};

[[noreturn]] void fail(const char* what) {
  SKYRING_THROW(TransportError, {}, "OpenSSL failed to ", what);
}

void check(int ok, const char* what) {
  if (ok != 1) fail(what);
}

const EVP_CIPHER* evpCipher(Cipher cipher) {
  switch (cipher) {
    case Cipher::aes256gcm:
      return EVP_aes_256_gcm();
    case Cipher::chacha20poly1305:
      return EVP_chacha20_poly1305();
    case Cipher::automatic:
      break;
  }
  SKYRING_THROW(InvalidArgument, {}, "aead: the cipher must be resolved before use");
}

const unsigned char* bytes(std::span<const std::byte> s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}
unsigned char* bytes(std::span<std::byte> s) {
  return reinterpret_cast<unsigned char*>(s.data());
}

// One context per cipher and thread, kept between messages: a fresh one costs about as
// much as sealing 4 KiB, and most messages of a training step are small. Each use sets key
// and nonce anew, so nothing of one message carries over to the next.
EVP_CIPHER_CTX* start(Cipher cipher, const Key& key, const Nonce& nonce, bool encrypt,
                      std::span<const std::byte> aad) {
  SKYRING_CHECK_ARG(cipher != Cipher::automatic, {},
                    "aead: the cipher must be resolved before use");
  thread_local std::array<Ctx, 2> cached;
  Ctx& ctx = cached[cipher == Cipher::aes256gcm ? 0 : 1];
  if (!ctx) {
    Ctx fresh(EVP_CIPHER_CTX_new());
    if (!fresh) fail("allocate a cipher context");
    check(EVP_CipherInit_ex(fresh.get(), evpCipher(cipher), nullptr, nullptr, nullptr, 1),
          "choose the cipher");
    ctx = std::move(fresh);
  }
  const auto* k = reinterpret_cast<const unsigned char*>(key.data());
  const auto* n = reinterpret_cast<const unsigned char*>(nonce.data());
  // Both ciphers default to a 96-bit nonce, so no IVLEN control is needed.
  if (EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, k, n, encrypt ? 1 : 0) != 1) {
    ctx.reset();  // a context in an unknown state is not reused
    fail("start the cipher");
  }
  int len = 0;
  if (!aad.empty()) {
    check(EVP_CipherUpdate(ctx.get(), nullptr, &len, bytes(aad), static_cast<int>(aad.size())),
          "add associated data");
  }
  return ctx.get();
}

// Runs in through the cipher into out (equal sizes), in slices EVP's int lengths can hold.
void update(EVP_CIPHER_CTX* ctx, std::span<const std::byte> in, std::span<std::byte> out) {
  for (std::size_t done = 0; done < in.size();) {
    const std::size_t n = std::min(kSliceBytes, in.size() - done);
    int len = 0;
    check(EVP_CipherUpdate(ctx, bytes(out.subspan(done)), &len, bytes(in.subspan(done)),
                           static_cast<int>(n)),
          "process a message");
    done += n;
  }
}

void checkSize(std::size_t n) {
  SKYRING_CHECK_ARG(n <= kMaxMessageBytes, {}, "a sealed message holds at most ", kMaxMessageBytes,
                    " bytes, got ", n);
}

}  // namespace

bool cpuHasAes() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  // GCM's speed needs carry-less multiply as much as AES rounds.
  return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#elif defined(__aarch64__)
  return (getauxval(AT_HWCAP) & HWCAP_AES) != 0 && (getauxval(AT_HWCAP) & HWCAP_PMULL) != 0;
#else
  return false;
#endif
}

Cipher resolve(Cipher cipher) noexcept {
  if (cipher != Cipher::automatic) return cipher;
  return cpuHasAes() ? Cipher::aes256gcm : Cipher::chacha20poly1305;
}

std::string_view cipherName(Cipher cipher) noexcept {
  switch (cipher) {
    case Cipher::aes256gcm:
      return "aes-256-gcm";
    case Cipher::chacha20poly1305:
      return "chacha20-poly1305";
    case Cipher::automatic:
      break;
  }
  return "auto";
}

KeyExchange::KeyExchange() {
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, nullptr));
  if (!ctx) fail("allocate an X25519 context");
  check(EVP_PKEY_keygen_init(ctx.get()), "start X25519 key generation");
  EVP_PKEY* key = nullptr;
  check(EVP_PKEY_keygen(ctx.get(), &key), "generate an X25519 key");
  key_ = key;
  std::size_t len = public_.size();
  if (EVP_PKEY_get_raw_public_key(key, reinterpret_cast<unsigned char*>(public_.data()), &len) !=
          1 ||
      len != public_.size()) {
    EVP_PKEY_free(key);
    fail("read the X25519 public key");
  }
}

KeyExchange::~KeyExchange() {
  EVP_PKEY_free(static_cast<EVP_PKEY*>(key_));
}

KeyExchange::Secret KeyExchange::agree(std::span<const std::byte> peerPublic) const {
  SKYRING_CHECK(peerPublic.size() == kPublicBytes, TransportError, {},
                "an X25519 public key has 32 bytes, got ", peerPublic.size());
  struct PkeyDeleter {
    void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
  };
  std::unique_ptr<EVP_PKEY, PkeyDeleter> peer(
      EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, bytes(peerPublic), peerPublic.size()));
  if (!peer) fail("read a peer's X25519 public key");
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(
      EVP_PKEY_CTX_new(static_cast<EVP_PKEY*>(key_), nullptr));
  if (!ctx) fail("allocate an X25519 context");
  check(EVP_PKEY_derive_init(ctx.get()), "start X25519");
  check(EVP_PKEY_derive_set_peer(ctx.get(), peer.get()), "take a peer's X25519 public key");
  Secret secret{};
  std::size_t len = secret.size();
  if (EVP_PKEY_derive(ctx.get(), reinterpret_cast<unsigned char*>(secret.data()), &len) != 1 ||
      len != secret.size()) {
    SKYRING_THROW(TransportError, {},
                  "X25519 with a peer's public key failed (a low-order point: not a key a "
                  "rank of this job made)");
  }
  return secret;
}

Key deriveKey(std::string_view secret, std::span<const std::byte> info) {
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr));
  if (!ctx) fail("allocate an HKDF context");
  check(EVP_PKEY_derive_init(ctx.get()), "start HKDF");
  check(EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()), "choose SHA-256 for HKDF");
  check(EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), reinterpret_cast<const unsigned char*>(kSalt.data()),
                                    static_cast<int>(kSalt.size())),
        "set the HKDF salt");
  check(EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), reinterpret_cast<const unsigned char*>(secret.data()),
                                   static_cast<int>(secret.size())),
        "set the HKDF key");
  check(EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), bytes(info), static_cast<int>(info.size())),
        "set the HKDF info");
  Key key{};
  std::size_t len = key.size();
  check(EVP_PKEY_derive(ctx.get(), reinterpret_cast<unsigned char*>(key.data()), &len),
        "derive a key");
  if (len != key.size()) fail("derive a key of 32 bytes");
  return key;
}

void seal(Cipher cipher, const Key& key, const Nonce& nonce, std::span<const std::byte> aad,
          std::span<const std::byte> plaintext, std::span<std::byte> out) {
  checkSize(plaintext.size());
  SKYRING_CHECK_ARG(out.size() == plaintext.size() + kTagBytes, {}, "seal: output of ", out.size(),
                    " bytes for ", plaintext.size(), " bytes of plaintext");
  EVP_CIPHER_CTX* ctx = start(cipher, key, nonce, true, aad);
  update(ctx, plaintext, out);
  std::array<unsigned char, kTagBytes> none{};  // AEAD finals write nothing here
  int len = 0;
  check(EVP_CipherFinal_ex(ctx, none.data(), &len), "finish sealing");
  check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kTagBytes),
                            bytes(out.subspan(plaintext.size()))),
        "read the tag");
}

bool open(Cipher cipher, const Key& key, const Nonce& nonce, std::span<const std::byte> aad,
          std::span<const std::byte> sealed, std::span<std::byte> out) {
  if (sealed.size() < kTagBytes) return false;  // truncated below the tag
  const std::size_t n = sealed.size() - kTagBytes;
  checkSize(n);
  SKYRING_CHECK_ARG(out.size() == n, {}, "open: output of ", out.size(), " bytes for ", n,
                    " bytes of ciphertext");
  EVP_CIPHER_CTX* ctx = start(cipher, key, nonce, false, aad);
  update(ctx, sealed.first(n), out);
  // EVP takes the expected tag as non-const; it only reads it.
  std::array<unsigned char, kTagBytes> tag{};
  std::memcpy(tag.data(), sealed.data() + n, kTagBytes);
  check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kTagBytes), tag.data()),
        "set the expected tag");
  std::array<unsigned char, kTagBytes> none{};
  int len = 0;
  if (EVP_CipherFinal_ex(ctx, none.data(), &len) != 1) {
    if (!out.empty()) std::memset(out.data(), 0, out.size());  // never release a forgery
    return false;
  }
  return true;
}

}  // namespace skyring::transport::aead
