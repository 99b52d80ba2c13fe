#!/usr/bin/env bash
# Where a proxied request's CPU goes, in the fair layout of perf/compare.sh: user space or the
# kernel, per contender, and (with perf) which kernel and user functions take it. Every
# contender runs one worker per CPU, the generator and backend are pinned to CPU 0, and each
# is reached through the same iptables NAT REDIRECT; contenders take turns, ROUNDS times.
# uring-noring is the default with --no-owned-ring (the owned copy ring's A/B).
#
#   perf/cpu-split.sh                   # user/system µs per request (HTTP keep-alive)
#   PROFILE=1 perf/cpu-split.sh         # also `perf record` each contender's process, and
#                                       # print its top symbols (needs linux-perf)
# Env: BIN (release), ROUNDS (3), DURATION (5s), CONNS (32), OUT (perf/out-split).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/release}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
OUT=${OUT:-$here/out-split}
PROFILE=${PROFILE:-0}
workers=$(nproc)
all=0-$((workers - 1))
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
"$here/deps.sh" >/dev/null
rm -rf "$OUT" && mkdir -p "$OUT"
ns=rmsplit
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
spawn() { # LOG CPUS CMD...: $LAST is its PID (ip netns exec and taskset exec)
  local log=$1 cpus=$2
  shift 2
  ip netns exec "$ns" taskset -c "$cpus" "$@" >"$log" 2>&1 &
  LAST=$!
  pids+=("$LAST")
}
spawn "$OUT/http.log" 0 "$bin/mesh-bench" serve http --listen 127.0.0.1:9001 --response-size 64
cat >"$OUT/nginx.conf" <<CONF
daemon off;
worker_processes $workers;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 4096; multi_accept on; }
stream { tcp_nodelay on; server { listen 127.0.0.1:13001 reuseport; proxy_pass 127.0.0.1:9001; } }
CONF
cat >"$OUT/haproxy.cfg" <<CONF
global
    nbthread $workers
    maxconn 4000
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
frontend http
    bind 127.0.0.1:14001
    default_backend http
backend http
    server s 127.0.0.1:9001
CONF
cat >"$OUT/uring.yaml" <<CONF
listeners: { outbound: "127.0.0.1:15051", inbound: "127.0.0.1:15056" }
admin: "127.0.0.1:15050"
bypass_mark: 0
services:
  - { name: http, addrs: ["127.0.3.3:9001"], endpoints: [{ addr: "127.0.0.1:9001" }] }
CONF
nsx() { ip netns exec "$ns" "$@"; }
nsx iptables -t nat -A OUTPUT -p tcp -d 127.0.3.1 --dport 9001 -j REDIRECT --to-ports 13001
nsx iptables -t nat -A OUTPUT -p tcp -d 127.0.3.2 --dport 9001 -j REDIRECT --to-ports 14001
nsx iptables -t nat -A OUTPUT -p tcp -d 127.0.3.3 -j REDIRECT --to-ports 15051
nsx iptables -t nat -A OUTPUT -p tcp -d 127.0.3.4 -j REDIRECT --to-ports 15061
sed -e 's/1505/1506/g' -e 's/127.0.3.3/127.0.3.4/' "$OUT/uring.yaml" >"$OUT/uring-noring.yaml"
declare -A PID HOST=([nginx]=127.0.3.1 [haproxy]=127.0.3.2 [uring]=127.0.3.3 [uring-noring]=127.0.3.4)
spawn "$OUT/nginx.log" "$all" nginx -c "$OUT/nginx.conf" -p "$OUT"
PID[nginx]=$LAST
spawn "$OUT/haproxy.log" "$all" haproxy -db -f "$OUT/haproxy.cfg"
PID[haproxy]=$LAST
spawn "$OUT/uring.log" "$all" "$bin/uring-proxy" --config "$OUT/uring.yaml" --workers "$workers"
PID[uring]=$LAST
# The same without the owned copy ring (monoio's polls and recv/send): the first lever's A/B.
spawn "$OUT/uring-noring.log" "$all" "$bin/uring-proxy" --config "$OUT/uring-noring.yaml" --workers "$workers" --no-owned-ring
PID[uring-noring]=$LAST
sleep 1

# family PID: the process and its children (nginx's workers), one PID per line.
family() {
  echo "$1"
  ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '
}
# ticks PID: user and system clock ticks of the process and its children.
ticks() {
  local p u=0 s=0 a b
  for p in $(family "$1"); do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    u=$((u + a)) s=$((s + b))
  done
  echo "$u $s"
}
hz=$(getconf CLK_TCK)
printf '%-12s %6s %10s %10s %10s %10s\n' contender round req/s user-µs sys-µs total-µs
for round in $(seq "$ROUNDS"); do
  for c in uring uring-noring nginx haproxy; do
    read -r u0 s0 < <(ticks "${PID[$c]}")
    rec=()
    if [[ $PROFILE == 1 ]]; then
      perf record -q -g -o "$OUT/$c-$round.data" -p "$(family "${PID[$c]}" | paste -sd,)" >/dev/null 2>&1 &
      rec=($!)
    fi
    json=$(nsx taskset -c 0 "$bin/mesh-bench" run --workload http --connections "$CONNS" \
      --target "${HOST[$c]}:9001" --duration "$DURATION" --warmup 0s --json -)
    if ((${#rec[@]})); then kill -INT "${rec[0]}"; wait "${rec[0]}" || true; fi
    read -r u1 s1 < <(ticks "${PID[$c]}")
    requests=$(sed -E 's/.*"requests":([0-9]+).*/\1/' <<<"$json")
    rate=$(sed -E 's/.*"throughput":([0-9.]+).*/\1/' <<<"$json")
    awk -v c="$c" -v r="$round" -v q="$requests" -v rate="$rate" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" \
      'BEGIN { us = 1e6 / hz / q; printf "%-12s %6d %10.0f %10.2f %10.2f %10.2f\n", c, r, rate, u * us, s * us, (u + s) * us }'
  done
done | tee "$OUT/split.txt"
if [[ $PROFILE == 1 ]]; then
  for c in uring uring-noring nginx haproxy; do
    echo "== $c: top symbols (round 1, children included)"
    perf report -q -i "$OUT/$c-1.data" --no-children --sort dso,sym 2>/dev/null | grep -v '^$' | head -25
  done
fi
