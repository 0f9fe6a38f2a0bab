// The codec-independent half of every Compressor: the wire header, size and state checks,
// and the step counter. Codecs only fill in their payload.
#include <algorithm>
#include <cstdint>

#include "compression/codecs.h"

namespace skyring::compression {
namespace {

constexpr std::uint8_t kMagic[4] = {'S', 'K', 'R', 'C'};
constexpr std::uint16_t kKnownFlags = kFlagStochastic | kFlagErrorFeedback | kFlagSampled;
constexpr std::size_t kChecksummed = 20;

std::uint32_t fnv1a32(std::span<const std::byte> bytes) noexcept {
  std::uint32_t h = 2166136261u;
  for (std::byte b : bytes) {
    h ^= static_cast<std::uint32_t>(b);
    h *= 16777619u;
  }
  return h;
}

template <typename T>
void putLe(std::byte* p, T v) noexcept {
  for (std::size_t i = 0; i < sizeof(T); ++i)
    p[i] = static_cast<std::byte>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xffu);
}
template <typename T>
T getLe(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i)
    v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return static_cast<T>(v);
}

}  // namespace

std::string_view codecName(Codec codec) noexcept {
  switch (codec) {
    case Codec::none:
      return "none";
    case Codec::fp16:
      return "fp16";
    case Codec::bf16:
      return "bf16";
    case Codec::int8:
      return "int8";
    case Codec::sign:
      return "sign";
    case Codec::topk:
      return "topk";
    case Codec::powersgd:
      return "powersgd";
  }
  return "unknown";
}

void writeHeader(const WireHeader& h, std::span<std::byte> out) noexcept {
  std::byte* p = out.data();
  for (std::size_t i = 0; i < 4; ++i)
    p[i] = static_cast<std::byte>(kMagic[i]);
  p[4] = static_cast<std::byte>(kWireVersion);
  p[5] = static_cast<std::byte>(h.codec);
  putLe<std::uint16_t>(p + 6, h.flags);
  putLe<std::uint64_t>(p + 8, h.count);
  putLe<std::uint32_t>(p + 16, h.param);
  putLe<std::uint32_t>(p + 20, fnv1a32(out.first(kChecksummed)));
}

WireHeader readHeader(std::span<const std::byte> bytes) {
  SKYRING_CHECK_ARG(bytes.size() >= kHeaderBytes, {}, "compressed buffer of ", bytes.size(),
                    " bytes is shorter than the ", kHeaderBytes, "-byte header");
  const std::byte* p = bytes.data();
  for (std::size_t i = 0; i < 4; ++i) {
    SKYRING_CHECK_ARG(p[i] == static_cast<std::byte>(kMagic[i]), {},
                      "compressed buffer does not start with the magic \"SKRC\"");
  }
  const auto version = static_cast<std::uint8_t>(p[4]);
  SKYRING_CHECK_ARG(version == kWireVersion, {}, "compressed buffer has wire version ",
                    int{version}, ", this build reads version ", int{kWireVersion});
  const std::uint32_t sum = getLe<std::uint32_t>(p + 20);
  SKYRING_CHECK_ARG(sum == fnv1a32(bytes.first(kChecksummed)), {},
                    "compressed buffer's header checksum does not match (corrupt header)");
  WireHeader h;
  const auto codec = static_cast<std::uint8_t>(p[5]);
  SKYRING_CHECK_ARG(codec <= static_cast<std::uint8_t>(Codec::powersgd), {},
                    "compressed buffer names unknown codec id ", int{codec});
  h.codec = static_cast<Codec>(codec);
  h.flags = getLe<std::uint16_t>(p + 6);
  SKYRING_CHECK_ARG((h.flags & ~kKnownFlags) == 0, {}, "compressed buffer has unknown flags 0x",
                    std::hex, h.flags);
  h.count = getLe<std::uint64_t>(p + 8);
  h.param = getLe<std::uint32_t>(p + 16);
  return h;
}

CompressorState Compressor::makeState(std::size_t count, std::uint64_t seed) const {
  CompressorState s;
  s.count = count;
  s.seed = seed;
  if (errorFeedback()) s.residual.assign(count, 0.0f);
  return s;
}

std::size_t Compressor::encode(std::span<const float> input, CompressorState& state,
                               std::span<std::byte> out) const {
  const ErrorContext ctx{-1, -1, "compress " + spec()};
  SKYRING_CHECK_ARG(state.count == input.size(), ctx, "state made for ", state.count,
                    " elements used with ", input.size());
  const std::size_t need = maxEncodedBytes(input.size());
  SKYRING_CHECK_ARG(out.size() >= need, ctx, "output of ", out.size(), " bytes, need ", need);
  float* residual = nullptr;
  if (errorFeedback()) {
    SKYRING_CHECK_ARG(state.residual.size() == input.size(), ctx,
                      "state has no residual (made by a compressor without error feedback?)");
    residual = state.residual.data();
  }
  const Encoded e = encodePayload(input, residual, state, out.subspan(kHeaderBytes));
  WireHeader h{codec(), e.flags, input.size(), e.param};
  if (residual != nullptr) h.flags |= kFlagErrorFeedback;
  writeHeader(h, out);
  ++state.step;
  return kHeaderBytes + e.bytes;
}

void Compressor::decode(std::span<const std::byte> bytes, std::span<float> out) const {
  const WireHeader h = readHeader(bytes);
  SKYRING_CHECK_ARG(h.codec == codec(), {}, "buffer encoded with ", codecName(h.codec),
                    " given to the ", codecName(codec()), " decoder");
  SKYRING_CHECK_ARG(h.count == out.size(), {}, "buffer holds ", h.count,
                    " elements, output has room for ", out.size());
  decodePayload(h, bytes.subspan(kHeaderBytes), out);
}

void decodeAny(std::span<const std::byte> bytes, std::span<float> out) {
  CompressionOptions o;
  o.codec = readHeader(bytes).codec;
  makeCompressor(o)->decode(bytes, out);
}

bool worthCompressing(const Compressor& codec, std::size_t count,
                      std::span<const std::int64_t> shape) {
  if (codec.codec() == Codec::none || count == 0) return false;
  if (codec.codec() == Codec::powersgd) {
    if (shape.size() < 2 || shape[0] <= 0) return false;
    const auto rows = static_cast<std::size_t>(shape[0]);
    const std::size_t cols = count / rows;
    const std::size_t rank = std::min<std::size_t>({codec.options().rank, rows, cols});
    return rows > 1 && cols > 1 && 2 * (rows + cols) * rank <= rows * cols;
  }
  return static_cast<double>(codec.maxEncodedBytes(count)) <=
         kMaxEncodedShare * static_cast<double>(count * sizeof(float));
}

}  // namespace skyring::compression
