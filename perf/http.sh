#!/usr/bin/env bash
# ringmesh's HTTP engine side by side with its L4 path and nginx's HTTP reverse proxy (the L7
# peer), in one run, in interleaved rounds; then new connections per request and keep-alive
# through two mTLS sidecars, with and without the upstream pool and with HTTP/1.1 carried
# over HTTP/2 between them. Writes perf/HTTP.md. A benchmark, not a test: nothing here passes
# or fails on a number.
#
#   perf/http.sh                          # the full run (about 8 minutes on 2 cores)
#   ROUNDS=1 DURATION=2s perf/http.sh     # a quick look
#
# Knobs (environment): ROUNDS DURATION WARMUP CONNS RATE LOAD_CPUS PROXY_CPUS WORKERS MESH
# (0: skip the two-sidecar part) OUT REPORT.
#
# Part 1, one network namespace on loopback: the generator (mesh-bench) and the HTTP backend
# on LOAD_CPUS, the contender on PROXY_CPUS with WORKERS workers. Contenders:
#   direct       the backend itself
#   nginx-http   nginx `http` proxy_pass with an upstream keepalive pool (the L7 peer)
#   uring-http   uring-proxy with its defaults: the port is detected as HTTP/1.1 and every
#                request goes through the HTTP engine (routed, counted, pooled upstream)
#   uring-l4     uring-proxy with the port pinned `opaque`: bytes, as nginx `stream` would
# nginx is dialled directly; uring-proxy through NAT REDIRECT, its real path.
# Scenarios: keep-alive (closed loop, CONNS connections), fixed rate (RATE req/s, open loop,
# latency from the intended send time) and one request per connection (16 at a time).
#
# Part 2, two pods joined by a veth pair (bench/testbed.sh), mTLS sidecars in both with
# identities from `meshctl identity serve`: one HTTP/1.1 request per client connection, 16 at a
# time, and keep-alive (CONNS connections), through four sidecar pairs: l4 (the port pinned
# opaque: one mTLS handshake per client connection), http-nopool (the HTTP engine with
# `pool_max_idle: 0`: the same, plus HTTP), http-pooled (the defaults: client connections end
# at the sidecar, requests ride pooled mTLS connections) and http-h2 (`h2_between_proxies`:
# the requests ride as streams of one HTTP/2 mTLS connection per worker).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-32}
RATE=${RATE:-5000}
LOAD_CPUS=${LOAD_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-1}
WORKERS=${WORKERS:-1}
MESH=${MESH:-1}
OUT=${OUT:-$here/out-http}
REPORT=${REPORT:-$here/HTTP.md}
NS=rmhttp
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/release}

[[ $(id -u) -eq 0 ]] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }
"$here/deps.sh"
(cd "$root" && cargo build --release --workspace --bins -q)
rm -rf "$OUT" && mkdir -p "$OUT"
chmod 755 "$OUT"
results=$OUT/results.jsonl
: >"$results"

PIDS=()
in_ns() { ip netns exec "$NS" "$@"; }
spawn() { # LOG CPUS CMD...
  local log=$1 cpus=$2
  shift 2
  ip netns exec "$NS" taskset -c "$cpus" "$@" >"$log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  if [[ $MESH == 1 ]]; then testbed_down 2>/dev/null || true; fi
}
trap cleanup EXIT
# shellcheck source=../bench/testbed.sh
source "$root/bench/testbed.sh"

ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
in_ns ip link set lo up

spawn "$OUT/http.log" "$LOAD_CPUS" "$bin/mesh-bench" serve http --listen 127.0.0.1:9001 --response-size 64
cat >"$OUT/nginx.conf" <<CONF
# nginx HTTP reverse proxy: $WORKERS worker(s), upstream keep-alive, no access log.
daemon off;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 19000; multi_accept on; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:9001; keepalive 64; }
    server {
        listen 127.0.0.1:13001 reuseport backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
uring_conf() { # VIP PORTBASE PROTOCOL
  cat <<CONF
listeners: { outbound: "127.0.0.1:$(($2 + 1))", inbound: "127.0.0.1:$(($2 + 6))" }
admin: "127.0.0.1:$2"
bypass_mark: 0
limits: { max_connections_per_worker: 16384 }
protocols: { ports: { 9001: $3 } }
services:
  - { name: http, addrs: ["$1:9001"], endpoints: [{ addr: "127.0.0.1:9001" }] }
CONF
}
uring_conf 127.0.4.1 15200 detect >"$OUT/uring-http.yaml"
uring_conf 127.0.4.2 15210 opaque >"$OUT/uring-l4.yaml"
in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.4.1 -j REDIRECT --to-ports 15201
in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.4.2 -j REDIRECT --to-ports 15211

declare -A HOST=([direct]=127.0.0.1:9001 [nginx-http]=127.0.0.1:13001 [uring-http]=127.0.4.1:9001 [uring-l4]=127.0.4.2:9001)
declare -A CPID
spawn "$OUT/nginx.log" "$PROXY_CPUS" nginx -c "$OUT/nginx.conf" -p "$OUT"
CPID[nginx-http]=$LAST_PID
spawn "$OUT/uring-http.log" "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/uring-http.yaml" --workers "$WORKERS" --driver uring --no-pin
CPID[uring-http]=$LAST_PID
spawn "$OUT/uring-l4.log" "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/uring-l4.yaml" --workers "$WORKERS" --driver uring --no-pin
CPID[uring-l4]=$LAST_PID
for p in 15200 15210; do
  for _ in $(seq 100); do in_ns curl -fsS "http://127.0.0.1:$p/ready" >/dev/null 2>&1 && break; sleep 0.1; done
done
for _ in $(seq 100); do in_ns curl -fsS http://127.0.0.1:13001/ >/dev/null 2>&1 && break; sleep 0.1; done

pids_of() { # CONTENDER: the contender's PID and its children (nginx's workers)
  [[ -n ${CPID[$1]:-} ]] || return 0
  echo "${CPID[$1]}"
  ps -o pid= --ppid "${CPID[$1]}" 2>/dev/null | tr -d ' '
}

args_of() {
  case $1 in
    keepalive) echo "--workload http --connections $CONNS" ;;
    rate) echo "--workload http --connections $CONNS --rate $RATE" ;;
    conn) echo "--workload http-conn --connections 16" ;;
  esac
}

run_one() { # PART SCENARIO ROUND CONTENDER NETNS TARGET PIDS...
  local part=$1 scenario=$2 round=$3 contender=$4 netns=$5 target=$6
  shift 6
  local watch=() p json
  for p in "$@"; do watch+=(--watch-pid "$p"); done
  # shellcheck disable=SC2046
  json=$(ip netns exec "$netns" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" run $(args_of "$scenario") \
    --target "$target" --threads 1 --duration "$DURATION" --warmup "$WARMUP" --json - "${watch[@]}")
  printf '{"part":"%s","scenario":"%s","round":%d,"contender":"%s","result":%s}\n' \
    "$part" "$scenario" "$round" "$contender" "$json" >>"$results"
  printf '  %-10s %-14s %s\n' "$scenario" "$contender" \
    "$(sed -E 's/.*"throughput":([0-9.]+).*"p99":([0-9.]+).*/\1 req\/s  p99 \2 µs/' <<<"$json")"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS (loopback)"
  for scenario in keepalive rate conn; do
    for c in direct nginx-http uring-http uring-l4; do
      # shellcheck disable=SC2046
      run_one loopback "$scenario" "$round" "$c" "$NS" "${HOST[$c]}" $(pids_of "$c")
    done
  done
done

if [[ $MESH == 1 ]]; then
  echo "== two pods, mTLS sidecars"
  testbed_up
  tb_spawn "$POD_B" "$OUT/mesh-http.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve http --listen "[::]:9001" --response-size 64
  ID_A=spiffe://cluster.local/ns/perf/sa/pod-a
  ID_B=spiffe://cluster.local/ns/perf/sa/pod-b
  SOCK=$OUT/workload.sock
  tb_identity_server "$bin" "$SOCK" "$OUT/meshctl.log" --trust-domain cluster.local --ttl 1h \
    --map "1337=$ID_A" --map "0=$ID_B"
  declare -A PAIR_PIDS
  pair=0
  for variant in l4 http-nopool http-pooled http-h2; do
    base=$((15300 + pair * 10))
    case $variant in
      l4) extra="protocols: { ports: { 9001: opaque } }" ;;
      http-nopool) extra="http: { pool_max_idle: 0 }" ;;
      http-pooled) extra="" ;;
      http-h2) extra="http: { h2_between_proxies: true }" ;;
    esac
    cat >"$OUT/$variant-a.yaml" <<CONF
listeners: { outbound: "[::]:$((base + 1))", inbound: "[::]:$((base + 6))" }
admin: "127.0.0.1:$base"
bypass_mark: 0
limits: { max_connections_per_worker: 16384 }
identity: { source: workload_api, socket: "$SOCK" }
services:
  - { name: bench, addrs: ["10.96.0.9:9001"], endpoints: [{ addr: "$POD_B_IP4:9001", identity: "$ID_B" }] }
$extra
CONF
    cat >"$OUT/$variant-b.yaml" <<CONF
listeners: { outbound: "[::]:$((base + 1))", inbound: "[::]:$((base + 6))" }
admin: "127.0.0.1:$base"
limits: { max_connections_per_worker: 16384 }
identity: { source: workload_api, socket: "$SOCK" }
inbound: { mode: strict }
$extra
CONF
    chmod 644 "$OUT/$variant-a.yaml" "$OUT/$variant-b.yaml"
    tb_spawn "$POD_A" "$OUT/$variant-a.log" taskset -c "$PROXY_CPUS" setpriv --reuid=1337 --regid=1337 --clear-groups \
      "$bin/uring-proxy" --config "$OUT/$variant-a.yaml" --workers "$WORKERS" --no-pin
    a=${TB_PIDS[-1]}
    tb_spawn "$POD_B" "$OUT/$variant-b.log" taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/$variant-b.yaml" --workers "$WORKERS" --no-pin
    PAIR_PIDS[$variant]="$a ${TB_PIDS[-1]}"
    tb_wait_http "$POD_A" "http://127.0.0.1:$base/ready"
    tb_wait_http "$POD_B" "http://127.0.0.1:$base/ready"
    pair=$((pair + 1))
  done
  for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round of $ROUNDS (two mTLS sidecars)"
    pair=0
    for variant in direct l4 http-nopool http-pooled http-h2; do
      for pod in "$POD_A" "$POD_B"; do in_pod "$pod" "$bin/mesh-redirect" uninstall >/dev/null; done
      if [[ $variant != direct ]]; then
        base=$((15300 + pair * 10))
        pair=$((pair + 1))
        in_pod "$POD_A" "$bin/mesh-redirect" install --outbound-port $((base + 1)) --inbound-port $((base + 6)) --proxy-uid 1337 --no-mark >/dev/null
        in_pod "$POD_B" "$bin/mesh-redirect" install --outbound-port $((base + 1)) --inbound-port $((base + 6)) >/dev/null
      fi
      for scenario in conn keepalive; do
        # shellcheck disable=SC2086
        run_one mesh "$scenario" "$round" "$variant" "$POD_A" "$POD_B_IP4:9001" ${PAIR_PIDS[$variant]:-}
      done
    done
  done
fi

python3 - "$results" "$REPORT" <<'PY'
import json, statistics, sys, collections, subprocess, datetime
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["part"], r["scenario"], r["contender"])].append(r["result"])
def med(xs): return statistics.median(xs) if xs else float("nan")
def cpu_per_req(rs):
    v = [r["watched_cpu_seconds"] / r["requests"] * 1e6 for r in rs if r.get("watched_cpu_seconds") and r["requests"]]
    return med(v) if v else None
out = []
titles = {"keepalive": "keep-alive, closed loop", "rate": "fixed rate, open loop", "conn": "one request per connection"}
for part, heading, contenders in [
    ("loopback", "HTTP engine, L4 path and nginx http, one namespace", ["direct", "nginx-http", "uring-http", "uring-l4"]),
    ("mesh", "two pods, mTLS sidecars", ["direct", "l4", "http-nopool", "http-pooled", "http-h2"]),
]:
    scen = sorted({k[1] for k in by if k[0] == part}, key=list(titles).index)
    if not scen: continue
    out.append(f"## {heading}\n")
    for s in scen:
        base = med([r["throughput"] for r in by[(part, s, "direct")]])
        base_p99 = med([r["latency"]["p99"] for r in by[(part, s, "direct")]])
        out.append(f"### {titles[s]}\n")
        out.append("| contender | req/s (median) | ratio to direct | CPU µs/req | p99 µs | added p99 µs | errors |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in contenders:
            rs = by.get((part, s, c), [])
            if not rs: continue
            t = med([r["throughput"] for r in rs]); p99 = med([r["latency"]["p99"] for r in rs])
            cpu = cpu_per_req(rs); errs = sum(sum(r["errors"].values()) for r in rs)
            out.append(f"| {c} | {t:,.0f} | {t/base:.2f} | {'-' if cpu is None else f'{cpu:.1f}'} | {p99:,.0f} | {'-' if c == 'direct' else f'{p99-base_p99:,.0f}'} | {errs} |")
        out.append("")
head = [f"Produced by `perf/http.sh` on {datetime.date.today()} ({len({r['round'] for r in rows})} interleaved rounds; medians).", "",
        "CPU µs/req is the contender's CPU time over the measured window divided by its requests (both sidecars together in the mesh part). Ratios, not absolute numbers, are what carry over between runs on a shared machine.", ""]
open(sys.argv[2], "w").write("\n".join(head + out) + "\n")
print("\n".join(out))
PY
echo "wrote $REPORT"
