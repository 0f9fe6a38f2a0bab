#!/usr/bin/env bash
# node_level_bench.sh: skyring, Open MPI and Gloo on 2 emulated nodes x 2 ranks, in one run.
#
#   benchmarks/node_level_bench.sh [options] BUILD_DIR
#     --nodes K        network namespaces, one per node (default 2)
#     --ranks R        ranks per node (default 2)
#     --sizes "B E F"  allreduce_perf's -b -e -f (default "16M 256M 4": 16, 64, 256 MiB)
#     -n N -w W        timed and warm-up iterations per size (default 5 and 2)
#     --repeat X       runs of each peer, alternating skyring+MPI with Gloo (default 3)
#     --timeout S      each mpirun is bounded to S seconds (default 300)
#     --env NAME=VALUE set in every rank of the skyring/MPI run (repeatable)
#     --prefix "CMD"   run allreduce_perf under CMD, e.g. "perf record -g -o /tmp/p.%r"
#                      (%r: the rank); --no-gloo skips Gloo
#
# Each node is a namespace with one veth into a bridge (no shaping, no netem: the link is
# the kernel's veth). Ranks are started by `mpirun` (run inside the bridge's namespace)
# through an rsh agent that enters the node's namespace, so Open MPI sees K hosts: its
# vader shared memory inside a node, TCP (btl_tcp_if_include on the bridge's subnet)
# between nodes. skyring runs in the same job (allreduce_perf --peer mpi: same buffers,
# MPI_Allreduce right after skyring at each size) with SKYRING_NODE set to the namespace,
# UCX_TLS=tcp,self and UCX_NET_DEVICES=wan0 (UCX would otherwise reach the other
# namespace through shared memory and bypass the link). Gloo runs as a second mpirun job
# (torch.distributed, gloo backend, GLOO_SOCKET_IFNAME=wan0), everything over TCP as Gloo
# always is.
#
# `--mca rtc ^hwloc`: an orted started in a namespace sometimes crashed writing hwloc's
# shared topology (hwloc_shmem_topology_write, SIGSEGV; 2 runs of 6 on 2026-11-29); the
# ranks are not bound, so that component has nothing to do here.
#
# Output: each run's tables, then per size the medians over the runs of the mean time per
# call (the slowest rank's) and the ratios peer / skyring (above 1: skyring faster).
# Namespaces, veths and the bridge are removed on every exit path; needs root, `ip`,
# mpirun, and Debian's /usr/bin/python3 with python3-torch (else Gloo is skipped).
set -uo pipefail

nodes=2 ranks=2 sizes="16M 256M 4" iters=5 warmup=2 repeat=3 timeout_s=300
extra_env=()
prefix="" nogloo=0
while (($# > 0)); do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    -n) iters=$2; shift 2 ;;
    -w) warmup=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --env) extra_env+=(-x "$2"); shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --no-gloo) nogloo=1; shift ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
(($# == 1)) || { echo "usage: $0 [options] BUILD_DIR (--help)" >&2; exit 2; }
build=$(cd "$1" && pwd) || exit 2
perf=$build/benchmarks/allreduce_perf
[[ -x $perf ]] || { echo "no $perf (build with -DSKYRING_BUILD_BENCHMARKS=ON)" >&2; exit 2; }
((EUID == 0)) || { echo "node_level_bench.sh: skipped: needs root" >&2; exit 77; }
read -r b e f <<<"$sizes"
here=$(cd "$(dirname "$0")" && pwd)

name=$(printf 'skn%x' $$)
ctl=$name-ctl
tmp=$(mktemp -d)
created=()
cleanup() {
  trap - EXIT INT TERM
  local ns pid
  for ns in "${created[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  for ns in "${created[@]}"; do
    ip netns del "$ns" 2>/dev/null
    [[ $ns == "$ctl" ]] || rm -rf "/dev/shm/$ns"
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$ctl" && created+=("$ctl") || exit 1
ip -n "$ctl" link set lo up
ip -n "$ctl" link add "${name}br" type bridge
ip -n "$ctl" addr add 10.97.0.254/24 dev "${name}br"
ip -n "$ctl" link set "${name}br" up
: >"$tmp/hosts"
for ((i = 0; i < nodes; i++)); do
  ns=$name-node$i
  ip netns add "$ns" && created+=("$ns") || exit 1
  ip -n "$ns" link set lo up
  ip -n "$ctl" link add "${name}n$i" type veth peer name wan0 netns "$ns"
  ip -n "$ctl" link set "${name}n$i" master "${name}br" up
  ip -n "$ns" addr add "10.97.0.$((i + 1))/24" dev wan0
  ip -n "$ns" link set wan0 up
  echo "$ns slots=$ranks" >>"$tmp/hosts"
done
# mpirun's "remote shell": the host is the namespace; the node's name goes to skyring.
cat >"$tmp/agent" <<'EOF'
#!/bin/bash
host=$1; shift
# The namespaces share /dev/shm and the hostname, from which vader names its segments:
# one directory per node keeps local rank 0 of two nodes apart.
mkdir -p "/dev/shm/$host"
exec ip netns exec "$host" env SKYRING_NODE="$host" \
  OMPI_MCA_btl_vader_backing_directory="/dev/shm/$host" bash -c "$*"
EOF
chmod +x "$tmp/agent"

np=$((nodes * ranks))
mpi=(timeout -k 5 "$timeout_s" ip netns exec "$ctl" env OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --hostfile "$tmp/hosts" -np "$np" --map-by slot
  --mca plm_rsh_agent "$tmp/agent" --mca oob_tcp_if_include 10.97.0.0/24
  --mca btl_tcp_if_include 10.97.0.0/24 --mca rtc ^hwloc)
gloo=0
((nogloo)) || { /usr/bin/python3 -c 'import torch.distributed' 2>/dev/null && gloo=1; }
run_perf=("$perf")
[[ -z $prefix ]] || run_perf=(bash -c "exec ${prefix//%r/\$OMPI_COMM_WORLD_RANK} \"\$@\"" _ "$perf")

for ((x = 1; x <= repeat; x++)); do
  echo "## run $x: skyring and MPI_Allreduce"
  "${mpi[@]}" -x UCX_TLS=tcp,self -x UCX_NET_DEVICES=wan0 -x SKYRING_LOG_LEVEL=info \
    "${extra_env[@]}" "${run_perf[@]}" -b "$b" -e "$e" -f "$f" -n "$iters" -w "$warmup" --peer mpi \
    2>&1 | tee "$tmp/sky$x" || { echo "skyring/MPI run failed" >&2; exit 1; }
  if ((gloo)); then
    echo "## run $x: Gloo"
    "${mpi[@]}" -x MASTER_ADDR=10.97.0.1 -x MASTER_PORT=$((29500 + x)) -x GLOO_SOCKET_IFNAME=wan0 \
      /usr/bin/python3 "$here/gloo_allreduce_perf.py" --from-env -b "$b" -e "$e" -f "$f" \
      -n "$iters" -w "$warmup" 2>&1 | tee "$tmp/gloo$x" || { echo "Gloo run failed" >&2; exit 1; }
  fi
done

echo "## medians over $repeat runs: ms per allreduce (mean of $iters calls, slowest rank)"
/usr/bin/python3 - "$tmp" "$repeat" <<'EOF'
import statistics, sys
tmp, repeat = sys.argv[1], int(sys.argv[2])
sky, mpi, gloo = {}, {}, {}
def rows(path):
    try:
        for line in open(path):
            p = line.split()
            if p and p[0].isdigit():
                yield p
    except FileNotFoundError:
        return
for x in range(1, repeat + 1):
    for p in rows(f"{tmp}/sky{x}"):
        sky.setdefault(int(p[0]), []).append(float(p[4]) / 1e3)
        mpi.setdefault(int(p[0]), []).append(float(p[8]) / 1e3)
    for p in rows(f"{tmp}/gloo{x}"):
        gloo.setdefault(int(p[0]), []).append(float(p[4]) / 1e3)
print(f"| size | skyring ms | Open MPI ms | Gloo ms | MPI / skyring | Gloo / skyring |")
print(f"|---:|---:|---:|---:|---:|---:|")
for size in sorted(sky):
    s, m = statistics.median(sky[size]), statistics.median(mpi[size])
    g = statistics.median(gloo[size]) if size in gloo else float("nan")
    print(f"| {size >> 20} MiB | {s:.1f} | {m:.1f} | {g:.1f} | {m / s:.2f} | {g / s:.2f} |")
EOF
