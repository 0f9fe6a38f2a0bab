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
//   fold   the low 64 - R bits of the skyring tag, with the opcode and signature bits among
//          its top R bits XORed into the top of the sequence number that is kept (the bits
//          just below tags::kFoldTargetEnd, or just below the fold's top). Groups of 512
//          ranks or more also lose the top R - 9 bits of the sequence number.
//
// fold is the identity on tags below 2^(64-R), and (for groups below 2^17 ranks) changes
// only bits of the sequence number (transport/tag_layout.h), so two tags that differ in
// context, level, user tag or step never collide. Two calls on one communicator and user tag
// collide only when their sequence numbers are far apart: a non-zero multiple of 2^(17-R)
// calls for calls of different opcode or signature (at least 256 below 512 ranks, 32 at
// 4095), of 2^(26-R) for calls alike (8192 at 4095 ranks); both must have messages
// outstanding between the same two ranks. Calls that disagree on dtype or reduce op at the
// same sequence number (what the signature guards against) never collide. Per-pair FIFO
// matching then makes even that case harmless unless a receive is posted for the later
// call while the earlier message is still unmatched.
#pragma once

#include <bit>
#include <cstdint>

#include "skyring/transport.h"
#include "transport/tag_layout.h"

namespace skyring::transport::ucx {

enum class ControlKind : std::uint64_t { hello = 1, abort = 2, goodbye = 3 };

class TagLayout {
 public:
  static constexpr std::uint64_t kExact = ~std::uint64_t{0};

  constexpr explicit TagLayout(int size)
      : rankBits_(std::bit_width(static_cast<unsigned>(size))),
        foldBits_(64 - rankBits_),
        highShift_(foldBits_ > tags::kFoldSourceShift ? foldBits_ : tags::kFoldSourceShift),
        shift_((foldBits_ < tags::kFoldTargetEnd ? foldBits_ : tags::kFoldTargetEnd) -
               (64 - highShift_)) {}

  constexpr int rankBits() const noexcept { return rankBits_; }

  // The UCX tag of a data message from src; receives match it with kExact.
  constexpr std::uint64_t data(int src, Tag tag) const noexcept {
    const std::uint64_t low = tag & lowMask();
    const std::uint64_t high = tag >> highShift_;
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
  int highShift_;  // the lowest bit folded in: 64 - R, or the signature's for larger groups
  int shift_;      // where the folded bits land
};

}  // namespace skyring::transport::ucx
