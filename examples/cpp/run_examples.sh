#!/usr/bin/env bash
# CI's check of the C++ demo (ctest example.train_digits_demo): train_digits shortened to
# 2 epochs, through run_train_digits.sh exactly as examples/cpp/README.md runs it (4 ranks in
# 2 clouds: network namespaces behind 1 Gbit/s links as root, else SKYRING_CLOUD only),
# full precision then int8 on the cross-cloud hop. Fails when the job fails or outlasts its
# limit, when a run's accuracy did not rise from the untrained model's by 50 points, or
# when the report counted no cross-cloud bytes.
#
#   bash examples/cpp/run_examples.sh [TRAIN_DIGITS]   (default build/examples/train_digits)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=${1:-$here/../../build/examples/train_digits}
limit=${SKYRING_EXAMPLE_TIMEOUT:-240}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

fail() {
  echo "run_examples: train_digits: $*" >&2
  exit 1
}
rc=0
bash "$here/run_train_digits.sh" --program "$prog" --timeout "$limit" -- --epochs 2 \
  --min-accuracy 0.8 >"$log" 2>&1 || rc=$?
cat "$log"
[[ $rc -eq 124 ]] && fail "did not finish in ${limit}s"
[[ $rc -eq 0 ]] || fail "failed (exit $rc)"
[[ $(grep -c '^epoch [0-9]*/2 \[#*\] ' "$log") -eq 4 ]] || fail "not one progress line per epoch and run"
# Each run: its untrained accuracy, then its epochs; the last epoch must be 50 points higher.
awk '/^untrained: test accuracy/ { gsub("%", "", $4); start = $4 }
     /^epoch 2\/2 / { for (i = 1; i <= NF; i++) if ($i == "accuracy") { v = $(i + 1); sub("%,", "", v) }
                      if (v - start < 50) bad = 1; runs++ }
     END { exit !(runs == 2 && !bad) }' "$log" || fail "the accuracy did not rise by 50 points in each run"
cross=$(awk '$1 == "cross-cloud" && $2 == "bytes" { gsub(",", "", $3); gsub(",", "", $4); print $3 + 0, $4 + 0 }' "$log")
read -r none int8 <<<"$cross"
[[ ${none:-0} -gt 0 && ${int8:-0} -gt 0 ]] || fail "no cross-cloud bytes in the report"
((int8 < none)) || fail "int8 sent no fewer cross-cloud bytes ($int8) than full precision ($none)"
echo "run_examples: train_digits passed (cross-cloud bytes: $none full precision, $int8 int8)"
