#!/usr/bin/env bash
# capture_sealed.sh PATTERN_MAIN: two clouds in network namespaces (benchmarks/wan_netns.sh,
# 2 ranks each), one allreduce of a recognisable float pattern (pattern_main), cloud 0's
# link captured (benchmarks/sniff.py). Without a job token the pattern (times 1, 2 or 4,
# as sums of equal values) must appear in the capture; with one, sealed, it must not.
# Exit 0 on success, 1 on failure, 77 when namespaces are not available (root, ip netns).
set -uo pipefail
program=${1:?usage: capture_sealed.sh PATTERN_MAIN}
here=$(cd "$(dirname "$0")" && pwd)
netns=$here/../../benchmarks/wan_netns.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# occurrences FILE: how many times 4 equal floats k*1234.5678 (k = 1, 2, 4) lie in FILE.
occurrences() {
  python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
print(sum(data.count(struct.pack("<4f", *([k * 1234.5678] * 4))) for k in (1, 2, 4)))
PY
}

# run NAME [--env ...]: the job with the capture; fails unless every rank says ok.
run() {
  local name=$1
  shift
  env -u SKYRING_JOB_TOKEN "$netns" --clouds 2 --ranks-per-cloud 2 --timeout 120 \
    --capture "$dir/$name.bin" "$@" -- "$program" >"$dir/$name.out" 2>&1
  local rc=$?
  cat "$dir/$name.out"
  ((rc == 77)) && exit 77
  ((rc == 0)) && (($(grep -c 'pattern allreduce ok' "$dir/$name.out") == 4)) ||
    { echo "capture_sealed.sh: the $name job failed"; exit 1; }
}

run plain --env SKYRING_ENCRYPT=none
run sealed --env SKYRING_JOB_TOKEN=capture-test-token-0123456789
plain=$(occurrences "$dir/plain.bin")
sealed=$(occurrences "$dir/sealed.bin")
echo "pattern found in the capture: plain $plain times, sealed $sealed times" \
  "($(stat -c %s "$dir/plain.bin") and $(stat -c %s "$dir/sealed.bin") bytes captured)"
((plain > 0)) || { echo "capture_sealed.sh: the plain capture lacks the pattern"; exit 1; }
((sealed == 0)) || { echo "capture_sealed.sh: the pattern crossed the sealed link"; exit 1; }
echo "capture_sealed.sh: ok"
