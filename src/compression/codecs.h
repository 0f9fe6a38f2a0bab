// Internal: the constructors of each codec (one file each) and helpers they share. The
// registry (registry.cc) is the only caller of the make* functions.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>

#include "skyring/compression.h"
#include "skyring/error.h"

namespace skyring::compression {

static_assert(std::endian::native == std::endian::little,
              "payloads are copied as little-endian host floats");

// options are complete (defaults resolved) and validated by the registry.
std::unique_ptr<Compressor> makeNoneCodec(const CompressionOptions& options);
std::unique_ptr<Compressor> makeFp16Codec(const CompressionOptions& options);
std::unique_ptr<Compressor> makeBf16Codec(const CompressionOptions& options);
std::unique_ptr<Compressor> makeInt8Codec(const CompressionOptions& options);
std::unique_ptr<Compressor> makeSignCodec(const CompressionOptions& options);
std::unique_ptr<Compressor> makeTopkCodec(const CompressionOptions& options);
std::unique_ptr<Compressor> makePowerSgdCodec(const CompressionOptions& options);

// Writes the 24-byte header (compression.h) at the start of out.
void writeHeader(const WireHeader& header, std::span<std::byte> out) noexcept;

inline std::size_t ceilDiv(std::size_t a, std::size_t b) noexcept {
  return (a + b - 1) / b;
}

// Throws unless a payload has exactly the size its header implies.
inline void checkPayloadSize(const WireHeader& h, std::size_t got, std::size_t want) {
  SKYRING_CHECK_ARG(got == want, {}, codecName(h.codec), " payload of ", h.count,
                    " elements must be ", want, " bytes, got ", got, " (truncated or corrupt)");
}

// Unaligned little-endian float and word access into byte buffers.
inline void storeFloats(std::byte* dst, const float* src, std::size_t n) noexcept {
  if (n != 0) std::memcpy(dst, src, n * sizeof(float));
}
inline void loadFloats(float* dst, const std::byte* src, std::size_t n) noexcept {
  if (n != 0) std::memcpy(dst, src, n * sizeof(float));
}
inline void storeU32(std::byte* dst, std::uint32_t v) noexcept {
  std::memcpy(dst, &v, sizeof v);
}
inline std::uint32_t loadU32(const std::byte* src) noexcept {
  std::uint32_t v;
  std::memcpy(&v, src, sizeof v);
  return v;
}
inline float loadF32(const std::byte* src) noexcept {
  float v;
  std::memcpy(&v, src, sizeof v);
  return v;
}

}  // namespace skyring::compression
