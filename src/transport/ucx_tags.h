// How the UCX transport maps (source rank, 64-bit skyring tag) onto one 64-bit UCX tag.
//
// UCX matches receives on the tag alone, not on the sending endpoint, so the sender's rank
// must be in the UCX tag; skyring tags use all 64 bits, so the mapping cannot be lossless.
// It is lossless where it matters and documented where it is not:
//
//   UCX tag = [ field: R bits ][ fold(tag): 64 - R bits ]     R = bit_width(group size)
//
//   field  the sender's rank; the all-ones value (never a rank, since 2^R - 1 >= size)
//          marks the transport's own control messages (hello, abort, goodbye).
//   fold   the low 64 - R bits of the skyring tag, with its top R bits XORed into bits
//          [40 - R, 40).
//
// fold is the identity on tags below 2^(64-R), and injective on any set of tags that agree
// in their top R bits or agree in bits [40-R, 40). Two different tags collide only if they
// differ in both ranges and agree everywhere else. For the collectives' tags
// (collectives/tags.h) and groups below 4096 ranks, the top R bits lie within
// (control, opcode, signature) and bits [40-R, 40) are the top of the 24-bit sequence
// number, so a collision needs two calls of the same user tag and step whose sequence
// numbers differ by a non-zero multiple of 2^(24-R) (at least 4096 calls apart) and whose
// kinds differ, both with messages outstanding between the same two ranks. Calls that
// disagree on dtype or reduce op at the same sequence number (what the signature guards
// against) never collide. Per-pair FIFO matching then makes even that case harmless unless
// a receive is posted for the later call while the earlier message is still unmatched.
#pragma once

#include <bit>
#include <cstdint>

#include "skyring/transport.h"

namespace skyring::transport::ucx {

enum class ControlKind : std::uint64_t { hello = 1, abort = 2, goodbye = 3 };

class TagLayout {
 public:
  static constexpr std::uint64_t kExact = ~std::uint64_t{0};

  constexpr explicit TagLayout(int size)
      : rankBits_(std::bit_width(static_cast<unsigned>(size))),
        foldBits_(64 - rankBits_),
        shift_((foldBits_ < 40 ? foldBits_ : 40) - rankBits_) {}

  constexpr int rankBits() const noexcept { return rankBits_; }

  // The UCX tag of a data message from src; receives match it with kExact.
  constexpr std::uint64_t data(int src, Tag tag) const noexcept {
    const std::uint64_t low = tag & lowMask();
    const std::uint64_t high = tag >> foldBits_;
    return std::uint64_t(static_cast<unsigned>(src)) << foldBits_ | (low ^ high << shift_);
  }

  constexpr std::uint64_t control(ControlKind kind) const noexcept {
    return senderMask() | static_cast<std::uint64_t>(kind);
  }

  // The bits that identify the sender (ucp_params_t::tag_sender_mask).
  constexpr std::uint64_t senderMask() const noexcept { return ~lowMask(); }

 private:
  constexpr std::uint64_t lowMask() const noexcept { return (std::uint64_t{1} << foldBits_) - 1; }

  int rankBits_;
  int foldBits_;
  int shift_;  // 40 - R; lower for groups of 2^24 ranks or more, to stay inside the fold
};

}  // namespace skyring::transport::ucx
