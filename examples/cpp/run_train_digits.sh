#!/usr/bin/env bash
# run_train_digits.sh: launches train_digits with mpirun over 2 emulated clouds.
#
#   examples/cpp/run_train_digits.sh [options] [-- TRAIN_DIGITS_ARGS...]
#     --program PATH        the train_digits binary (default build/examples/train_digits)
#     --ranks-per-cloud C   ranks in each of the 2 clouds (default 2)
#     --rate RATE           each cloud's link, both directions, as tc tbf (default 1gbit)
#     --no-netns            declare the clouds with SKYRING_CLOUD only, even as root
#     --timeout S           bound on the whole run in seconds (default 600)
#     --env NAME=VALUE      set a variable in every rank (repeatable)
#
# As root, where network namespaces work, each cloud is a namespace behind a shaped veth,
# laid out as benchmarks/wan_netns.sh does (cloud i at 10.99.0.<i+1>, a bridge at
# 10.99.0.254 in a control namespace; tbf on both ends of each cloud's veth). mpirun cannot
# simply `ip netns exec` its ranks: each rank's PMIx client reaches its daemon over
# loopback, which namespaces do not share. So every namespace is treated as a host:
# mpirun runs in the control namespace with a hostfile of the cloud addresses and an rsh
# agent that starts Open MPI's daemon (orted) inside the cloud's namespace instead of over
# ssh; each daemon then starts its ranks beside it (/work/shared/WAN-EMULATION.md).
# Open MPI's shared-memory BTL must stay off between namespaces (they look like one node
# and vader crashes), and UCX is held to TCP on wan0, else it would join the namespaces
# over shared memory and bypass the shaped link. MPI is used only to bootstrap.
#
# Otherwise (not root, no namespaces, or --no-netns) it is one plain mpirun with one app
# context per cloud, each with its own SKYRING_CLOUD (-x applies per app context): the
# clouds are declared, not shaped, and the bytes are still metered per link class.
#
# Every rank gets SKYRING_CLOUD=aws or gcp and SKYRING_NODE=<cloud>-node (one node per
# cloud). Exit status: train_digits's (rank 0's, as mpirun reports it), 124 when the run
# outlasted --timeout, 2 on a usage error. The namespaces are removed on every exit path.
set -uo pipefail

usage() {
  sed -n '/^#   examples/,/^#     --env/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "run_train_digits.sh: $*" >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
program=$here/../../build/examples/train_digits
per_cloud=2
rate=1gbit
netns=1
timeout_s=600
extra_env=()
while (($# > 0)); do
  case $1 in
    --program) program=${2-}; shift 2 || usage ;;
    --ranks-per-cloud) per_cloud=${2-}; shift 2 || usage ;;
    --rate) rate=${2-}; shift 2 || usage ;;
    --no-netns) netns=0; shift ;;
    --timeout) timeout_s=${2-}; shift 2 || usage ;;
    --env) extra_env+=("${2-}"); shift 2 || usage ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) die "unknown option '$1' (train_digits's options go after --)" ;;
  esac
done
[[ $per_cloud =~ ^[1-9][0-9]{0,3}$ ]] || die "--ranks-per-cloud: 1 to 9999"
[[ $timeout_s =~ ^[1-9][0-9]{0,6}$ ]] || die "--timeout: a positive number of seconds"
[[ $rate =~ ^[0-9]+([.][0-9]+)?[a-zA-Z]*$ ]] || die "--rate: a tc rate such as 1gbit"
for kv in "${extra_env[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv': expected NAME=VALUE"
done
[[ -x $program ]] || die "no program at $program (build it, or pass --program)"
program=$(cd "$(dirname "$program")" && pwd)/$(basename "$program")
command -v mpirun >/dev/null || die "mpirun is not installed"

clouds=(aws gcp)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# -x NAME=VALUE for every rank: the caller's --env, and the job's settings that mpirun
# would not forward by itself (remote daemons do not hand the whole environment on). The
# clouds, nodes and UCX's transports are set per app context below.
xargs_all=()
for var in $(compgen -e); do
  [[ $var == SKYRING_CLOUD || $var == SKYRING_NODE || $var == UCX_TLS || $var == UCX_NET_DEVICES ]] &&
    continue
  [[ $var == SKYRING_* || $var == UCX_* ]] && xargs_all+=(-x "$var")
done
for kv in "${extra_env[@]}"; do xargs_all+=(-x "$kv"); done

if ((netns)) && ((EUID == 0)) && command -v ip >/dev/null && command -v tc >/dev/null; then
  name=$(printf 'trd%x' $$)
  ctl=$name-ctl
  tmp=$(mktemp -d)
  created=()
  cleanup() {
    trap - EXIT INT TERM
    local ns pid
    for ns in "${created[@]}"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    done
    for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$tmp"
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  setup() {
    local err
    err=$("$@" 2>&1) || {
      echo "run_train_digits.sh: setup failed: $*: $err" >&2
      return 1
    }
  }
  made=1
  if setup ip netns add "$ctl"; then
    created+=("$ctl")
    setup ip -n "$ctl" link set lo up &&
      setup ip -n "$ctl" link add "${name}br" type bridge &&
      setup ip -n "$ctl" addr add 10.99.0.254/24 dev "${name}br" &&
      setup ip -n "$ctl" link set "${name}br" up || made=0
    for i in 0 1; do
      ((made)) || break
      ns=$name-cloud$i
      setup ip netns add "$ns" || { made=0; break; }
      created+=("$ns")
      setup ip -n "$ns" link set lo up &&
        setup ip -n "$ctl" link add "${name}c$i" type veth peer name wan0 netns "$ns" &&
        setup ip -n "$ctl" link set "${name}c$i" master "${name}br" up &&
        setup ip -n "$ns" addr add "10.99.0.$((i + 1))/24" dev wan0 &&
        setup ip -n "$ns" link set wan0 up &&
        setup tc -n "$ns" qdisc replace dev wan0 root tbf rate "$rate" burst 128kb latency 50ms &&
        setup tc -n "$ctl" qdisc replace dev "${name}c$i" root tbf rate "$rate" burst 128kb \
          latency 50ms || made=0
    done
  else
    made=0
  fi
  if ((made)); then
    echo "run_train_digits.sh: 2 clouds as network namespaces behind $rate links," \
      "$per_cloud ranks each, mpirun through an rsh agent" >&2
    for i in 0 1; do echo "10.99.0.$((i + 1)) slots=$per_cloud"; done >"$tmp/hosts"
    # Open MPI runs "AGENT HOST COMMAND..." to start its daemon on HOST: here HOST is a
    # cloud's address, and the daemon starts inside that cloud's namespace.
    cat >"$tmp/agent" <<EOF
#!/bin/bash
host=\$1; shift
exec ip netns exec "$name-cloud\$((\${host##*.} - 1))" bash -c "\$*"
EOF
    chmod +x "$tmp/agent"
    apps=()
    for i in 0 1; do
      ((i == 0)) || apps+=(:)
      apps+=(-np "$per_cloud" --host "10.99.0.$((i + 1)):$per_cloud"
        -x "SKYRING_CLOUD=${clouds[$i]}" -x "SKYRING_NODE=${clouds[$i]}-node"
        -x UCX_TLS="${UCX_TLS:-tcp,self}" -x UCX_NET_DEVICES="${UCX_NET_DEVICES:-wan0}"
        "${xargs_all[@]}" "$program" "$@")
    done
    # rtc_hwloc_vmhole none: the daemons do not share their hwloc topology through shared
    # memory mapped at a fixed address; one in about a dozen runs here, a daemon crashed in
    # hwloc_shmem_topology_write (SIGSEGV) when that address was taken.
    timeout -k 10 "$timeout_s" ip netns exec "$ctl" mpirun --hostfile "$tmp/hosts" \
      --mca plm_rsh_agent "$tmp/agent" --mca routed direct --mca btl tcp,self \
      --mca btl_tcp_if_include 10.99.0.0/24 --mca oob_tcp_if_include 10.99.0.0/24 \
      --mca pml ob1 --mca rtc_hwloc_vmhole none --oversubscribe --bind-to none "${apps[@]}"
    rc=$?
    for i in 0 1; do
      up=$(tc -n "$name-cloud$i" -s qdisc show dev wan0 | awk '/Sent/ { print $2; exit }')
      echo "wan ${clouds[$i]} up_bytes=${up:-?} (the tbf qdisc's count: headers and bootstrap included)"
    done
    exit $rc
  fi
  echo "run_train_digits.sh: namespaces cannot be made here; declaring the clouds only" >&2
  cleanup
fi

echo "run_train_digits.sh: 2 clouds declared with SKYRING_CLOUD (not shaped)," \
  "$per_cloud ranks each, one mpirun" >&2
for var in UCX_TLS UCX_NET_DEVICES; do
  [[ -n ${!var+x} ]] && xargs_all+=(-x "$var")
done
apps=()
for i in 0 1; do
  ((i == 0)) || apps+=(:)
  apps+=(-np "$per_cloud" -x "SKYRING_CLOUD=${clouds[$i]}" -x "SKYRING_NODE=${clouds[$i]}-node"
    "${xargs_all[@]}" "$program" "$@")
done
timeout -k 10 "$timeout_s" mpirun --oversubscribe --bind-to none "${apps[@]}"
