#!/usr/bin/env bash
# UDP through the mesh, measured: 64-byte request/response datagrams between two namespaced
# pods, direct (no interception) and through both sidecars (eBPF interception, the relay on
# io_uring, on io_uring taking one datagram per receive call instead of a recvmmsg batch,
# and on epoll), in interleaved rounds of one run; then new flows per second (one
# fresh socket per request). Writes perf/UDP.md with ratios to direct. Benchmarks are not
# tests: nothing here passes or fails on a number.
#
#   perf/udp.sh                        # about 3 minutes
#   ROUNDS=1 DURATION=2s perf/udp.sh   # a quick look
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-16}
RATE=${RATE:-5000}
FLOWS=${FLOWS:-2000}
LOAD_CPUS=${LOAD_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-1}
REPORT=${REPORT:-$here/UDP.md}
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/release}
[[ $(id -u) -eq 0 ]] || { echo "run as root (network namespaces, eBPF)" >&2; exit 1; }
"$root/.ci/deps.sh"
(cd "$root" && cargo build --release -q -p uring-proxy -p ringmesh-redirect -p ringmesh-bench)

TB_PREFIX=rmudp
# shellcheck source=../bench/testbed.sh
source "$root/bench/testbed.sh"
work=$(mktemp -d /tmp/ringmesh-udp-perf.XXXXXX)
chmod 755 "$work"
trap 'testbed_down; rm -rf "$work"' EXIT
testbed_up

# The app: mesh-bench's UDP echo on pod-b (CPU 0, beside the load generator).
tb_spawn "$POD_B" "$work/echo.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve udp-echo \
  --listen "0.0.0.0:7000" --threads 1 --response-size 64
# Three pairs of sidecars on CPU 1, one worker each: io_uring on the default ports, epoll on
# 15021/15026, io_uring with udp.recv_batch 1 on 15041/15046. Pod-a's run as uid 1337
# (bypassed by uid), pod-b's as root (by mark).
offset() { case $1 in uring) echo 0 ;; epoll) echo 20 ;; uring-b1) echo 40 ;; esac; }
for c in uring epoll uring-b1; do
  p=$(offset "$c")
  d=${c%-b1}
  batch=16
  [[ $c == uring-b1 ]] && batch=1
  cat >"$work/$c.yaml" <<CONF
listeners: { outbound: "[::]:$((15001 + p))", inbound: "[::]:$((15006 + p))" }
admin: "127.0.0.1:$((15000 + p))"
udp: { recv_batch: $batch }
CONF
  sed 's/^admin.*/&\nbypass_mark: 0/' "$work/$c.yaml" >"$work/$c-a.yaml"
  chmod 644 "$work"/*.yaml
  tb_spawn "$POD_A" "$work/$c-a.log" taskset -c "$PROXY_CPUS" setpriv --reuid=1337 --regid=1337 --clear-groups \
    "$bin/uring-proxy" --config "$work/$c-a.yaml" --workers 1 --no-pin --driver "$d"
  tb_spawn "$POD_B" "$work/$c-b.log" taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$work/$c.yaml" \
    --workers 1 --no-pin --driver "$d"
  tb_wait_http "$POD_A" "http://127.0.0.1:$((15000 + p))/ready"
  tb_wait_http "$POD_B" "http://127.0.0.1:$((15000 + p))/ready"
done

intercept() {
  local c=$1 p
  for pod in "$POD_A" "$POD_B"; do ns_pod "$pod" "$bin/mesh-redirect" uninstall >/dev/null; done
  TB_UDP_PODS=()
  [[ $c == direct ]] && return 0
  p=$(offset "$c")
  # The testbed's ephemeral range starts at 1024; intercept the echo's port 7000 inbound too.
  tb_udp_install "$POD_A" "$bin/mesh-redirect" --outbound-port $((15001 + p)) --inbound-port $((15006 + p)) \
    --udp-inbound-max 9999 --proxy-uid 1337 --no-mark >/dev/null
  tb_udp_install "$POD_B" "$bin/mesh-redirect" --outbound-port $((15001 + p)) --inbound-port $((15006 + p)) \
    --udp-inbound-max 9999 >/dev/null
}

# flows N: N fresh sockets, one 64-byte request and its answer each; prints flows/s.
flows() {
  in_pod "$POD_A" taskset -c "$LOAD_CPUS" python3 - "$POD_B_IP4" "$1" <<'PY'
import socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
payload = b"f" * 64
start = time.perf_counter()
lost = 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.sendto(payload, (host, 7000))
    try:
        s.recvfrom(2048)
    except socket.timeout:
        lost += 1
    s.close()
took = time.perf_counter() - start
print(f"{n / took:.0f} {lost}")
PY
}

results=$work/results.txt
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  for c in direct uring uring-b1 epoll; do
    intercept "$c"
    for mode in max rate; do
      args=(--connections "$CONNS")
      [[ $mode == rate ]] && args+=(--rate "$RATE")
      json=$(in_pod "$POD_A" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" run --workload udp \
        --target "$POD_B_IP4:7000" --request-size 64 --response-size 64 --threads 1 \
        --duration "$DURATION" --warmup "$WARMUP" --timeout 1s --json - "${args[@]}")
      tput=$(sed -E 's/.*"throughput":([0-9.]+).*/\1/' <<<"$json")
      p99=$(sed -E 's/.*"p99":([0-9.]+).*/\1/' <<<"$json")
      lost=$(sed -nE 's/.*"timeout":([0-9]+).*/\1/p' <<<"$json")
      echo "$c udp-$mode $tput $p99 ${lost:-0}" | tee -a "$results"
    done
    read -r fps flost <<<"$(flows "$FLOWS")"
    echo "$c flows $fps 0 $flost" | tee -a "$results"
  done
done
intercept direct

python3 - "$results" "$REPORT" "$ROUNDS" "$DURATION" "$CONNS" "$RATE" "$FLOWS" <<'PY'
import statistics, sys, subprocess, datetime
path, report, rounds, duration, conns, rate, flows = sys.argv[1:]
rows = {}
for line in open(path):
    c, scen, tput, p99, lost = line.split()
    rows.setdefault((scen, c), []).append((float(tput), float(p99), int(lost)))
med = lambda xs: statistics.median(xs)
out = []
out.append("# UDP through the mesh")
out.append("")
out.append(f"Produced by `perf/udp.sh` on {datetime.date.today()} ({rounds} rounds of {duration}, "
           f"interleaved; medians). Two pods on one veth; mesh-bench's UDP echo in pod-b and its load "
           f"generator in pod-a share CPU 0; each sidecar has one worker on CPU 1. `direct`: no "
           f"interception; `uring`/`epoll`: `mesh-redirect install --udp` in both pods and the relay "
           f"on that driver, so every datagram crosses both sidecars (four relay hops per round trip); "
           f"`uring-b1`: io_uring with `udp.recv_batch: 1` (one datagram per receive call; the default "
           f"takes up to 16 per `recvmmsg`).")
out.append("")
out.append(f"64-byte requests and answers, {conns} sockets; `max` is closed loop, `rate` open loop at "
           f"{rate} datagrams/s (latency from when each was due). `flows`: {flows} fresh sockets one after "
           f"another, one request each (a new flow per socket in each sidecar), from Python.")
out.append("")
out.append("| scenario | contender | datagrams/s (flows/s) | vs direct | p99 µs | added p99 µs | lost |")
out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for scen in ["udp-max", "udp-rate", "flows"]:
    base = rows.get((scen, "direct"))
    for c in ["direct", "uring", "uring-b1", "epoll"]:
        r = rows.get((scen, c))
        if not r:
            continue
        t = med([x[0] for x in r]); p = med([x[1] for x in r]); lost = sum(x[2] for x in r)
        bt = med([x[0] for x in base]); bp = med([x[1] for x in base])
        ptxt = "" if scen == "flows" else f"{p:.0f}"
        added = "" if scen == "flows" or c == "direct" else f"{p - bp:+.0f}"
        out.append(f"| {scen} | {c} | {t:.0f} | {t / bt:.2f} | {ptxt} | {added} | {lost} |")
out.append("")
open(report, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
