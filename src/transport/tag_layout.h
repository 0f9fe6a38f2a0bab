// The one layout of skyring's 64-bit transport tags. Every field any layer puts into a
// tag is defined here, so nothing can reserve bits another layer also uses.
//
//   bit 63      61          55            38        30      26          14         0
//       [opcode 3][signature 6][sequence 17][context 8][level 4][user tag 12][step 14]
//
//   opcode     what the collective is (1..6); 0 marks a control message (stall reports),
//              whose other fields but context and level are (user tag, sequence, step).
//   signature  dtype and reduce op: calls that disagree on them never match, so they stall
//              and are diagnosed instead of exchanging misread bytes.
//   sequence   the call's number among the calls of its communicator and user tag (mod
//              2^17: a rank is never that many calls of one tag ahead of a peer).
//   context    the communicator: 0 the world, every process set its own id, agreed by all
//              ranks when the set is created (runtime/process_sets.h). Set by the
//              SubgroupTransport the communicator runs over.
//   level      a subgroup that an algorithm forms for one call (the ring inside a cloud,
//              the owners of a shard across clouds); 0 the communicator itself. Set by the
//              SubgroupTransport of that level. Ids are unique within one call.
//   user tag   CollectiveOptions::tag: concurrent streams of one communicator.
//   step       the message's place within the call (a ring step, a pairwise round).
//
// Nesting: a SubgroupTransport fills its field only where the tag still holds 0 and passes
// a filled one on unchanged, so the innermost group names the message. Two messages between
// one pair of ranks are kept apart when their communicators differ (context ids are unique
// in the job, whatever their nesting), or, within one communicator, their levels, user
// tags, sequence numbers or steps differ. Since the innermost level names the message, an
// algorithm that nests levels gives each of its groups its own id.
//
// Transports that must fold a tag into fewer bits (UCX keeps the sender's rank in its tag,
// ucx_tags.h) fold opcode and signature into the top of the sequence (kFoldTargetEnd), so
// the fields below the sequence (context, level, user tag, step) survive the fold exactly.
#pragma once

#include <cstdint>

#include "skyring/dtype.h"
#include "skyring/reduce_op.h"
#include "skyring/transport.h"

namespace skyring::tags {

using transport::Tag;

struct Field {
  int shift;
  int bits;
  constexpr Tag mask() const noexcept { return ((Tag{1} << bits) - 1) << shift; }
  constexpr std::uint64_t max() const noexcept { return (std::uint64_t{1} << bits) - 1; }
  constexpr Tag put(std::uint64_t value) const noexcept { return (Tag{value} << shift) & mask(); }
  constexpr std::uint64_t get(Tag tag) const noexcept { return (tag & mask()) >> shift; }
};

inline constexpr Field kStep{0, 14};
inline constexpr Field kUserTag{14, 12};
inline constexpr Field kLevel{26, 4};
inline constexpr Field kContext{30, 8};
inline constexpr Field kSequence{38, 17};
inline constexpr Field kSignature{55, 6};
inline constexpr Field kOpcode{61, 3};
static_assert(kOpcode.shift + kOpcode.bits == 64, "the fields fill the tag");
static_assert((kStep.mask() | kUserTag.mask() | kLevel.mask() | kContext.mask() | kSequence.mask() |
               kSignature.mask() | kOpcode.mask()) == ~Tag{0} &&
                  (kStep.mask() & kUserTag.mask()) == 0 && (kUserTag.mask() & kLevel.mask()) == 0 &&
                  (kLevel.mask() & kContext.mask()) == 0 &&
                  (kContext.mask() & kSequence.mask()) == 0 &&
                  (kSequence.mask() & kSignature.mask()) == 0 &&
                  (kSignature.mask() & kOpcode.mask()) == 0,
              "fields neither overlap nor leave gaps");

// A transport that must fold tags into fewer bits keeps opcode and signature (the bits from
// kFoldSourceShift up) by XORing them into the top of the sequence (below kFoldTargetEnd).
inline constexpr int kFoldSourceShift = kSignature.shift;
inline constexpr int kFoldTargetEnd = kSequence.shift + kSequence.bits;

inline constexpr std::uint32_t kMaxUserTag = static_cast<std::uint32_t>(kUserTag.max());
// The context of the Runtime's engine (a communicator of its own over the world's ranks,
// Runtime::engine): its tags never meet the world's, whatever user tags either uses.
inline constexpr std::uint32_t kRuntimeEngineContext = static_cast<std::uint32_t>(kContext.max());
// Context ids 1..kMaxContext name process sets (0 is the world).
inline constexpr std::uint32_t kMaxContext = kRuntimeEngineContext - 1;
// Level ids 1..kMaxLevel name the subgroups of one call (0 is the communicator itself).
inline constexpr std::uint32_t kMaxLevel = static_cast<std::uint32_t>(kLevel.max());

enum class Opcode : std::uint8_t {
  control = 0,
  allreduce = 1,
  reduceScatter,
  allgather,
  broadcast,
  barrier,
  alltoall
};

constexpr std::uint8_t signatureBits(DType dtype, ReduceOp op) {
  return static_cast<std::uint8_t>(static_cast<unsigned>(dtype) * 5u + static_cast<unsigned>(op));
}
static_assert(signatureBits(DType::i64, ReduceOp::prod) <= kSignature.max(),
              "every dtype and op has its own signature");

// The tag of one message of a collective on its own communicator (context and level 0: the
// subgroup transports below fill them). A control message has opcode 0 and no signature.
// Sequence and step wrap modulo their fields.
constexpr Tag makeTag(bool control, Opcode op, std::uint8_t signature, std::uint32_t userTag,
                      std::uint32_t sequence, std::uint32_t step) {
  return (control ? Tag{0}
                  : kOpcode.put(static_cast<std::uint8_t>(op)) | kSignature.put(signature)) |
         kUserTag.put(userTag & kMaxUserTag) | kSequence.put(sequence) | kStep.put(step);
}

// tag with field set to id where it still holds 0; a filled field (an inner group's id)
// passes unchanged (see "Nesting" above).
constexpr Tag nameIfUnnamed(Tag tag, Field field, std::uint32_t id) {
  return field.get(tag) == 0 ? tag | field.put(id) : tag;
}

}  // namespace skyring::tags
