#!/usr/bin/env bash
# Debian's real Prometheus scrapes the /metrics endpoints of a 4-rank job (2 emulated
# clouds of 2 ranks, int8 on the cross-cloud hop), and its HTTP API must then hold every
# rank's bytes, latency histograms, queue depth, codec counts and egress dollars.
#
#   prometheus_scrape.sh METRICS_JOB
#
# Bounded: the job stops when the checks pass (a stop file) or after 60 s; each wait below
# has its own limit; prometheus and the job are killed on every path. Exit 77 (skipped)
# without /usr/bin/prometheus.
set -euo pipefail
job=${1:?usage: prometheus_scrape.sh METRICS_JOB}
prom=${PROMETHEUS:-/usr/bin/prometheus}
[[ -x $prom ]] || { echo "SKIP: no $prom (apt-get install prometheus)"; exit 77; }

tmp=$(mktemp -d)
prom_pid=
job_pid=
cleanup() {
  [[ -n $job_pid ]] && kill "$job_pid" 2>/dev/null || true
  [[ -n $prom_pid ]] && kill "$prom_pid" 2>/dev/null || true
  [[ -n $job_pid ]] && wait "$job_pid" 2>/dev/null || true
  [[ -n $prom_pid ]] && wait "$prom_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: four in a row for the ranks (SKYRING_METRICS_PORT plus the local rank), one for
# Prometheus, all free on loopback right now.
read -r base prom_port < <(python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    b = random.randrange(20000, 60000)
    if all(free(b + i) for i in range(5)):
        print(b, b + 4); break
PY
)
[[ -n ${base:-} ]] || { echo "FAIL: no free ports"; exit 1; }

cat >"$tmp/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: skyring
    static_configs:
      - targets: ['127.0.0.1:$base', '127.0.0.1:$((base + 1))', '127.0.0.1:$((base + 2))', '127.0.0.1:$((base + 3))']
YML
"$prom" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
api="http://127.0.0.1:$prom_port"
for _ in $(seq 100); do
  curl -fsS "$api/-/ready" >/dev/null 2>&1 && break
  kill -0 "$prom_pid" 2>/dev/null || { cat "$tmp/prometheus.log"; echo "FAIL: prometheus exited"; exit 1; }
  sleep 0.1
done
curl -fsS "$api/-/ready" >/dev/null || { cat "$tmp/prometheus.log"; echo "FAIL: prometheus not ready"; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export SKYRING_METRICS_PORT=$base SKYRING_COMPRESSION=int8 SKYRING_LOG_LEVEL=info
# Two clouds: ranks 0-1 and 2-3 (all on this node, so local ranks 0-3 take base..base+3).
timeout 90 mpirun -np 4 --oversubscribe \
  bash -c 'SKYRING_CLOUD=cloud$((OMPI_COMM_WORLD_RANK / 2)) exec "$0" "$@"' \
  "$job" "$tmp/stop" 60 >"$tmp/job.log" 2>&1 &
job_pid=$!

# The value of an instant query (its first sample), or empty.
query() {
  curl -fsS --max-time 2 "$api/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' \
      2>/dev/null || true
}
# Each check: a PromQL expression that must equal 4 (one per rank), or be present.
checks=(
  'count(up{job="skyring"} == 1)'
  'count(skyring_bytes_sent_total{link="cross_cloud"} > 0)'
  'count(skyring_messages_sent_total{link="cross_cloud"} > 0)'
  'count(skyring_egress_dollars_total > 0)'
  'count(sum by (rank) (skyring_collective_seconds_count{op="allreduce"}) > 0)'
  'count(sum by (rank) (skyring_phase_seconds_count{level="cross-cloud"}) > 0)'
  'count(skyring_engine_queue_depth)'
  'count(sum by (rank) (skyring_codec_input_bytes_total{codec=~"int8.*"}) > 0)'
  'count(sum by (rank) (skyring_fusion_fill_ratio_count) > 0)'
  'count(skyring_engine_stalls_total)'
  'count(skyring_rank_info{cloud="cloud1"})'
)
deadline=$((SECONDS + 45))
missing=()
while ((SECONDS < deadline)); do
  missing=()
  for q in "${checks[@]}"; do
    want=4
    [[ $q == *cloud1* ]] && want=2
    [[ $(query "$q") == "$want" ]] || missing+=("$q")
  done
  # Rates and quantiles need two scrapes: the queries docs/observability.md shows.
  p99=$(query 'histogram_quantile(0.99, sum by (le, level) (rate(skyring_phase_seconds_bucket{level="cross-cloud"}[10s])))')
  [[ -n $p99 && $p99 != NaN ]] || missing+=("p99 cross-cloud phase latency")
  bps=$(query 'sum(rate(skyring_bytes_sent_total{link="cross_cloud"}[10s]))')
  [[ -n $bps && $bps != 0 ]] || missing+=("cross-cloud bytes/s")
  ((${#missing[@]} == 0)) && break
  kill -0 "$job_pid" 2>/dev/null || break
  sleep 0.5
done
touch "$tmp/stop"
job_rc=0
wait "$job_pid" || job_rc=$?
job_pid=
if ((${#missing[@]})); then
  echo "--- job"; cat "$tmp/job.log"; echo "--- prometheus"; cat "$tmp/prometheus.log"
  printf 'FAIL: not in Prometheus: %s\n' "${missing[@]}"
  exit 1
fi
if ((job_rc != 0)); then
  cat "$tmp/job.log"; echo "FAIL: the job exited with $job_rc"; exit 1
fi
grep -h "metrics: serving" "$tmp/job.log" | head -4
grep -h "steps, metrics on port" "$tmp/job.log"
echo "p99 cross-cloud phase latency ${p99}s, cross-cloud ${bps} B/s"
echo "PASS: Prometheus scraped ${#checks[@]} series families from all 4 ranks"
