// 64-bit transport tags of the collectives: (class, operation, signature, user tag,
// sequence number, step). Concurrent collectives differ in user tag or sequence number;
// the signature (dtype and reduce op) makes calls that disagree on them never match, so
// they stall and are diagnosed instead of exchanging misread bytes.
#pragma once

#include <cstdint>

#include "skyring/dtype.h"
#include "skyring/reduce_op.h"
#include "skyring/transport.h"

namespace skyring::collectives {

enum class Opcode : std::uint8_t {
  allreduce = 1,
  reduceScatter,
  allgather,
  broadcast,
  barrier,
  alltoall
};

inline constexpr std::uint32_t kMaxUserTag = 0xfff;

constexpr std::uint8_t signatureBits(DType dtype, ReduceOp op) {
  return static_cast<std::uint8_t>(static_cast<unsigned>(dtype) * 5u + static_cast<unsigned>(op));
}

constexpr transport::Tag makeTag(bool control, Opcode op, std::uint8_t signature,
                                 std::uint32_t userTag, std::uint32_t sequence,
                                 std::uint32_t step) {
  return (transport::Tag{control} << 63) |
         (transport::Tag{static_cast<std::uint8_t>(op)} & 7) << 60 |
         transport::Tag{signature} << 52 | (transport::Tag{userTag} & kMaxUserTag) << 40 |
         (transport::Tag{sequence} & 0xffffff) << 16 | (transport::Tag{step} & 0xffff);
}

}  // namespace skyring::collectives
