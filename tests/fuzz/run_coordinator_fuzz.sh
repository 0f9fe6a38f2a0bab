#!/usr/bin/env bash
# Builds the coordinator's frame-decoder fuzzer with Debian's clang-14 and libFuzzer
# (-fsanitize=fuzzer,address,undefined) straight from the few sources it needs, and runs it
# for SECONDS (default 60). CI runs 60 s; docs/coordinator.md gives the longer run.
#   usage: tests/fuzz/run_coordinator_fuzz.sh [SECONDS] [extra libFuzzer flags...]
# Environment: FUZZ_DIR (build and corpus folder, default build-fuzz/coordinator_wire).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
out=${FUZZ_DIR:-build-fuzz/coordinator_wire}
mkdir -p "$out/corpus"
cxx=${CLANGXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "run_coordinator_fuzz: $cxx not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }

# One seed of every message type, so the fuzzer starts from well-formed frames.
seeds=tests/fuzz/coordinator_wire_seeds.cc
if [[ ! -x "$out/seeds" || "$seeds" -nt "$out/seeds" ]]; then
  "$cxx" -std=c++20 -O1 -Iinclude -Isrc -o "$out/seeds" "$seeds" \
    src/coordinator/wire.cc src/coordinator/crc32c.cc src/core/error.cc
fi
"$out/seeds" "$out/corpus"

"$cxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Iinclude -Isrc -o "$out/fuzz" tests/fuzz/coordinator_wire_fuzz.cc \
  src/coordinator/wire.cc src/coordinator/crc32c.cc src/core/error.cc

# The corpus grows across runs in $out/corpus; a finding lands in $out as crash-* (or
# leak-*, timeout-*) and fails the script with the end of libFuzzer's log.
rc=0
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$out/fuzz" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$out/" "$@" "$out/corpus" >"$out/fuzz.log" 2>&1 || rc=$?
if ((rc != 0)); then
  tail -n 60 "$out/fuzz.log" >&2
  echo "run_coordinator_fuzz: FAILED (exit $rc); reproduce with: $out/fuzz $out/crash-..." >&2
  exit "$rc"
fi
grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added|INFO: fuzzed for)' \
  "$out/fuzz.log" || true
echo "run_coordinator_fuzz: ${seconds} s clean, corpus $(ls "$out/corpus" | wc -l) inputs"
