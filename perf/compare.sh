#!/usr/bin/env bash
# ringmesh side by side with the direct path, nginx (stream) and haproxy (mode tcp), in one run,
# in interleaved rounds, on loopback inside a throwaway network namespace; then the full mesh
# path between two namespaced pods with and without sidecars. Writes perf/RESULTS.md and
# perf/latency.svg. Benchmarks are not tests: nothing here passes or fails on a number.
#
#   perf/compare.sh                       # the full run (about 15 minutes on 2 cores)
#   ROUNDS=1 DURATION=2s perf/compare.sh  # a quick look
#
# Knobs (environment): ROUNDS DURATION WARMUP CONNS RATE IDLE_CONNS (0: skip) WORKERS
# LOAD_CPUS PROXY_CPUS SCENARIOS (the loopback ones; empty for none) FAIR_SCENARIOS (the fair
# layout's; empty for none) FAIR_WORKERS (default: every CPU) LEVERS FAIR_ONLY MESH (1: also the two-pod path)
# OUT (raw results) REPORT PLOT (where the report and plot go) BASELINE (a directory with an
# earlier build's uring-proxy: it runs beside the others as uring-prev, with the default
# config, to show what a change cost).
#
# Two layouts, interleaved in every round:
#   loopback-*  the contender alone on PROXY_CPUS with WORKERS workers, the generator and
#               backends on LOAD_CPUS; nginx and haproxy dialled directly, uring-proxy through
#               NAT (its real path). Flattering to a proxy: it has a core to itself.
#   fair-*      every contender with FAIR_WORKERS workers on all the CPUs, the generator and
#               backends pinned to LOAD_CPUS (so they share a core with a proxy worker), and
#               every contender reached the same way: the client dials an address that an
#               iptables NAT REDIRECT sends to the contender's port (nginx and haproxy to
#               their listeners, uring-proxy to its outbound listener, which reads
#               SO_ORIGINAL_DST). uring-proxy three times: its default (workers pinned),
#               --no-pin, and --steer-by-cpu (pinned, each connection to the worker on the
#               CPU that received it). With LEVERS=1 also: ring-ceiling (bench's
#               owned-io_uring forwarder, the ceiling of that lever), uring-buffered (copy:
#               buffered), uring-sockmap (the same, with perf/sockmap's programs moving the
#               bytes between the client and the proxy; both run in a cgroup of their own)
#               and uring-noring (the default with --no-owned-ring: the owned ring's A/B).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-32}
RATE=${RATE:-5000}
IDLE_CONNS=${IDLE_CONNS:-8000}
WORKERS=${WORKERS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-1}
SCENARIOS=${SCENARIOS-"http-keepalive http-rate tcp-conn stream-1 tcp-rr-16k"}
FAIR_SCENARIOS=${FAIR_SCENARIOS-"fair-http-keepalive fair-http-rate fair-tcp-conn fair-stream-1"}
FAIR_WORKERS=${FAIR_WORKERS:-$(nproc)}
# The levers of ANALYSIS.md as fair contenders too (1) or not (0): ring-ceiling (an owned
# io_uring), uring-buffered and uring-sockmap (the app-to-proxy hop through a sockmap).
LEVERS=${LEVERS:-1}
# Only these fair contenders (space separated; empty: all of them).
FAIR_ONLY=${FAIR_ONLY:-}
ALL_CPUS=0-$(($(nproc) - 1))
MESH=${MESH:-1}
OUT=${OUT:-$here/out}
# Where the report goes (a quick look can write elsewhere and leave the recorded run alone).
REPORT=${REPORT:-$here/RESULTS.md}
PLOT=${PLOT:-$here/latency.svg}
NS=rmperf
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/release}
load_threads=$(($(tr ',' '\n' <<<"$LOAD_CPUS" | wc -l)))

[[ $(id -u) -eq 0 ]] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }
"$here/deps.sh"
(cd "$root" && cargo build --release --workspace --bins -q)
rm -rf "$OUT" && mkdir -p "$OUT"
chmod 755 "$OUT"
results=$OUT/results.jsonl
: >"$results"

PIDS=()
in_ns() { ip netns exec "$NS" "$@"; }
# spawn LOG CPUS CMD...: a background process in the namespace, pinned.
spawn() {
  local log=$1 cpus=$2
  shift 2
  ip netns exec "$NS" taskset -c "$cpus" "$@" >"$log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
}
SOCKMAP_CG=/sys/fs/cgroup/unified/rmperf-sockmap
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $LEVERS == 1 ]]; then "$here/sockmap/load.sh" down "$OUT" "$SOCKMAP_CG" || true; fi
  ip netns del "$NS" 2>/dev/null || true
  if [[ $MESH == 1 ]]; then testbed_down 2>/dev/null || true; fi
}
trap cleanup EXIT
# shellcheck source=../bench/testbed.sh
source "$root/bench/testbed.sh"

ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
in_ns ip link set lo up

echo "== backends (mesh-bench serve, CPU $LOAD_CPUS)"
spawn "$OUT/echo.log" "$LOAD_CPUS" "$bin/mesh-bench" serve tcp-echo --listen 127.0.0.1:9000
spawn "$OUT/http.log" "$LOAD_CPUS" "$bin/mesh-bench" serve http --listen 127.0.0.1:9001 --response-size 64
spawn "$OUT/sink.log" "$LOAD_CPUS" "$bin/mesh-bench" serve sink --listen 127.0.0.1:9002

echo "== contenders (CPU $PROXY_CPUS, $WORKERS worker(s) each)"
cat >"$OUT/nginx.conf" <<CONF
# nginx stream proxy: $WORKERS worker(s), epoll, reuseport, no logging on the data path.
daemon off;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 19000; multi_accept on; }
stream {
    tcp_nodelay on;
    proxy_connect_timeout 1s;
    proxy_timeout 1h;
    server { listen 127.0.0.1:11000 reuseport backlog=4096; proxy_pass 127.0.0.1:9000; }
    server { listen 127.0.0.1:11001 reuseport backlog=4096; proxy_pass 127.0.0.1:9001; }
    server { listen 127.0.0.1:11002 reuseport backlog=4096; proxy_pass 127.0.0.1:9002; }
}
CONF
cat >"$OUT/haproxy.cfg" <<CONF
# haproxy mode tcp: $WORKERS thread(s), kernel splicing when it pays (splice-auto), no logging.
global
    nbthread $WORKERS
    # Two fds per proxied connection plus spliced pipes must fit the 20,000-fd hard limit.
    maxconn 9000
    maxpipes 256
defaults
    mode tcp
    maxconn 9000
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    option splice-auto
frontend echo
    bind 127.0.0.1:12000
    default_backend echo
backend echo
    server s 127.0.0.1:9000
frontend http
    bind 127.0.0.1:12001
    default_backend http
backend http
    server s 127.0.0.1:9001
frontend sink
    bind 127.0.0.1:12002
    default_backend sink
backend sink
    server s 127.0.0.1:9002
CONF
# Three uring-proxy variants, each on its real path: the client dials a service address,
# NAT REDIRECT sends it to the proxy's outbound listener, the proxy reads SO_ORIGINAL_DST,
# finds the service, and dials its endpoint (the backend).
# The HTTP port is pinned opaque: the peers here are L4 proxies (nginx stream, haproxy mode
# tcp), so ringmesh is measured on its L4 path too; perf/http.sh measures its HTTP engine
# against nginx's http proxy.
uring_conf() { # VIP PORTBASE COPY
  cat <<CONF
listeners: { outbound: "127.0.0.1:$(($2 + 1))", inbound: "127.0.0.1:$(($2 + 6))" }
admin: "127.0.0.1:$2"
bypass_mark: 0
protocols: { ports: { 9001: opaque } }
copy: $3
timeouts: { connect: 5s }
limits: { max_connections_per_worker: 16384 }
services:
  - { name: echo, addrs: ["$1:9000"], endpoints: [{ addr: "127.0.0.1:9000" }] }
  - { name: http, addrs: ["$1:9001"], endpoints: [{ addr: "127.0.0.1:9001" }] }
  - { name: sink, addrs: ["$1:9002"], endpoints: [{ addr: "127.0.0.1:9002" }] }
CONF
}
uring_conf 127.0.2.1 15000 auto >"$OUT/uring.yaml"
uring_conf 127.0.2.2 15010 splice >"$OUT/uring-splice.yaml"
uring_conf 127.0.2.3 15020 buffered >"$OUT/uring-buffered.yaml"
uring_conf 127.0.2.4 15030 auto >"$OUT/uring-epoll.yaml"
uring_conf 127.0.2.5 15040 auto >"$OUT/uring-prev.yaml"
for i in 1 2 3 4 5; do
  in_ns iptables -t nat -A OUTPUT -p tcp -d "127.0.2.$i" -j REDIRECT --to-ports "150$((i - 1))1"
done
# The fair layout's contenders: FAIR_WORKERS workers each, all CPUs, all behind the same NAT.
sed -e "s/^worker_processes .*/worker_processes $FAIR_WORKERS;/" -e "s/:1100\([0-9]\) /:1300\1 /" \
  -e "s|pid .*|pid $OUT/nginx-fair.pid;|" -e "s|nginx-error.log|nginx-fair-error.log|" \
  "$OUT/nginx.conf" >"$OUT/nginx-fair.conf"
sed -e "s/^    nbthread .*/    nbthread $FAIR_WORKERS/" -e "s/:1200\([0-9]\)$/:1400\1/" \
  "$OUT/haproxy.cfg" >"$OUT/haproxy-fair.cfg"
uring_conf 127.0.3.3 15050 auto >"$OUT/uring-fair.yaml"
uring_conf 127.0.3.4 15060 auto >"$OUT/uring-fair-unpinned.yaml"
uring_conf 127.0.3.5 15070 auto >"$OUT/uring-fair-steered.yaml"
uring_conf 127.0.3.7 15090 buffered >"$OUT/uring-fair-buffered.yaml"
uring_conf 127.0.3.8 15100 buffered >"$OUT/uring-fair-sockmap.yaml"
uring_conf 127.0.3.9 15110 auto >"$OUT/uring-fair-noring.yaml"
for port in 9000 9001 9002; do
  in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.1 --dport "$port" -j REDIRECT --to-ports "$((port + 4000))"
  in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.2 --dport "$port" -j REDIRECT --to-ports "$((port + 5000))"
done
in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.3 -j REDIRECT --to-ports 15051
in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.4 -j REDIRECT --to-ports 15061
in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.5 -j REDIRECT --to-ports 15071
if [[ $LEVERS == 1 ]]; then
  in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.6 -j REDIRECT --to-ports 15081
  in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.7 -j REDIRECT --to-ports 15091
  in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.8 -j REDIRECT --to-ports 15101
  in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.3.9 -j REDIRECT --to-ports 15111
  "$here/sockmap/load.sh" up "$OUT" "$SOCKMAP_CG" 15101 127.0.3.8
fi
grep -q ':1300[0-2] ' "$OUT/nginx-fair.conf" && grep -q ':1400[0-2]$' "$OUT/haproxy-fair.cfg" ||
  { echo "the fair nginx/haproxy configs were not rewritten" >&2; exit 1; }
echo "--- nginx.conf"; cat "$OUT/nginx.conf"
echo "--- haproxy.cfg"; cat "$OUT/haproxy.cfg"
echo "--- uring.yaml"; cat "$OUT/uring.yaml"

declare -A TARGET_HOST PORT_BASE CPIDS
spawn "$OUT/nginx.log" "$PROXY_CPUS" nginx -c "$OUT/nginx.conf" -p "$OUT"
CPIDS[nginx]=$LAST_PID
spawn "$OUT/haproxy.log" "$PROXY_CPUS" haproxy -db -f "$OUT/haproxy.cfg"
CPIDS[haproxy]=$LAST_PID
spawn "$OUT/uring.log" "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/uring.yaml" --workers "$WORKERS" --driver uring --no-pin
CPIDS[uring]=$LAST_PID
spawn "$OUT/uring-splice.log" "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/uring-splice.yaml" --workers "$WORKERS" --driver uring --no-pin
CPIDS[uring-splice]=$LAST_PID
spawn "$OUT/uring-buffered.log" "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/uring-buffered.yaml" --workers "$WORKERS" --driver uring --no-pin
CPIDS[uring-buffered]=$LAST_PID
spawn "$OUT/uring-epoll.log" "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/uring-epoll.yaml" --workers "$WORKERS" --driver epoll --no-pin
CPIDS[uring-epoll]=$LAST_PID
spawn "$OUT/nginx-fair.log" "$ALL_CPUS" nginx -c "$OUT/nginx-fair.conf" -p "$OUT"
CPIDS[fair-nginx]=$LAST_PID
spawn "$OUT/haproxy-fair.log" "$ALL_CPUS" haproxy -db -f "$OUT/haproxy-fair.cfg"
CPIDS[fair-haproxy]=$LAST_PID
# The default: one worker per CPU, each pinned to its own.
spawn "$OUT/uring-fair.log" "$ALL_CPUS" "$bin/uring-proxy" --config "$OUT/uring-fair.yaml" --workers "$FAIR_WORKERS"
CPIDS[fair-uring]=$LAST_PID
spawn "$OUT/uring-fair-unpinned.log" "$ALL_CPUS" "$bin/uring-proxy" --config "$OUT/uring-fair-unpinned.yaml" --workers "$FAIR_WORKERS" --no-pin
CPIDS[fair-uring-unpinned]=$LAST_PID
spawn "$OUT/uring-fair-steered.log" "$ALL_CPUS" "$bin/uring-proxy" --config "$OUT/uring-fair-steered.yaml" --workers "$FAIR_WORKERS" --steer-by-cpu
CPIDS[fair-uring-steered]=$LAST_PID
# In the fair scenarios, every contender but direct is dialled at its NAT address.
FAIR_CONTENDERS=(direct uring uring-unpinned uring-steered nginx haproxy)
declare -A FAIR_HOST=([direct]=127.0.0.1 [nginx]=127.0.3.1 [haproxy]=127.0.3.2 [uring]=127.0.3.3 [uring-unpinned]=127.0.3.4 [uring-steered]=127.0.3.5 [ring-ceiling]=127.0.3.6 [uring-buffered]=127.0.3.7 [uring-sockmap]=127.0.3.8 [uring-noring]=127.0.3.9)
# in_cgroup CG CMD...: CMD in cgroup CG (joined before `ip netns exec`, which hides
# /sys/fs/cgroup behind a fresh sysfs; children inherit it).
in_cgroup() {
  local cg=$1
  shift
  # exec: a background `in_cgroup CMD &` is then CMD's own PID, which cleanup kills.
  exec sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"
}
if [[ $LEVERS == 1 ]]; then
  ip netns exec "$NS" taskset -c "$ALL_CPUS" "$bin/ring-ceiling" --listen 127.0.0.1:15081 --workers "$FAIR_WORKERS" >"$OUT/ring-ceiling.log" 2>&1 &
  PIDS+=($!)
  CPIDS[fair-ring-ceiling]=$!
  spawn "$OUT/uring-fair-buffered.log" "$ALL_CPUS" "$bin/uring-proxy" --config "$OUT/uring-fair-buffered.yaml" --workers "$FAIR_WORKERS"
  CPIDS[fair-uring-buffered]=$LAST_PID
  in_cgroup "$SOCKMAP_CG" ip netns exec "$NS" taskset -c "$ALL_CPUS" "$bin/uring-proxy" --config "$OUT/uring-fair-sockmap.yaml" --workers "$FAIR_WORKERS" >"$OUT/uring-fair-sockmap.log" 2>&1 &
  PIDS+=($!)
  CPIDS[fair-uring-sockmap]=$!
  spawn "$OUT/uring-fair-noring.log" "$ALL_CPUS" "$bin/uring-proxy" --config "$OUT/uring-fair-noring.yaml" --workers "$FAIR_WORKERS" --no-owned-ring
  CPIDS[fair-uring-noring]=$LAST_PID
  FAIR_CONTENDERS+=(ring-ceiling uring-buffered uring-sockmap uring-noring)
fi
if [[ -n $FAIR_ONLY ]]; then
  picked=()
  for c in "${FAIR_CONTENDERS[@]}"; do
    [[ " $FAIR_ONLY " == *" $c "* ]] && picked+=("$c")
  done
  FAIR_CONTENDERS=("${picked[@]}")
fi
TARGET_HOST=([direct]=127.0.0.1 [nginx]=127.0.0.1 [haproxy]=127.0.0.1 [uring]=127.0.2.1 [uring-splice]=127.0.2.2 [uring-buffered]=127.0.2.3 [uring-epoll]=127.0.2.4 [uring-prev]=127.0.2.5)
PORT_BASE=([direct]=9000 [nginx]=11000 [haproxy]=12000 [uring]=9000 [uring-splice]=9000 [uring-buffered]=9000 [uring-epoll]=9000 [uring-prev]=9000)
CONTENDERS=(direct uring uring-splice uring-buffered uring-epoll nginx haproxy)
if [[ -n ${BASELINE:-} ]]; then
  spawn "$OUT/uring-prev.log" "$PROXY_CPUS" "$BASELINE/uring-proxy" --config "$OUT/uring-prev.yaml" --workers "$WORKERS" --driver uring --no-pin
  CPIDS[uring-prev]=$LAST_PID
  CONTENDERS+=(uring-prev)
fi
sleep 1

# The PIDs of a contender: the process and its children (nginx's workers).
pids_of() {
  local c=$1 p
  [[ $c == direct ]] && return 0
  p=${CPIDS[$c]}
  # `ip netns exec` and `taskset` exec their command, so the spawned PID is the contender.
  echo "$p"
  ps -o pid= --ppid "$p" 2>/dev/null | tr -d ' '
}
rss_of() {
  local sum=0 p kb
  for p in $(pids_of "$1"); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${kb:-0}))
  done
  echo "$sum"
}

# scenario_args SCENARIO: the mesh-bench arguments and the backend port offset.
scenario_args() {
  case $1 in
    *http-keepalive) echo "1 --workload http --connections $CONNS" ;;
    *http-rate) echo "1 --workload http --connections $CONNS --rate $RATE" ;;
    *tcp-conn) echo "0 --workload conn --connections 16 --request-size 64 --response-size 64" ;;
    *stream-1) echo "2 --workload stream --connections 1" ;;
    *tcp-rr-16k) echo "0 --workload tcp --connections 8 --request-size 16384 --response-size 16384" ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}

# run_one SCENARIO ROUND CONTENDER HOST PORTBASE [PIDS...]
run_one() {
  local scenario=$1 round=$2 contender=$3 host=$4 base=$5
  shift 5
  local args offset watch=() p json
  read -r offset args <<<"$(scenario_args "$scenario")"
  for p in "$@"; do watch+=(--watch-pid "$p"); done
  local pre=()
  # The sockmap contender's client must be in its cgroup for the sock_ops program to see it.
  [[ $contender == uring-sockmap ]] && pre=(in_cgroup "$SOCKMAP_CG")
  # shellcheck disable=SC2086
  json=$("${pre[@]}" ip netns exec "$RUN_NS" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" run $args \
    --target "$host:$((base + offset))" --threads "$load_threads" \
    --duration "$DURATION" --warmup "$WARMUP" --json - "${watch[@]}")
  printf '{"kind":"run","scenario":"%s","round":%d,"contender":"%s","result":%s}\n' \
    "$scenario" "$round" "$contender" "$json" >>"$results"
  printf '  %-16s %-15s %s\n' "$scenario" "$contender" \
    "$(sed -E 's/.*"throughput":([0-9.]+).*"bits_per_second":([0-9.e+]+).*"p99":([0-9.]+).*/\1 req|conn\/s  \2 bit\/s  p99 \3 µs/' <<<"$json")"
}

echo "== idle memory"
declare -A IDLE_RSS
for c in "${CONTENDERS[@]}"; do IDLE_RSS[$c]=$(rss_of "$c"); done

RUN_NS=$NS
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS (loopback)"
  for scenario in $SCENARIOS; do
    for c in "${CONTENDERS[@]}"; do
      # shellcheck disable=SC2046
      run_one "$scenario" "$round" "$c" "${TARGET_HOST[$c]}" "${PORT_BASE[$c]}" $(pids_of "$c")
    done
  done
  [[ -n $FAIR_SCENARIOS ]] && echo "== round $round of $ROUNDS (fair layout)"
  for scenario in $FAIR_SCENARIOS; do
    for c in "${FAIR_CONTENDERS[@]}"; do
      pc=fair-$c
      [[ $c == direct ]] && pc=direct
      # shellcheck disable=SC2046
      run_one "$scenario" "$round" "$c" "${FAIR_HOST[$c]}" 9000 $(pids_of "$pc")
    done
  done
done

((IDLE_CONNS > 0)) && echo "== $IDLE_CONNS idle connections through each contender"
for c in "${CONTENDERS[@]}"; do
  ((IDLE_CONNS > 0)) || break
  [[ $c == direct ]] && continue
  watch=()
  for p in $(pids_of "$c"); do watch+=(--watch-pid "$p"); done
  json=$(in_ns taskset -c "$LOAD_CPUS" "$bin/mesh-bench" run --workload hold \
    --target "${TARGET_HOST[$c]}:${PORT_BASE[$c]}" --connections "$IDLE_CONNS" --threads 1 \
    --request-size 1 --response-size 1 --duration 3s --warmup 1s --timeout 20s --json - "${watch[@]}")
  peak=$(sed -E 's/.*"watched_rss_peak_kb":([0-9]+).*/\1/' <<<"$json")
  errors=$(sed -E 's/.*"errors":\{([^}]*)\}.*/\1/' <<<"$json")
  printf '{"kind":"memory","contender":"%s","rss_idle_kb":%d,"rss_conns_kb":%d,"conns":%d}\n' \
    "$c" "${IDLE_RSS[$c]}" "$peak" "$IDLE_CONNS" >>"$results"
  printf '  %-15s idle %6d KiB   with %d connections %7d KiB   errors {%s}\n' "$c" "${IDLE_RSS[$c]}" "$IDLE_CONNS" "$peak" "$errors"
  sleep 2
done

if [[ $MESH == 1 ]]; then
  echo "== the mesh path: pod-a -> veth -> pod-b, with and without sidecars"
  testbed_up
  tb_spawn "$POD_B" "$OUT/mesh-echo.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve tcp-echo --listen "[::]:9000"
  tb_spawn "$POD_B" "$OUT/mesh-http.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve http --listen "[::]:9001" --response-size 64
  tb_spawn "$POD_B" "$OUT/mesh-sink.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve sink --listen "[::]:9002"
  printf 'limits: { max_connections_per_worker: 16384 }\n' >"$OUT/sidecar.yaml"
  tb_spawn "$POD_A" "$OUT/sidecar-a.log" taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/sidecar.yaml" --workers "$WORKERS" --no-pin
  side_a=${TB_PIDS[-1]}
  tb_spawn "$POD_B" "$OUT/sidecar-b.log" taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/sidecar.yaml" --workers "$WORKERS" --no-pin
  side_b=${TB_PIDS[-1]}
  tb_wait_http "$POD_A" http://127.0.0.1:15000/ready
  tb_wait_http "$POD_B" http://127.0.0.1:15000/ready

  # A second pair of sidecars with mTLS, on other ports, with identities from the development
  # Workload API server: pod-a's runs as uid 1337 (bypassed by uid), pod-b's as root.
  ID_A=spiffe://cluster.local/ns/perf/sa/pod-a
  ID_B=spiffe://cluster.local/ns/perf/sa/pod-b
  SOCK=$OUT/workload.sock
  tb_identity_server "$bin" "$SOCK" "$OUT/meshctl.log" --trust-domain cluster.local --ttl 1h \
    --map "1337=$ID_A" --map "0=$ID_B"
  cat >"$OUT/mtls-a.yaml" <<CONF
listeners: { outbound: "[::]:15011", inbound: "[::]:15016" }
admin: "127.0.0.1:15010"
bypass_mark: 0
limits: { max_connections_per_worker: 16384 }
identity: { source: workload_api, socket: "$SOCK" }
services:
  - name: bench
    addrs: ["10.96.0.9:9000"]
    endpoints:
      - { addr: "$POD_B_IP4:9000", identity: "$ID_B" }
      - { addr: "$POD_B_IP4:9001", identity: "$ID_B" }
      - { addr: "$POD_B_IP4:9002", identity: "$ID_B" }
CONF
  cat >"$OUT/mtls-b.yaml" <<CONF
listeners: { outbound: "[::]:15011", inbound: "[::]:15016" }
admin: "127.0.0.1:15010"
limits: { max_connections_per_worker: 16384 }
identity: { source: workload_api, socket: "$SOCK" }
inbound: { mode: strict }
CONF
  chmod 644 "$OUT/mtls-a.yaml" "$OUT/mtls-b.yaml"
  tb_spawn "$POD_A" "$OUT/mtls-a.log" taskset -c "$PROXY_CPUS" setpriv --reuid=1337 --regid=1337 --clear-groups \
    "$bin/uring-proxy" --config "$OUT/mtls-a.yaml" --workers "$WORKERS" --no-pin
  mtls_a=${TB_PIDS[-1]}
  tb_spawn "$POD_B" "$OUT/mtls-b.log" taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$OUT/mtls-b.yaml" --workers "$WORKERS" --no-pin
  mtls_b=${TB_PIDS[-1]}
  tb_wait_http "$POD_A" http://127.0.0.1:15010/ready
  tb_wait_http "$POD_B" http://127.0.0.1:15010/ready

  RUN_NS=$POD_A
  for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round of $ROUNDS (mesh path)"
    for c in direct uring uring-mtls; do
      for pod in "$POD_A" "$POD_B"; do
        in_pod "$pod" "$bin/mesh-redirect" uninstall >/dev/null
      done
      case $c in
        uring)
          in_pod "$POD_A" "$bin/mesh-redirect" install >/dev/null
          in_pod "$POD_B" "$bin/mesh-redirect" install >/dev/null
          ;;
        uring-mtls)
          in_pod "$POD_A" "$bin/mesh-redirect" install --outbound-port 15011 --inbound-port 15016 --proxy-uid 1337 --no-mark >/dev/null
          in_pod "$POD_B" "$bin/mesh-redirect" install --outbound-port 15011 --inbound-port 15016 >/dev/null
          ;;
      esac
      for scenario in http-keepalive http-rate tcp-conn stream-1; do
        case $c in
          direct) run_one "mesh-$scenario" "$round" "$c" "$POD_B_IP4" 9000 ;;
          uring) run_one "mesh-$scenario" "$round" "$c" "$POD_B_IP4" 9000 "$side_a" "$side_b" ;;
          *) run_one "mesh-$scenario" "$round" "$c" "$POD_B_IP4" 9000 "$mtls_a" "$mtls_b" ;;
        esac
      done
    done
  done
fi

{
  echo "Produced by \`perf/compare.sh\` (ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS RATE=$RATE IDLE_CONNS=$IDLE_CONNS WORKERS=$WORKERS FAIR_WORKERS=$FAIR_WORKERS LOAD_CPUS=$LOAD_CPUS PROXY_CPUS=$PROXY_CPUS MESH=$MESH) on $(date -u +%Y-%m-%d)."
  echo
  echo "What these numbers mean, the profiles behind them and what changed because of them: [ANALYSIS.md](ANALYSIS.md)."
  echo
  echo "## Machine and versions"
  echo
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p') — $(nproc) CPUs; $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
  echo "- ringmesh $("$bin/uring-proxy" --version | awk '{print $2}') ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)), $(rustc --version)"
  echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //') (stream), $(haproxy -v | head -1 | awk '{print "haproxy", $3}') (mode tcp)"
  echo
  echo "## How the cores are shared"
  echo
  echo "Everything runs on loopback in one network namespace. The load generator (\`mesh-bench\`, $load_threads thread(s)) and the backends share CPU(s) $LOAD_CPUS; the contender under test runs on CPU(s) $PROXY_CPUS with $WORKERS worker(s) (nginx: worker_processes, haproxy: nbthread, uring-proxy: --workers). All contenders are running all the time but only the one under test has traffic. With one core for the generator and backend, **direct** is bounded by that core, while a proxy adds a second core of its own: a ratio to direct above 1 is possible and says the generator core, not the proxy, is the limit. Compare proxies with each other first."
  echo
  echo "**The fair layout** (the **fair-*** scenarios, interleaved with the others in every round): every contender runs $FAIR_WORKERS worker(s) on all $(nproc) CPUs (nginx: worker_processes, haproxy: nbthread), the generator and the backends stay pinned to CPU(s) $LOAD_CPUS and so share a core with one proxy worker, and every contender is reached the same way: the client dials an address that an iptables NAT REDIRECT sends to the contender's port (127.0.3.1 to nginx, 127.0.3.2 to haproxy, 127.0.3.3 to 127.0.3.5 to uring-proxy's outbound listeners). **uring** is uring-proxy's default (one worker per CPU, each pinned), **uring-unpinned** the same with --no-pin, **uring-steered** the default with --steer-by-cpu (each connection to the worker on the CPU its SYN arrived on). With LEVERS=1 (127.0.3.6 to 127.0.3.9): **uring-noring** is the default with --no-owned-ring (the plaintext copy through monoio's polls and \`recv\`/\`send\` calls instead of the worker's own io_uring: the first lever's A/B); **ring-ceiling** is bench's ring-ceiling, the smallest forwarder that owns its io_uring (multishot accept and recv into provided buffers; no routing, policy, metrics or timeouts), the ceiling of that lever; **uring-buffered** is the default with \`copy: buffered\`; **uring-sockmap** is uring-buffered with perf/sockmap/sockmap.c moving the bytes between the client's socket and the proxy's accepted socket (sock_ops + sk_msg in a cgroup that holds only that proxy and, while it is loaded, the generator).$( [[ $LEVERS == 1 ]] && echo " The sockmap programs redirected and passed these sends over the whole run: $("$here/sockmap/load.sh" stats "$OUT").") This is the layout a sidecar meets; the loopback one gives the proxy a core of its own."
  echo
  echo "uring-proxy runs on its real path: the client dials a service address (127.0.2.x), NAT REDIRECT sends it to the outbound listener, the proxy reads SO_ORIGINAL_DST, looks the service up and dials its endpoint. nginx and haproxy are plain TCP reverse proxies (no NAT). **uring** is the default (io_uring, \`copy: auto\`: small messages on the worker's own io_uring, multishot receives into provided buffers, and a connection handed to the splice copy once a direction moves bulk), **uring-splice** always splices, **uring-buffered** always copies through a 64 KiB buffer, **uring-epoll** is the epoll driver with the default copy."
  echo
  echo "Scenarios: **http-keepalive** HTTP/1.1 GET, 64 B body, $CONNS keep-alive connections, closed loop (CPU/req is the contender's CPU time over the window ÷ requests); **http-rate** the same at a fixed $RATE req/s, open loop, latency from the intended send time; **tcp-conn** one 64 B request per connection, 16 at a time; **stream-1** one connection streaming into a sink; **tcp-rr-16k** 16 KiB request and response over 8 connections. **mesh-*** run pod-a -> veth -> pod-b (bench/testbed.sh) with no rules (direct) and with \`mesh-redirect\` plus a sidecar in each pod: **uring** with the defaults (plaintext between the sidecars, spliced), **uring-mtls** with SPIFFE identities from \`meshctl identity serve\` and mutual TLS 1.3 between the sidecars (strict inbound; every connection a full handshake, ECDSA P-256)."
} >"$OUT/meta.md"

"$bin/mesh-bench" report --results "$results" --meta "$OUT/meta.md" --out "$REPORT" --plot "$PLOT" --ours uring >/dev/null
echo "== wrote $REPORT and $PLOT (raw: $results)"
