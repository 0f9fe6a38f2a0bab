// The coordinator's durable state on disk (internal): one file, dir/coordinator.ckpt,
// replaced atomically after every closed round.
//
// Save: write dir/coordinator.ckpt.tmp, fsync it, rename it over coordinator.ckpt, fsync
// the directory. A crash at any point leaves either the previous checkpoint or the new one
// (plus, perhaps, a stale .tmp that load ignores and the next save overwrites), never a
// mix: rename is atomic, and the fsyncs make the file's bytes durable before its name and
// the name durable before save returns (so the round is not acknowledged before).
//
// Format (little-endian; docs/coordinator.md):
//   "SKCK" | u32 version (1) | u64 round | u64 count | u32 members
//   | members x (u16 name length, name, u8 active, u32 n, n x u64 counted round)
//   | count x f32 weights | count x f32 momentum | u32 CRC32C of everything before
// load refuses a file whose magic, version, sizes or CRC do not match (a torn or corrupt
// checkpoint) with InvalidArgument naming the file and what was wrong, and never guesses.
//
// I/O failures (open, write, fsync, rename) throw TransportError with errno's text. Not
// thread-safe for one directory: one coordinator process owns it.
#pragma once

#include <optional>
#include <string>

#include "coordinator/state.h"

namespace skyring::coordinator {

inline constexpr const char* kCheckpointName = "coordinator.ckpt";

void saveCheckpoint(const std::string& dir, const CoordinatorState& state);
// The state of the last completed save, or nullopt if dir holds no checkpoint yet.
std::optional<CoordinatorState> loadCheckpoint(const std::string& dir);

}  // namespace skyring::coordinator
