#!/usr/bin/env bash
# The command-line contract of every program we ship (benchmarks/cli.h), checked by running
# it: each bad argument or SKYRING_* setting must exit 2 with "<program>: error: ..." and a
# "usage: ..." line on stderr; a failed run must exit 1 with the error line; none may die
# in std::terminate ("terminate called") or by a signal, or hang; and the good runs listed
# must succeed.
#
#   bad_arguments.sh PROGRAM   (allreduce_inprocess, allreduce_perf, engine_bench,
#                               engine_latency_bench, wan_bench,
#                               reduce_bench, compression_bench, compression_bench_cuda,
#                               train_digits)
set -u
prog=$1
name=$(basename "$prog")
failures=0
stderr_file=$(mktemp)
stdout_file=$(mktemp)
trap 'rm -f "$stderr_file" "$stdout_file"' EXIT

# run WANT_RC [NAME=VALUE...] -- ARGS...: runs the program (at most 60 s) and checks it.
run() {
  local want=$1
  shift
  local envs=()
  while [[ $1 != -- ]]; do
    envs+=("$1")
    shift
  done
  shift
  timeout 60 env "${envs[@]}" "$prog" "$@" >"$stdout_file" 2>"$stderr_file"
  local rc=$?
  local what="$name ${envs[*]} $*"
  local bad=""
  if ((rc == 124)); then
    bad="timed out"
  elif ((rc > 128)); then
    bad="died by signal $((rc - 128))"
  elif ((rc != want)); then
    bad="exit status $rc, expected $want"
  elif grep -q "terminate called" "$stderr_file"; then
    bad="std::terminate"
  elif ((want != 0)) && ! grep -q "^$name: error: ." "$stderr_file"; then
    bad="no '$name: error: ...' line on stderr"
  elif ((want == 2)) && ! grep -q "^usage: .*$name" "$stderr_file"; then
    bad="no usage line on stderr"
  fi
  if [[ -n $bad ]]; then
    echo "FAIL: $what: $bad"
    sed 's/^/  stderr: /' "$stderr_file" | head -5
    failures=$((failures + 1))
  else
    echo "ok:   $what -> $rc: $(head -1 "$stderr_file")"
  fi
}

# usage ARGS...: a bad argument.
usage() { run 2 -- "$@"; }

# A runtime failure: this rank joins a job whose store never answers.
join_nobody=(RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29731
  SKYRING_INIT_TIMEOUT_MS=1000 SKYRING_TIMEOUT_MS=1000)

case $name in
  allreduce_inprocess)
    usage 4 -1
    usage 2 2000000000
    usage -1
    usage 0
    usage abc
    usage 4 1e3
    usage 4 ""
    usage 300 10
    usage 256 1073741824  # exceeds memory on any machine we run on
    usage 4 10 extra
    run 2 SKYRING_TIMEOUT_MS=abc --
    run 2 SKYRING_RING_CHUNK_BYTES=4294967296 -- 4 1000
    run 2 SKYRING_SHM_RING_BYTES=1099511627776 -- 2 10
    run 0 -- --help
    run 0 -- 4 4000000
    grep -q ": OK (" "$stdout_file" || {
      echo "FAIL: '4 4000000' did not print OK"
      failures=$((failures + 1))
    }
    run 0 SKYRING_RING_CHUNK_BYTES=268435456 -- 4 1000
    ;;
  allreduce_perf)
    usage -b abc
    usage -e 1X
    usage -e 100G
    usage -e 1000000G
    usage -f 1
    usage -n 0
    usage -n -5
    usage -w -1
    usage -c 2
    usage -d complex
    usage -o xor
    usage --peer gloo
    usage -b 8 -e 4
    usage -b
    usage --bogus
    usage -e 2G -d int8 --peer mpi
    run 2 SKYRING_TIMEOUT_MS=abc --
    run 0 -- --help
    run 1 "${join_nobody[@]}" -- -b 8 -e 8 -n 1 -w 0
    ;;
  engine_latency_bench)
    usage
    usage --wan 0x2
    usage --wan 2x
    usage --overhead --ranks 0
    usage --overhead --tensors -1
    usage --overhead --bytes 6
    usage --overhead --link-gbit 0
    usage --overhead -n 0
    usage --bogus
    run 2 SKYRING_TIMEOUT_MS=abc -- --overhead
    run 0 -- --help
    run 0 -- --overhead --ranks 2 --tensors 10 -n 1 -w 0
    ;;
  engine_bench)
    usage --models vgg16
    usage --models resnet50,,bert-base
    usage --models
    usage -n 0
    usage -w -1
    usage --order sideways
    usage --peers nccl
    usage --gloo /nonexistent/gloo.txt
    usage --seed x
    usage --bogus
    run 2 SKYRING_TIMEOUT_MS=abc --
    run 0 -- --help
    run 0 -- --print-shapes
    grep -q '"resnet50"' "$stdout_file" || {
      echo "FAIL: --print-shapes printed no resnet50"
      failures=$((failures + 1))
    }
    run 1 "${join_nobody[@]}" -- --models resnet50 -n 1 -w 0
    ;;
  wan_bench)
    usage --inprocess 100000x100000
    usage --inprocess 0x2
    usage --inprocess 2x
    usage --inprocess 2x2x2
    usage --inprocess 32x16
    usage --inprocess 64x4 --sizes 8G
    usage --sizes 1X
    usage --sizes 1M,,2M
    usage --sizes 6
    usage --sizes 100G
    usage --algorithms tree
    usage --compression bogus
    usage -n 0
    usage -w -1
    usage --link-gbit 0
    usage --link-gbit nan
    usage --latency-ms -1
    usage --order sideways
    usage --order
    usage --bogus
    run 2 SKYRING_TIMEOUT_MS=abc -- --inprocess 2x2 --sizes 1K
    run 2 SKYRING_TIMEOUT_MS=abc -- --sizes 1K
    run 0 -- --help
    run 1 "${join_nobody[@]}" -- --sizes 1K -n 1
    run 0 -- --inprocess 2x2 --sizes 4K -n 1 -w 0
    ;;
  train_digits)
    usage --epochs 0
    usage --batch-size 2000
    usage --lr 0
    usage --momentum 1
    usage --compression bogus
    usage --min-accuracy 1.5
    usage --epochs
    usage --bogus
    run 1 -- --data /nonexistent/digits.csv
    run 2 SKYRING_TIMEOUT_MS=abc --
    run 0 -- --help
    run 1 "${join_nobody[@]}" -- --epochs 1
    run 0 -- --epochs 1 --compression none
    grep -q "^untrained: test accuracy" "$stdout_file" || {
      echo "FAIL: --epochs 1 printed no untrained accuracy"
      failures=$((failures + 1))
    }
    ;;
  reduce_bench | compression_bench | compression_bench_cuda)
    usage --bogus
    usage extra
    usage --benchmark_repetitions=abc
    usage --benchmark_format=xml
    usage --benchmark_out_format=bad
    # Without a GPU the CUDA one skips every benchmark, so no filter is ever matched.
    if [[ $name != compression_bench_cuda ]] || nvidia-smi -L >/dev/null 2>&1; then
      usage --benchmark_filter=no_such_benchmark
      usage "--benchmark_filter=["
    fi
    run 0 -- --benchmark_filter=Memcpy --benchmark_min_time=0.01
    ;;
  *)
    echo "bad_arguments.sh: no cases for $name"
    exit 2
    ;;
esac

if ((failures > 0)); then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all cases passed"
