#!/usr/bin/env bash
# wan_netns.sh: emulates several clouds on this one machine with network namespaces, each
# behind a rate-limited link, and runs one program as a torchrun-style job across them
# (no mpirun: every rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
# and MASTER_PORT, as Runtime::init() expects).
#
#   benchmarks/wan_netns.sh [options] -- PROGRAM [ARGS...]
#     --clouds G            number of clouds, each its own namespace (default 2, at most 253)
#     --ranks-per-cloud C   ranks in each cloud (default 2); world size N = G*C
#     --rate RATE           tc tbf rate of each cloud's link, both directions (default 1gbit;
#                           "0" = unshaped, and the byte counts then come from the interfaces)
#     --order blocked|interleaved
#                           rank r runs in cloud r/C (blocked, default) or r%G (interleaved,
#                           the placement `mpirun --map-by node` gives)
#     --timeout S           the run is bounded to S seconds (default 300): ranks still alive
#                           then get SIGTERM, and SIGKILL 5 s later
#     --name NAME           prefix of namespace and interface names (default "skr" + the
#                           script's PID in hex, so that concurrent runs do not collide)
#     --env NAME=VALUE      set a variable in every rank (repeatable; wins over everything)
#     --capture FILE        write every frame on cloud 0's link (the bridge side of its
#                           veth) to FILE while the program runs (benchmarks/sniff.py)
#
# Layout for --clouds 3 (namespaces in [ ], all addresses on 10.99.0.0/24, NAME the prefix):
#
#   [NAME-cloud0]  ranks  10.99.0.1 wan0 ==veth== NAMEc0 --+
#   [NAME-cloud1]  ranks  10.99.0.2 wan0 ==veth== NAMEc1 --+-- NAMEbr (bridge) 10.99.0.254
#   [NAME-cloud2]  ranks  10.99.0.3 wan0 ==veth== NAMEc2 --+   [NAME-ctl]
#                                    ^              ^
#                  tbf on egress: upload            download
#
# Each cloud's veth is shaped in both directions with `tbf rate RATE burst 128kb latency 50ms`:
# the egress of wan0 inside the cloud is its upload, the egress of the bridge-side end its
# download. A byte between two clouds passes the sender's upload and the receiver's download
# qdisc; a byte between ranks of one cloud goes over that namespace's loopback route,
# unshaped. The veth pairs and the bridge are created inside the namespaces, so nothing
# outside them is touched. The kernel has no netem: added latency has to come from the
# library (the shaping transport), not from here.
#
# Why UCX_TLS=tcp,self and UCX_NET_DEVICES=wan0 are forced (unless the caller sets them):
# namespaces of one machine share memory, and UCX joins processes it takes for one host
# over shared memory (posix/sysv/cma), which would bypass the shaped link altogether. UCX
# 1.13 (Debian 12) tells hosts apart by hostname and the MAC address of the first
# interface, which differs per namespace here, so it happens to stay on TCP even unforced
# (measured); later UCX identifies a host by the kernel's boot id, the same in every
# namespace. With TCP only, on the cloud's address, ranks of different clouds meet over the
# shaped veth and ranks of one cloud over TCP through the local route, unshaped. Ranks of
# one cloud share SKYRING_NODE, so skyring's own shared-memory paths still work inside a
# cloud, as on a node.
#
# Environment of each rank: the caller's, plus
#   always set here:  RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT
#                     (MPI rank variables OMPI_COMM_WORLD_*, PMIX_RANK, PMI_* are removed, as
#                     Runtime::init() would prefer them over the torchrun-style ones)
#   defaults, which a value in the caller's environment overrides:
#                     SKYRING_CLOUD=cloud<i> SKYRING_NODE=cloud<i>-node
#                     UCX_TLS=tcp,self UCX_NET_DEVICES=wan0
#   --env NAME=VALUE: overrides all of the above.
# Every other SKYRING_* and UCX_* variable (SKYRING_ALLREDUCE, SKYRING_SHM,
# SKYRING_TIMEOUT_MS, ...) simply passes through from the caller.
#
# Output: the ranks' stdout and stderr as they are, then "rank R exit C" for each rank, then
# for each cloud "wan cloud<i> up_bytes=X down_bytes=Y", the bytes its two tbf qdiscs passed
# (`tc -s qdisc show`; headers, ACKs and the bootstrap's traffic included). Exit status 0
# only if every rank exited 0; 77 (skipped) when not root or namespaces cannot be made;
# 2 on a usage error.
#
# Everything created (namespaces, and with them the veths and the bridge) is removed on
# every exit path, a timeout and SIGINT/SIGTERM included. A leftover set with the same NAME
# from a crashed run is deleted first, unless processes still live in it.
set -uo pipefail

usage() {
  sed -n '/^#   benchmarks/,/^#     --env/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "wan_netns.sh: $*" >&2; exit 2; }
skip() { echo "wan_netns.sh: skipped: $*" >&2; exit 77; }

clouds=2
per_cloud=2
rate=1gbit
order=blocked
timeout_s=300
name=$(printf 'skr%x' $$)
extra_env=()
capture=
while (($# > 0)); do
  case $1 in
    --clouds) clouds=${2-}; shift 2 || usage ;;
    --ranks-per-cloud) per_cloud=${2-}; shift 2 || usage ;;
    --rate) rate=${2-}; shift 2 || usage ;;
    --order) order=${2-}; shift 2 || usage ;;
    --timeout) timeout_s=${2-}; shift 2 || usage ;;
    --name) name=${2-}; shift 2 || usage ;;
    --env) extra_env+=("${2-}"); shift 2 || usage ;;
    --capture) capture=${2-}; shift 2 || usage ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) die "unknown option '$1' (the program goes after --)" ;;
  esac
done
(($# > 0)) || usage
# in_range VALUE MIN MAX: VALUE is a decimal integer in [MIN, MAX].
in_range() { [[ $1 =~ ^[0-9]{1,9}$ ]] && ((10#$1 >= $2 && 10#$1 <= $3)); }
in_range "$clouds" 1 253 || die "--clouds: 1 to 253"
in_range "$per_cloud" 1 100000 || die "--ranks-per-cloud: a positive integer"
in_range "$timeout_s" 1 100000000 || die "--timeout: a positive number of seconds"
clouds=$((10#$clouds)) per_cloud=$((10#$per_cloud)) timeout_s=$((10#$timeout_s))
[[ $order == blocked || $order == interleaved ]] || die "--order: blocked or interleaved"
[[ $rate =~ ^[0-9]+([.][0-9]+)?[a-zA-Z]*$ ]] || die "--rate: a tc rate such as 1gbit or 500mbit, or 0"
[[ $name =~ ^[A-Za-z0-9_]+$ ]] || die "--name: letters, digits and _ only"
# Interface names (NAMEbr, NAMEc<i>) must fit IFNAMSIZ: 15 characters.
((${#name} + 1 + ${#clouds} <= 15 && ${#name} + 2 <= 15)) ||
  die "--name '$name' is too long for interface names of at most 15 characters"
for kv in "${extra_env[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv': expected NAME=VALUE"
done

((EUID == 0)) || skip "network namespaces need root (running as uid $EUID)"
for tool in ip tc timeout; do
  command -v "$tool" >/dev/null || skip "'$tool' is not installed"
done

world=$((clouds * per_cloud))
ctl_ns=$name-ctl
bridge=${name}br
cloud_ns() { echo "$name-cloud$1"; }
cloud_addr() { echo "10.99.0.$(($1 + 1))"; }
cloud_of() { # rank -> cloud
  if [[ $order == blocked ]]; then echo $(($1 / per_cloud)); else echo $(($1 % clouds)); fi
}
local_of() { # rank -> index in its cloud
  if [[ $order == blocked ]]; then echo $(($1 % per_cloud)); else echo $(($1 / clouds)); fi
}

pids=()
created=()
# Ends the ranks (our children, and whatever they left in our namespaces), then deletes
# the namespaces; the veths and the bridge live in them and go with them.
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  trap - EXIT INT TERM
  local pid ns live t
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for ((t = 0; t < 30; t++)); do
    live=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && live=1; done
    ((live)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for ns in "${created[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup EXIT
trap 'echo "wan_netns.sh: interrupted" >&2; exit 130' INT
trap 'echo "wan_netns.sh: terminated" >&2; exit 143' TERM

# A set left by a crashed run with this name goes first, unless something still runs in it
# (then it is someone's live run and not ours to break).
for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
  [[ $ns =~ ^$name-(ctl|cloud[0-9]+)$ ]] || continue
  [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] ||
    die "namespace $ns exists and has processes in it: is another run using --name $name?"
  ip netns del "$ns" || die "cannot delete the stale namespace $ns"
done

# run CMD...: runs a setup command; on failure says which and exits (the trap cleans up).
run() {
  local err
  err=$("$@" 2>&1) || { echo "wan_netns.sh: setup failed: $*: $err" >&2; exit 1; }
}

err=$(ip netns add "$ctl_ns" 2>&1) || skip "'ip netns add' does not work here: $err"
created+=("$ctl_ns")
run ip -n "$ctl_ns" link set lo up
run ip -n "$ctl_ns" link add "$bridge" type bridge
run ip -n "$ctl_ns" addr add 10.99.0.254/24 dev "$bridge"
run ip -n "$ctl_ns" link set "$bridge" up
for ((i = 0; i < clouds; i++)); do
  ns=$(cloud_ns "$i")
  run ip netns add "$ns"
  created+=("$ns")
  run ip -n "$ns" link set lo up
  run ip -n "$ctl_ns" link add "${name}c$i" type veth peer name wan0 netns "$ns"
  run ip -n "$ctl_ns" link set "${name}c$i" master "$bridge" up
  run ip -n "$ns" addr add "$(cloud_addr "$i")/24" dev wan0
  run ip -n "$ns" link set wan0 up
  if [[ $rate != 0 ]]; then
    for side in "$ns wan0" "$ctl_ns ${name}c$i"; do
      read -r side_ns dev <<<"$side"
      err=$(tc -n "$side_ns" qdisc replace dev "$dev" root tbf rate "$rate" burst 128kb \
        latency 50ms 2>&1) ||
        skip "tc tbf does not work here (tc qdisc replace dev $dev root tbf rate $rate): $err"
    done
  fi
done

# Rank 0's cloud runs the TCP store; its port is free for sure, being in a fresh namespace.
sniffer=
if [[ -n $capture ]]; then
  command -v python3 >/dev/null || skip "--capture needs python3"
  ip netns exec "$ctl_ns" python3 "$(dirname "$0")/sniff.py" "${name}c0" "$capture" \
    >"$capture.log" 2>&1 &
  sniffer=$!
  for ((t = 0; t < 50; t++)); do
    grep -q sniffing "$capture.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q sniffing "$capture.log" || die "the capture did not start: $(cat "$capture.log")"
fi

master_addr=$(cloud_addr "$(cloud_of 0)")
master_port=$((20000 + RANDOM % 20000))
deadline=$((SECONDS + timeout_s))
for ((r = 0; r < world; r++)); do
  i=$(cloud_of "$r")
  vars=(RANK="$r" WORLD_SIZE="$world" LOCAL_RANK="$(local_of "$r")" LOCAL_WORLD_SIZE="$per_cloud"
    MASTER_ADDR="$master_addr" MASTER_PORT="$master_port")
  # Defaults the caller's environment overrides.
  for kv in SKYRING_CLOUD="cloud$i" SKYRING_NODE="cloud$i-node" UCX_TLS=tcp,self \
    UCX_NET_DEVICES=wan0; do
    var=${kv%%=*}
    [[ -n ${!var+x} ]] || vars+=("$kv")
  done
  remaining=$((deadline - SECONDS))
  ((remaining >= 1)) || remaining=1
  timeout -k 5 "$remaining" ip netns exec "$(cloud_ns "$i")" \
    env -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE -u OMPI_COMM_WORLD_LOCAL_RANK \
    -u OMPI_COMM_WORLD_LOCAL_SIZE -u PMIX_RANK -u PMI_RANK -u PMI_SIZE \
    "${vars[@]}" "${extra_env[@]}" "$@" &
  pids+=($!)
done

status=0
codes=()
for ((r = 0; r < world; r++)); do
  wait "${pids[$r]}"
  codes+=($?)
done
if [[ -n $sniffer ]]; then
  kill -TERM "$sniffer" 2>/dev/null
  wait "$sniffer"
  echo "captured $(stat -c %s "$capture") bytes on cloud0's link into $capture"
fi
for ((r = 0; r < world; r++)); do
  echo "rank $r exit ${codes[$r]}"
  ((codes[r] == 0)) || status=1
done

# sent_bytes NS DEV: bytes DEV's root tbf passed, or (unshaped) the bytes DEV sent.
sent_bytes() {
  if [[ $rate != 0 ]]; then
    tc -n "$1" -s qdisc show dev "$2" | awk '/^qdisc tbf/ { tbf = 1 } tbf && /Sent/ { print $2; exit }'
  else
    ip netns exec "$1" cat "/sys/class/net/$2/statistics/tx_bytes"
  fi
}
for ((i = 0; i < clouds; i++)); do
  echo "wan cloud$i up_bytes=$(sent_bytes "$(cloud_ns "$i")" wan0)" \
    "down_bytes=$(sent_bytes "$ctl_ns" "${name}c$i")"
done
exit $status
