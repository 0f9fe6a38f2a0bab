// Scratch memory of the collective algorithms.
//
// Settings (chunk bytes, pipeline depth) bound scratch, they never size it alone: callers
// size every buffer by what the call moves (chunkElems in ring.h), so a large
// SKYRING_RING_CHUNK_BYTES costs a small message nothing. An allocation that still fails
// (a large message on a small host) becomes an InvalidArgument naming what was being
// allocated and what sized it, never a bare std::bad_alloc. The Communicator aborts the
// group when a collective fails, so that peers fail at once instead of at their timeout.
// Free functions, no state: safe from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <string_view>
#include <vector>

#include "skyring/error.h"

namespace skyring::collectives {

// `bytes` of uninitialised scratch (zeroing a large buffer costs more than using it).
inline std::unique_ptr<std::byte[]> allocateScratch(std::size_t bytes, const ErrorContext& ctx,
                                                    std::string_view what,
                                                    std::string_view sizedBy) {
  try {
    return std::make_unique_for_overwrite<std::byte[]>(bytes);
  } catch (const std::bad_alloc&) {
    SKYRING_THROW(InvalidArgument, ctx, "out of memory allocating ", bytes, " bytes of ", what,
                  " (", sizedBy, ")");
  }
}

// Grows `scratch` to at least `bytes`, with the same failure as allocateScratch.
inline void growScratch(std::vector<std::byte>& scratch, std::size_t bytes, const ErrorContext& ctx,
                        std::string_view what, std::string_view sizedBy) {
  if (scratch.size() >= bytes) return;
  try {
    scratch.resize(bytes);
  } catch (const std::bad_alloc&) {
    SKYRING_THROW(InvalidArgument, ctx, "out of memory allocating ", bytes, " bytes of ", what,
                  " (", sizedBy, ")");
  } catch (const std::length_error&) {
    SKYRING_THROW(InvalidArgument, ctx, "cannot allocate ", bytes, " bytes of ", what, " (",
                  sizedBy, ")");
  }
}

}  // namespace skyring::collectives
