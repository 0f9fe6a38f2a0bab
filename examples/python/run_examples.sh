#!/usr/bin/env bash
# CI's check of the Python examples: train_digits.py on 4 ranks in 2 emulated clouds, int8
# on the cross-cloud hop, exactly as examples/python/README.md runs it. Fails when the job
# fails or outlasts its time limit, when the accuracy is below 90% (the example's own
# --min-accuracy), or when the report shows no cross-cloud traffic (the clouds were not
# emulated).
#
#   bash examples/python/run_examples.sh [PYTHON]
#
# PYTHON (default /usr/bin/python3) must import skyring and torch: the virtual environment
# of .ci/python-tests, or Debian's Python with PYTHONPATH=build/bindings/python.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-/usr/bin/python3}
limit=${SKYRING_EXAMPLE_TIMEOUT:-300}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

rc=0
timeout "$limit" "$py" -m skyring.run -np 4 --clouds aws:2,gcp:2 \
  "$py" examples/python/train_digits.py --epochs 5 --min-accuracy 0.9 >"$log" 2>&1 || rc=$?
cat "$log"
fail() {
  echo "run_examples: train_digits: $*" >&2
  exit 1
}
[[ $rc -eq 124 ]] && fail "did not finish in ${limit}s"
[[ $rc -eq 0 ]] || fail "failed (exit $rc)"
grep -q '^final test accuracy' "$log" || fail "no final accuracy in the output"
[[ $(grep -c '^epoch [0-9]*/5 \[#*\] ' "$log") -eq 5 ]] || fail "not one progress line per epoch"
cross=$(awk '$1 == "cross-cloud" { gsub(",", "", $2); print $2 }' "$log")
[[ ${cross:-0} -gt 0 ]] || fail "no cross-cloud bytes in the traffic report"
echo "run_examples: train_digits passed"
