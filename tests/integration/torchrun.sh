#!/usr/bin/env bash
# torchrun.sh N PROGRAM [ARGS...]: starts N processes of PROGRAM on this machine with
# torchrun-style variables (no mpirun), waits for all, and prints each exit code as
# "rank R exit C". Exits 0 only if every rank exited 0. Bounded by TORCHRUN_TIMEOUT
# seconds (default 300). TORCHRUN_RANKS_PER_NODE=k places ranks on emulated nodes of k
# ranks each (SKYRING_NODE=node<r / k>), as k processes per host would be.
set -uo pipefail
n=$1; shift
k=${TORCHRUN_RANKS_PER_NODE:-$n}
port=$(( 20000 + RANDOM % 20000 ))
pids=()
for ((r = 0; r < n; r++)); do
  node=()
  [[ -n ${TORCHRUN_RANKS_PER_NODE:-} ]] && node=(SKYRING_NODE="node$((r / k))")
  env "${node[@]}" RANK=$r WORLD_SIZE=$n LOCAL_RANK=$((r % k)) LOCAL_WORLD_SIZE=$k \
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$port timeout "${TORCHRUN_TIMEOUT:-300}" "$@" &
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
