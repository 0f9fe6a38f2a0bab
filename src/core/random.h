// Random bytes from the kernel (getrandom), for nonces of the handshakes (the bootstrap
// store's and the coordinator's). Internal. Thread-safe; blocks only until the kernel's
// pool is initialised at boot.
#pragma once

#include <cstddef>
#include <span>

#include "skyring/error.h"

namespace skyring::detail {

// Fills out entirely; throws TransportError with ctx when the kernel refuses.
void fillRandom(std::span<std::byte> out, const ErrorContext& ctx);

}  // namespace skyring::detail
