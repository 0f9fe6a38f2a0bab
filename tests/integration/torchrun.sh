#!/usr/bin/env bash
# torchrun.sh N PROGRAM [ARGS...]: starts N processes of PROGRAM on this machine with
# torchrun-style variables (no mpirun), waits for all, and prints each exit code as
# "rank R exit C". Exits 0 only if every rank exited 0. Bounded by TORCHRUN_TIMEOUT
# seconds (default 300).
set -uo pipefail
n=$1; shift
port=$(( 20000 + RANDOM % 20000 ))
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 \
    MASTER_PORT=$port timeout "${TORCHRUN_TIMEOUT:-300}" "$@" &
  pids+=($!)
done
status=0
for ((r = 0; r < n; r++)); do
  wait "${pids[$r]}"
  code=$?
  echo "rank $r exit $code"
  [[ $code == 0 ]] || status=1
done
exit $status
