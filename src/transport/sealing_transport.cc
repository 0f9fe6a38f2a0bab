// SealingTransport: per-(direction, peer, tag) counters, nonces and associated data around
// an inner transport (see the header for the scheme).
#include "transport/sealing_transport.h"

#include <openssl/crypto.h>

#include <cstring>
#include <string_view>
#include <utility>

namespace skyring::transport {
namespace {

using topology::LinkClass;

// Bumped whenever the key schedule, nonce or associated data change, so that ranks of
// different versions fail to open each other's messages instead of misreading them.
constexpr std::string_view kKeyLabel = "skyring seal v1";
constexpr std::uint32_t kAadVersion = 1;
constexpr std::size_t kAadBytes = 4 + 4 + 4 + 8 + 8 + 4;
using Aad = std::array<std::byte, kAadBytes>;

template <typename T>
std::byte* putBigEndian(std::byte* at, T value) {
  for (int i = static_cast<int>(sizeof(T)) - 1; i >= 0; --i)
    *at++ = static_cast<std::byte>((value >> (8 * i)) & 0xff);
  return at;
}

aead::Nonce nonceOf(Tag tag, std::uint64_t counter) {
  aead::Nonce n{};
  putBigEndian(putBigEndian(n.data(), tag), static_cast<std::uint32_t>(counter));
  return n;
}

Aad aadOf(int sender, int receiver, Tag tag, std::size_t length, std::uint64_t counter) {
  Aad a{};
  std::byte* p = putBigEndian(a.data(), kAadVersion);
  p = putBigEndian(p, static_cast<std::uint32_t>(sender));
  p = putBigEndian(p, static_cast<std::uint32_t>(receiver));
  p = putBigEndian(p, tag);
  p = putBigEndian(p, static_cast<std::uint64_t>(length));
  putBigEndian(p, static_cast<std::uint32_t>(counter));
  return a;
}

}  // namespace

aead::Key linkKey(const SealingOptions& o, std::string_view label, int sender, int receiver,
                  int senderIndex, int receiverIndex, int peerIndex) {
  std::vector<std::byte> info;
  auto append = [&info](std::string_view s) {
    const auto* b = reinterpret_cast<const std::byte*>(s.data());
    info.insert(info.end(), b, b + s.size());
    info.push_back(std::byte{0});  // separator: no two field lists give one string
  };
  append(label);
  append(aead::cipherName(o.cipher));
  append(o.jobId);
  std::array<std::byte, 8> ranks{};
  putBigEndian(putBigEndian(ranks.data(), static_cast<std::uint32_t>(sender)),
               static_cast<std::uint32_t>(receiver));
  info.insert(info.end(), ranks.begin(), ranks.end());
  std::string ikm = o.secret;
  if (o.keyExchange) {
    for (int r : {senderIndex, receiverIndex}) {
      const auto& key = o.publicKeys[static_cast<std::size_t>(r)];
      info.insert(info.end(), key.begin(), key.end());
    }
    auto shared = o.keyExchange->agree(o.publicKeys[static_cast<std::size_t>(peerIndex)]);
    ikm.push_back('\0');
    ikm.append(reinterpret_cast<const char*>(shared.data()), shared.size());
    OPENSSL_cleanse(shared.data(), shared.size());
  }
  const aead::Key key = aead::deriveKey(ikm, info);
  OPENSSL_cleanse(ikm.data(), ikm.size());  // no copy of the secrets stays behind in the heap
  return key;
}

namespace {

class SealedSend final : public Request {
 public:
  SealedSend(std::vector<std::byte> wire, int peer) : wire_(std::move(wire)), peer_(peer) {}
  void post(std::unique_ptr<Request> inner) { inner_ = std::move(inner); }
  std::span<std::byte> wire() { return wire_; }

  bool test() override { return inner_->test(); }
  bool waitUntil(Clock::time_point deadline) override { return inner_->waitUntil(deadline); }
  int peer() const noexcept override { return peer_; }

 private:
  std::vector<std::byte> wire_;  // declared first: outlives the inner request
  std::unique_ptr<Request> inner_;
  int peer_;
};

// What a receive needs to open its message and to say where it came from when it cannot.
struct Opening {
  Cipher cipher;
  aead::Key key;
  aead::Nonce nonce;
  Aad aad;
  ErrorContext context;
  std::string link;  // "the cross-cloud link from rank 3 (tag 0x..., message 7)"
};

class SealedRecv final : public Request {
 public:
  SealedRecv(std::span<std::byte> out, Opening opening, int peer)
      : wire_(out.size() + aead::kTagBytes), out_(out), opening_(std::move(opening)), peer_(peer) {}
  void post(std::unique_ptr<Request> inner) { inner_ = std::move(inner); }
  std::span<std::byte> wire() { return wire_; }

  bool test() override {
    if (opened_) return true;
    if (!hinted([this] { return inner_->test(); })) return false;
    openOrThrow();
    return true;
  }
  bool waitUntil(Clock::time_point deadline) override {
    if (opened_) return true;
    if (!hinted([this, deadline] { return inner_->waitUntil(deadline); })) return false;
    openOrThrow();
    return true;
  }
  int peer() const noexcept override { return peer_; }

 private:
  // A size mismatch on a sealed link most likely means the peer does not seal (or seals
  // another way): say so beside the inner transport's own words.
  template <typename F>
  bool hinted(F&& f) {
    try {
      return f();
    } catch (const TransportError& e) {
      if (e.detail().find("bytes but the receive expects") == std::string::npos) throw;
      throw TransportError(e.detail() + " (" + opening_.link +
                               " is sealed: a peer that does not seal sends 16 bytes less per "
                               "message; SKYRING_ENCRYPT must agree on every rank)",
                           ErrorContext{e.rank(), e.peer(), e.op()});
    }
  }

  void openOrThrow() {
    if (aead::open(opening_.cipher, opening_.key, opening_.nonce, opening_.aad, wire_, out_)) {
      opened_ = true;
      return;
    }
    SKYRING_THROW(TransportError, opening_.context, "a message on ", opening_.link,
                  " failed authentication: it was altered, truncated, replayed or reordered "
                  "in flight, or the peer seals with another key (SKYRING_JOB_TOKEN, "
                  "SKYRING_JOB_ID and SKYRING_CIPHER must agree on every rank)");
  }

  std::vector<std::byte> wire_;  // declared first: outlives the inner request
  std::span<std::byte> out_;
  Opening opening_;
  int peer_;
  bool opened_ = false;
  std::unique_ptr<Request> inner_;  // declared last: destroyed (cancelled) first
};

std::string hex(Tag tag) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 60; shift >= 0; shift -= 4)
    s += kDigits[(tag >> shift) & 0xf];
  return s;
}

}  // namespace

std::optional<SealingOptions> SealingOptions::fromConfig(const Config& config) {
  const Encryption e = config.effectiveEncryption();
  if (e == Encryption::none) return std::nullopt;
  SKYRING_CHECK_ARG(!config.jobToken.empty(), {},
                    "SKYRING_ENCRYPT asks for sealed links but SKYRING_JOB_TOKEN is not set: "
                    "the session keys are derived from the job's secret");
  SealingOptions o;
  o.secret = config.jobToken;
  o.jobId = config.jobId();
  o.cipher = aead::resolve(config.cipher);
  o.sealed[topology::index(LinkClass::crossCloud)] = true;
  if (e == Encryption::all) {
    o.sealed[topology::index(LinkClass::intraCloud)] = true;
    o.sealed[topology::index(LinkClass::intraNode)] = true;
  }
  return o;
}

SealingTransport::SealingTransport(std::shared_ptr<Transport> inner,
                                   std::shared_ptr<const topology::Topology> topology,
                                   SealingOptions options)
    : inner_(std::move(inner)), topology_(std::move(topology)), options_(std::move(options)) {
  SKYRING_CHECK_ARG(inner_ != nullptr && topology_ != nullptr, {},
                    "SealingTransport needs a transport and a topology");
  SKYRING_CHECK_ARG(topology_->size() == inner_->size(), (ErrorContext{inner_->rank(), -1, {}}),
                    "the topology describes ", topology_->size(), " ranks but the transport has ",
                    inner_->size());
  SKYRING_CHECK_ARG(!options_.secret.empty(), (ErrorContext{inner_->rank(), -1, {}}),
                    "encryption needs the job's secret (SKYRING_JOB_TOKEN)");
  SKYRING_CHECK_ARG(options_.messagesPerTag >= 1 && options_.messagesPerTag <= (1ull << 32), {},
                    "messagesPerTag must be in [1, 2^32] (the nonce's counter)");
  SKYRING_CHECK_ARG(!options_.keyExchange ||
                        options_.publicKeys.size() == static_cast<std::size_t>(inner_->size()),
                    {}, "SealingTransport needs a public key per rank, got ",
                    options_.publicKeys.size(), " for ", inner_->size(), " ranks");
  options_.cipher = aead::resolve(options_.cipher);
  options_.sealed[topology::index(LinkClass::self)] = false;
  const auto n = static_cast<std::size_t>(inner_->size());
  keys_.resize(n);
  sendNext_.resize(n);
  recvNext_.resize(n);
}

bool SealingTransport::seals(int peer) const {
  return options_.sealed[topology::index(topology_->linkClass(rank(), peer))];
}

std::pair<std::uint64_t, SealingTransport::PeerKeys> SealingTransport::next(
    int peer, Tag tag, std::vector<Counters>& table, const char* op) {
  std::lock_guard lock(mu_);
  auto& slot = keys_[static_cast<std::size_t>(peer)];
  if (!slot) {
    const int me = jobRank(rank());
    const int them = jobRank(peer);
    try {
      slot = PeerKeys{linkKey(options_, kKeyLabel, me, them, rank(), peer, peer),
                      linkKey(options_, kKeyLabel, them, me, peer, rank(), peer)};
    } catch (const TransportError& e) {
      SKYRING_THROW(TransportError, (ErrorContext{rank(), peer, op}),
                    "cannot derive the keys of the link with rank ", them, ": ", e.detail());
    }
  }
  std::uint64_t& counter = table[static_cast<std::size_t>(peer)][tag];
  if (counter >= options_.messagesPerTag) {
    SKYRING_THROW(InvalidArgument, (ErrorContext{rank(), peer, op}), "tag ", hex(tag),
                  " has carried ", counter, " sealed messages with rank ", jobRank(peer),
                  ", as many as its nonces allow: refused rather than repeat a nonce");
  }
  return {counter++, *slot};
}

std::unique_ptr<Request> SealingTransport::isend(int peer, Tag tag,
                                                 std::span<const std::byte> data) {
  SKYRING_CHECK_ARG(peer >= 0 && peer < size(), (ErrorContext{rank(), peer, "sealed send"}),
                    "peer out of range for a group of ", size());
  if (!seals(peer)) return inner_->isend(peer, tag, data);
  SKYRING_CHECK_ARG(data.size() <= aead::kMaxMessageBytes, (ErrorContext{rank(), peer, {}}),
                    "a sealed message holds at most ", aead::kMaxMessageBytes, " bytes");
  const auto [counter, keys] = next(peer, tag, sendNext_, "sealed send");
  auto request =
      std::make_unique<SealedSend>(std::vector<std::byte>(data.size() + aead::kTagBytes), peer);
  const auto wire = request->wire();
  aead::seal(options_.cipher, keys.send, nonceOf(tag, counter),
             aadOf(jobRank(rank()), jobRank(peer), tag, data.size(), counter), data, wire);
  request->post(inner_->isend(peer, tag, wire));
  return request;
}

std::unique_ptr<Request> SealingTransport::irecv(int peer, Tag tag, std::span<std::byte> data) {
  SKYRING_CHECK_ARG(peer >= 0 && peer < size(), (ErrorContext{rank(), peer, "sealed receive"}),
                    "peer out of range for a group of ", size());
  if (!seals(peer)) return inner_->irecv(peer, tag, data);
  SKYRING_CHECK_ARG(data.size() <= aead::kMaxMessageBytes, (ErrorContext{rank(), peer, {}}),
                    "a sealed message holds at most ", aead::kMaxMessageBytes, " bytes");
  const auto [counter, keys] = next(peer, tag, recvNext_, "sealed receive");
  const auto cls = topology::linkClassName(topology_->linkClass(rank(), peer));
  Opening opening{options_.cipher,
                  keys.recv,
                  nonceOf(tag, counter),
                  aadOf(jobRank(peer), jobRank(rank()), tag, data.size(), counter),
                  ErrorContext{rank(), peer, "sealed receive"},
                  "the " + std::string(cls) + " link from rank " + std::to_string(jobRank(peer)) +
                      " (tag " + hex(tag) + ", message " + std::to_string(counter) + ")"};
  auto request = std::make_unique<SealedRecv>(data, std::move(opening), peer);
  request->post(inner_->irecv(peer, tag, request->wire()));
  return request;
}

}  // namespace skyring::transport
