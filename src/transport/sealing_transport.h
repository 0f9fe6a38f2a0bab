// SealingTransport: a decorator that seals every message to and from peers of chosen link
// classes (by default the cross-cloud class) with authenticated encryption, so that what
// crosses a network the job does not control can be neither read nor altered, replayed,
// reordered or truncated without the receiver noticing. docs/security.md has the threat
// model.
//
// Wire format. A message of n bytes travels as n + 16 bytes: the ciphertext, then the
// AEAD tag (aead.h: AES-256-GCM or ChaCha20-Poly1305). Nothing else is added, so a receive
// still names its size exactly (transport.h) and the inner transport needs no header.
//
// Keys. One key per ordered pair of ranks (per direction): HKDF-SHA256 whose input is the
// job secret (SKYRING_JOB_TOKEN) and the pair's X25519 shared secret, and whose info is a
// label, the cipher, the job id, the sender's and receiver's job ranks and both ranks'
// public keys. Each rank draws a fresh X25519 key pair at start-up and publishes its public
// key through the bootstrap (Runtime), which admits only ranks that know the token (the
// store's HMAC challenge) or that the launcher started (MPI). So a key needs both the token
// and a private key that never left its rank: recording a run and learning the token later
// does not open it (forward secrecy), and every run has new keys, so the nonces below,
// which restart at zero, never meet a key they were used with. A rank that does not know
// the token derives other keys, and its messages fail to open on both sides. Certificates
// (SKYRING_TLS_*) in place of the token are still to come (docs/security.md).
//
// Nonces. The transport matches messages by (peer, tag) and keeps FIFO order only within
// one (peer, tag): messages of different tags may be received in another order than they
// were sent, so one counter per peer would desynchronise. Each side therefore counts
// messages per (direction, peer, tag): the k-th message of tag T from A to B is sealed with
// nonce = T (64 bits, big-endian) || k (32 bits) under key(A->B), and B's k-th receive of
// tag T from A opens it with the same nonce. Within one key, (T, k) never repeats: a tag
// whose counter reaches messagesPerTag (2^32 by default) refuses further messages (an
// InvalidArgument at isend, and at irecv) instead of wrapping.
//
// Associated data: a version, sender and receiver job ranks, the tag, the plaintext length
// and k. So a message that is replayed (k already used), reordered within its tag (k out
// of place), moved to another tag or pair, truncated, extended or altered fails to open:
// the receive fails with TransportError naming the link class and the peer's job rank, and
// the collective that posted it aborts the group as for any transport error. A peer that
// does not seal (or seals with another token or cipher) fails the same way, or with a size
// mismatch that says so.
//
// Receive counters are taken when irecv is called (posting order is matching order, which
// is what the inner transport guarantees). Destroying a pending sealed receive therefore
// desynchronises its tag: the next message of that tag from that peer fails to open. In
// skyring a pending receive is only abandoned when its call fails, and the group aborts
// then anyway.
//
// Memory: one counter per (peer, tag) this rank has used on a sealed link, on each side.
// Collective tags recycle (their sequence field wraps at 2^17 calls, tag_layout.h), so the
// tables stop growing once a job has cycled through its tags; at a few steps per call per
// peer that is some 10^5 to 10^6 entries per sealed peer at worst.
//
// Control messages. Aborts raised by a collective travel through abort() to the inner
// transport's own control channel, below this decorator; the Runtime seals UCX's aborts
// and goodbyes with SealingOptions::controlSeal, so a forged one is ignored. (The stall
// reports and the engine's negotiation are ordinary messages, sealed here.)
//
// Ownership: shares the inner transport and the topology; destroying the decorator does
// not shut the inner transport down. Requests own their wire buffers and may outlive it.
//
// Thread-safety: as the inner transport; isend/irecv may run on several threads (counters
// and keys are under a mutex; sealing and opening run outside it).
//
// Failure: the constructor throws InvalidArgument without a secret or for a topology of
// another size. Sealing throws what aead.h throws; every other failure is the inner's.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "skyring/config.h"
#include "skyring/topology.h"
#include "skyring/transport.h"
#include "skyring/ucx_transport.h"
#include "transport/aead.h"

namespace skyring::transport {

struct SealingOptions {
  std::string secret;  // the job token: required
  std::string jobId;   // the job's id (Config::jobId()), bound into every key
  // Every rank's X25519 public key, indexed by rank of the inner transport, and this
  // rank's key pair, fresh per run. Empty and null only in tests that make both ends
  // themselves: keys then come from the token alone and repeat across runs.
  std::vector<std::vector<std::byte>> publicKeys;
  std::shared_ptr<const aead::KeyExchange> keyExchange;
  Cipher cipher = Cipher::automatic;
  // Indexed by topology::index(LinkClass); the self class is never sealed (it never
  // leaves the process).
  std::array<bool, topology::kLinkClassCount> sealed{};
  // Messages one (direction, peer, tag) may carry: 2^32 (the nonce's counter). Tests
  // lower it to reach the refusal.
  std::uint64_t messagesPerTag = std::uint64_t{1} << 32;

  // From a Config's SKYRING_ENCRYPT, SKYRING_CIPHER, SKYRING_JOB_TOKEN and job id; nullopt
  // when nothing is to be sealed. Throws InvalidArgument when encryption is asked for
  // without a token.
  static std::optional<SealingOptions> fromConfig(const Config& config);
  // Seals the UCX transport's aborts and goodbyes (ucx_transport.h, ControlSeal) for rank
  // `rank` of a group whose ranks are the job's, under keys of their own (control_seal.cc).
  std::shared_ptr<const ControlSeal> controlSeal(int rank) const;
};

// The key sender seals with for receiver under label (data and control messages have
// labels of their own): job ranks for the info, and the ranks' indices into publicKeys, of
// which peerIndex is the other end's (this rank holds options.keyExchange). Throws
// TransportError when the peer's public key is unusable.
aead::Key linkKey(const SealingOptions& options, std::string_view label, int sender, int receiver,
                  int senderIndex, int receiverIndex, int peerIndex);

class SealingTransport final : public Transport {
 public:
  SealingTransport(std::shared_ptr<Transport> inner,
                   std::shared_ptr<const topology::Topology> topology, SealingOptions options);

  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  int jobRank(int rank) const noexcept override { return inner_->jobRank(rank); }
  std::string groupLabel() const override { return inner_->groupLabel(); }

  std::unique_ptr<Request> isend(int peer, Tag tag, std::span<const std::byte> data) override;
  std::unique_ptr<Request> irecv(int peer, Tag tag, std::span<std::byte> data) override;
  void abort(ErrorKind kind, const std::string& reason) noexcept override {
    inner_->abort(kind, reason);
  }
  void shutdown() noexcept override { inner_->shutdown(); }

  // Whether messages to and from peer are sealed.
  bool seals(int peer) const;
  Cipher cipher() const noexcept { return options_.cipher; }

 private:
  struct PeerKeys {
    aead::Key send;  // this rank -> peer
    aead::Key recv;  // peer -> this rank
  };
  using Counters = std::unordered_map<Tag, std::uint64_t>;

  // Takes the next counter of (peer, tag) in table and the pair's keys, under mu_.
  std::pair<std::uint64_t, PeerKeys> next(int peer, Tag tag, std::vector<Counters>& table,
                                          const char* op);

  std::shared_ptr<Transport> inner_;
  std::shared_ptr<const topology::Topology> topology_;
  SealingOptions options_;

  std::mutex mu_;
  std::vector<std::optional<PeerKeys>> keys_;  // derived on first use
  std::vector<Counters> sendNext_;
  std::vector<Counters> recvNext_;
};

}  // namespace skyring::transport
