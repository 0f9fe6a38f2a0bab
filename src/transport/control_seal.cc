// The control seal of sealed jobs (SealingOptions::controlSeal): the UCX transport's aborts
// and goodbyes, sealed like data messages but under keys of their own.
//
// Keys: as for data (sealing_transport.h, linkKey), with another label, so a control nonce
// can never meet a data nonce under one key. Nonces: each rank seals a
// control message of one kind to one peer about once per run (an abort, a goodbye); a
// counter per (peer, kind) makes it exact, carried in the clear before the ciphertext:
//   counter (u64, big-endian) || ciphertext || tag
// with nonce = kind (u32) || counter (u64) and associated data = version, sender, receiver,
// kind, counter, length. A replay within the run re-delivers an abort or goodbye that
// already came, which changes nothing; one from another run does not open (new keys).
#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "transport/sealing_transport.h"

namespace skyring::transport {
namespace {

constexpr std::string_view kControlLabel = "skyring control seal v1";
constexpr std::size_t kCounterBytes = 8;

template <typename T>
std::byte* putBigEndian(std::byte* at, T value) {
  for (int i = static_cast<int>(sizeof(T)) - 1; i >= 0; --i)
    *at++ = static_cast<std::byte>((value >> (8 * i)) & 0xff);
  return at;
}

std::uint64_t getU64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

class TokenControlSeal final : public ControlSeal {
 public:
  TokenControlSeal(SealingOptions options, int rank)
      : options_(std::move(options)), rank_(rank), size_(options_.publicKeys.size()) {}

  std::vector<std::byte> seal(int peer, std::uint8_t kind,
                              std::span<const std::byte> payload) const override {
    std::uint64_t counter = 0;
    aead::Key key{};
    {
      std::lock_guard lock(mu_);
      counter = counters_[{peer, kind}]++;
      key = keyLocked(rank_, peer);
    }
    std::vector<std::byte> out(kCounterBytes + payload.size() + aead::kTagBytes);
    putBigEndian(out.data(), counter);
    aead::seal(options_.cipher, key, nonce(kind, counter),
               aad(rank_, peer, kind, counter, payload.size()), payload,
               std::span(out).subspan(kCounterBytes));
    return out;
  }

  std::optional<std::vector<std::byte>> open(int sender, std::uint8_t kind,
                                             std::span<const std::byte> sealed) const override {
    try {
      if (sealed.size() < kCounterBytes + aead::kTagBytes || sender < 0 ||
          (size_ != 0 && static_cast<std::size_t>(sender) >= size_))
        return std::nullopt;
      const std::uint64_t counter = getU64(sealed.data());
      aead::Key key{};
      {
        std::lock_guard lock(mu_);
        key = keyLocked(sender, rank_);
      }
      std::vector<std::byte> out(sealed.size() - kCounterBytes - aead::kTagBytes);
      if (!aead::open(options_.cipher, key, nonce(kind, counter),
                      aad(sender, rank_, kind, counter, out.size()), sealed.subspan(kCounterBytes),
                      out))
        return std::nullopt;
      return out;
    } catch (const std::exception&) {
      return std::nullopt;  // OpenSSL failing outright: not a message to act on
    }
  }

  std::size_t overhead() const noexcept override { return kCounterBytes + aead::kTagBytes; }

 private:
  static aead::Nonce nonce(std::uint8_t kind, std::uint64_t counter) {
    aead::Nonce n{};
    putBigEndian(putBigEndian(n.data(), static_cast<std::uint32_t>(kind)), counter);
    return n;
  }

  static std::array<std::byte, 29> aad(int sender, int receiver, std::uint8_t kind,
                                       std::uint64_t counter, std::size_t length) {
    std::array<std::byte, 29> a{};
    std::byte* p = putBigEndian(a.data(), std::uint32_t{1});
    p = putBigEndian(p, static_cast<std::uint32_t>(sender));
    p = putBigEndian(p, static_cast<std::uint32_t>(receiver));
    *p++ = static_cast<std::byte>(kind);
    p = putBigEndian(p, counter);
    putBigEndian(p, static_cast<std::uint64_t>(length));
    return a;
  }

  // The key of sender -> receiver, derived once (sender or receiver is this rank).
  aead::Key keyLocked(int sender, int receiver) const {
    const int other = sender == rank_ ? receiver : sender;
    auto& slot = keys_[other];
    auto& key = sender == rank_ ? slot.send : slot.recv;
    if (!key) key = linkKey(options_, kControlLabel, sender, receiver, sender, receiver, other);
    return *key;
  }

  struct PairKeys {
    std::optional<aead::Key> send;
    std::optional<aead::Key> recv;
  };

  const SealingOptions options_;
  const int rank_;
  const std::size_t size_;  // 0: not known (no public keys: tests)
  mutable std::mutex mu_;
  mutable std::map<int, PairKeys> keys_;
  mutable std::map<std::pair<int, std::uint8_t>, std::uint64_t> counters_;
};

}  // namespace

std::shared_ptr<const ControlSeal> SealingOptions::controlSeal(int rank) const {
  SKYRING_CHECK_ARG(!secret.empty(), (ErrorContext{rank, -1, {}}),
                    "sealing control messages needs the job's secret (SKYRING_JOB_TOKEN)");
  SealingOptions o = *this;
  o.cipher = aead::resolve(o.cipher);
  return std::make_shared<TokenControlSeal>(std::move(o), rank);
}

}  // namespace skyring::transport
