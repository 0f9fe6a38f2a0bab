#!/usr/bin/env bash
# killed_rank.sh PROGRAM: 4 ranks (torchrun-style), rank 2 is SIGKILLed mid-allreduce.
# Passes when every other rank exits with code 3 (a TransportError or Timeout naming
# rank 2) within the timeout, and none hangs.
set -uo pipefail
export SKYRING_TIMEOUT_MS=${SKYRING_TIMEOUT_MS:-10000}
start=$SECONDS
out=$(TORCHRUN_TIMEOUT=60 "$(dirname "$0")/torchrun.sh" 4 "$1" --kill 2 2>&1)
elapsed=$((SECONDS - start))
echo "$out"
for r in 0 1 3; do
  grep -q "^rank $r exit 3$" <<<"$out" || { echo "FAIL: rank $r did not report rank 2's death"; exit 1; }
done
grep -q "^rank 2 exit 137$" <<<"$out" || { echo "FAIL: rank 2 was not killed"; exit 1; }
(( elapsed <= SKYRING_TIMEOUT_MS / 1000 + 20 )) || { echo "FAIL: took ${elapsed}s"; exit 1; }
echo "PASS: ranks 0, 1, 3 named the killed rank 2 within ${elapsed}s"
