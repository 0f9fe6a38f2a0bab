// CRC32C (Castagnoli), the checksum of the coordinator's frames and checkpoints.
// Hardware (SSE4.2 crc32) where the CPU has it, else a table; both give the same value.
// Pure; any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace skyring::coordinator {

// Extends crc (0 for a fresh checksum) over bytes; crc32c(b, crc32c(a)) == crc32c(a + b).
std::uint32_t crc32c(std::span<const std::byte> bytes, std::uint32_t crc = 0) noexcept;

}  // namespace skyring::coordinator
