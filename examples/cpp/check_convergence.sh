#!/usr/bin/env bash
# Convergence check of train_digits (ctest example.train_digits_convergence): 4 ranks under
# mpirun with batch 32 each must reach the test accuracy of one process with batch 128 and
# the same total learning rate (0.1), within 0.5 points, from the same seed in the same
# epochs, in full precision. The program splits every global batch of 128 among the ranks,
# so the two runs step alike up to floating-point order.
#
#   check_convergence.sh TRAIN_DIGITS [EPOCHS]
set -uo pipefail
prog=$1
epochs=${2:-3}
limit=${SKYRING_EXAMPLE_TIMEOUT:-200}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

fail() {
  echo "check_convergence: $*" >&2
  exit 1
}
# final LOG: the last epoch's test accuracy in percent.
final() { sed -n 's/^epoch .* test accuracy \([0-9.]*\)%.*/\1/p' "$1" | tail -1; }

timeout "$limit" "$prog" --compression none --epochs "$epochs" --batch-size 128 --lr 0.1 \
  >"$log" 2>&1 || { cat "$log"; fail "the single process failed (exit $?)"; }
cat "$log"
one=$(final "$log")
timeout "$limit" mpirun -np 4 --oversubscribe --bind-to none "$prog" --compression none \
  --epochs "$epochs" --batch-size 32 --lr 0.025 >"$log" 2>&1 ||
  { cat "$log"; fail "the 4 ranks under mpirun failed (exit $?)"; }
cat "$log"
four=$(final "$log")
[[ -n $one && -n $four ]] || fail "no final accuracy in the output"
awk -v a="$one" -v b="$four" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.5) }' ||
  fail "1 rank x batch 128: $one%, 4 ranks x batch 32: $four%: more than 0.5 points apart"
echo "check_convergence: 1 rank x batch 128: $one%, 4 ranks x batch 32: $four%: passed"
