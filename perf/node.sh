#!/usr/bin/env bash
# Node mode, measured: (1) what each registered workload costs a node proxy (resident
# memory and file descriptors at 1, 10 and 100 workloads, each in its own network namespace,
# each with its own SVID from the Delegated Identity API); (2) keep-alive requests and new
# connections between two pods through one node proxy versus through two sidecars, against
# direct, in interleaved rounds of one run. Writes perf/NODE.md. Benchmarks are not tests.
#
#   perf/node.sh                        # about 3 minutes after the build
#   ROUNDS=1 DURATION=2s perf/node.sh   # a quick look
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-32}
WORKERS=${WORKERS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-1}
REPORT=${REPORT:-$here/NODE.md}
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/release}
[[ $(id -u) -eq 0 ]] || { echo "run as root (network namespaces)" >&2; exit 1; }
"$root/.ci/deps.sh"
(cd "$root" && cargo build --release -q -p uring-proxy -p ringmesh-redirect -p ringmesh-bench -p ringmesh-ctrl)

TB_PREFIX=rmnode
# shellcheck source=../bench/testbed.sh
source "$root/bench/testbed.sh"
work=$(mktemp -d /tmp/ringmesh-node-perf.XXXXXX)
chmod 755 "$work"
cost_ns=()
cleanup() {
  testbed_down
  for ns in "${cost_ns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- Part 1: cost per workload -------------------------------------------------------------
"$bin/meshctl" identity serve --socket "$work/wl.sock" --admin-socket "$work/admin.sock" \
  --delegate-uid 0 --ttl 1h $(for i in $(seq 100); do echo --selector "ringmesh:workload:cost/w$i=spiffe://cluster.local/ns/cost/sa/w$i"; done) \
  >"$work/identity.log" 2>&1 &
TB_PIDS+=($!)
for _ in $(seq 100); do [[ -S $work/admin.sock ]] && break; sleep 0.05; done
cat >"$work/cost.yaml" <<CONF
mode: node
node: { socket: "$work/cost.sock", max_workloads: 128 }
identity: { source: delegated, socket: "$work/admin.sock" }
admin: "127.0.0.1:15900"
CONF
"$bin/uring-proxy" --config "$work/cost.yaml" --workers 2 --no-pin >"$work/cost.log" 2>&1 &
node_pid=$!
TB_PIDS+=("$node_pid")
for _ in $(seq 100); do [[ -S $work/cost.sock ]] && break; sleep 0.05; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
sleep 0.5
base_rss=$(rss "$node_pid")
base_fds=$(fds "$node_pid")
cost_rows=()
registered=0
for target in 1 10 100; do
  while ((registered < target)); do
    registered=$((registered + 1))
    ns=rmcost$registered
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    cost_ns+=("$ns")
    "$bin/meshctl" node add --socket "$work/cost.sock" --name "cost/w$registered" --netns "/run/netns/$ns" \
      --spiffe-id "spiffe://cluster.local/ns/cost/sa/w$registered" >/dev/null
  done
  # Until every workload holds its SVID.
  for _ in $(seq 200); do
    n=$(curl -s 127.0.0.1:15900/metrics | grep -c '^ringmesh_identity_info{' || true)
    ((n >= target)) && break
    sleep 0.05
  done
  r=$(rss "$node_pid")
  f=$(fds "$node_pid")
  cost_rows+=("| $target | $((r / 1024)) MiB | $(((r - base_rss) / target)) KiB | $f | $(((f - base_fds) / target)) |")
  echo "workloads=$target rss=${r}KiB fds=$f"
done
kill "$node_pid"
wait "$node_pid" 2>/dev/null || true

# --- Part 2: two pods through one node proxy, two sidecars, or nothing ---------------------
testbed_up
tb_spawn "$POD_B" "$work/backend.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve http --listen "[::]:9000" --threads 1
tb_spawn "$POD_B" "$work/echo.log" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" serve tcp-echo --listen "[::]:9001" --threads 1
# Sidecars on 15001/15006 (pod-a's by uid 1337), the node proxy (in the root namespace) on
# 15011/15016 inside each pod.
for pod in a b; do
  mark=""
  [[ $pod == a ]] && mark="bypass_mark: 0"
  printf 'admin: "127.0.0.1:15000"\n%s\n' "$mark" >"$work/side-$pod.yaml"
done
chmod 644 "$work"/*.yaml
tb_spawn "$POD_A" "$work/side-a.log" taskset -c "$PROXY_CPUS" setpriv --reuid=1337 --regid=1337 --clear-groups \
  "$bin/uring-proxy" --config "$work/side-a.yaml" --workers "$WORKERS" --no-pin
side_a=${TB_PIDS[-1]}
tb_spawn "$POD_B" "$work/side-b.log" taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$work/side-b.yaml" --workers "$WORKERS" --no-pin
side_b=${TB_PIDS[-1]}
cat >"$work/node.yaml" <<CONF
mode: node
node: { socket: "$work/node.sock" }
listeners: { outbound: "[::]:15011", inbound: "[::]:15016" }
admin: "127.0.0.1:15910"
CONF
taskset -c "$PROXY_CPUS" "$bin/uring-proxy" --config "$work/node.yaml" --workers "$WORKERS" --no-pin >"$work/node.log" 2>&1 &
node=$!
TB_PIDS+=("$node")
tb_wait_http "$POD_A" http://127.0.0.1:15000/ready
tb_wait_http "$POD_B" http://127.0.0.1:15000/ready
for _ in $(seq 100); do [[ -S $work/node.sock ]] && break; sleep 0.05; done
"$bin/meshctl" node add --socket "$work/node.sock" --name perf/pod-a --netns "/run/netns/$POD_A" >/dev/null
"$bin/meshctl" node add --socket "$work/node.sock" --name perf/pod-b --netns "/run/netns/$POD_B" >/dev/null

intercept() {
  for pod in "$POD_A" "$POD_B"; do in_pod "$pod" "$bin/mesh-redirect" uninstall >/dev/null; done
  case $1 in
    sidecars)
      in_pod "$POD_A" "$bin/mesh-redirect" install --proxy-uid 1337 --no-mark >/dev/null
      in_pod "$POD_B" "$bin/mesh-redirect" install >/dev/null
      ;;
    node)
      for pod in "$POD_A" "$POD_B"; do
        in_pod "$pod" "$bin/mesh-redirect" install --outbound-port 15011 --inbound-port 15016 >/dev/null
      done
      ;;
  esac
}

results=$work/results.txt
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  for c in direct sidecars node; do
    intercept "$c"
    watch=()
    case $c in
      sidecars) watch=(--watch-pid "$side_a" --watch-pid "$side_b") ;;
      node) watch=(--watch-pid "$node") ;;
    esac
    for scen in keepalive conn; do
      case $scen in
        keepalive) args=(--workload http --connections "$CONNS" --target "$POD_B_IP4:9000") ;;
        conn) args=(--workload conn --connections 16 --request-size 64 --response-size 64 --target "$POD_B_IP4:9001") ;;
      esac
      json=$(in_pod "$POD_A" taskset -c "$LOAD_CPUS" "$bin/mesh-bench" run "${args[@]}" \
        --threads 1 --duration "$DURATION" --warmup "$WARMUP" --json - "${watch[@]}")
      tput=$(sed -E 's/.*"throughput":([0-9.]+).*/\1/' <<<"$json")
      p99=$(sed -E 's/.*"p99":([0-9.]+).*/\1/' <<<"$json")
      cpu=$(sed -nE 's/.*"watched_cpu_seconds":([0-9.e+-]+).*/\1/p' <<<"$json")
      reqs=$(sed -E 's/.*"requests":([0-9]+).*/\1/' <<<"$json")
      echo "$c $scen $tput $p99 ${cpu:-0} $reqs" | tee -a "$results"
    done
  done
done
intercept direct

python3 - "$results" "$REPORT" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" "${cost_rows[@]}" <<'PY'
import statistics, sys, datetime
path, report, rounds, duration, conns, workers, *cost = sys.argv[1:]
rows = {}
for line in open(path):
    c, scen, tput, p99, cpu, reqs = line.split()
    rows.setdefault((scen, c), []).append((float(tput), float(p99), float(cpu), int(reqs)))
med = statistics.median
out = ["# Node mode", "",
       f"Produced by `perf/node.sh` on {datetime.date.today()}.", "",
       "## What a workload costs a node proxy", "",
       "One node proxy (2 workers), workloads registered with `meshctl node add`, each in its own "
       "network namespace (a listener pair per worker inside it) and each holding its own SVID "
       "from the Delegated Identity API (one stream per workload). Resident memory and open file "
       "descriptors of the proxy process; per workload: above the proxy with none.", "",
       "| workloads | RSS | RSS per workload | fds | fds per workload |",
       "| ---: | ---: | ---: | ---: | ---: |", *cost, "",
       "## Two pods: one node proxy versus two sidecars", "",
       f"{rounds} interleaved rounds of {duration} (medians); HTTP keep-alive on {conns} connections, "
       f"and one 64-byte request per new connection, 16 at a time (TCP echo); closed loop. The load generator and "
       f"backend share CPU 0; every proxy has {workers} worker(s) on CPU 1. `sidecars`: a proxy in "
       f"each pod (two hops); `node`: one node proxy serving both pods (both hops in one process). "
       f"CPU per request: the proxies' CPU time over the requests.", "",
       "| scenario | contender | req/s | vs direct | p99 µs | CPU µs/req |",
       "| --- | --- | ---: | ---: | ---: | ---: |"]
for scen in ["keepalive", "conn"]:
    base = med([x[0] for x in rows[(scen, "direct")]])
    for c in ["direct", "sidecars", "node"]:
        r = rows[(scen, c)]
        t = med([x[0] for x in r]); p = med([x[1] for x in r])
        cpu = med([x[2] / x[3] * 1e6 if x[3] else 0 for x in r])
        out.append(f"| {scen} | {c} | {t:.0f} | {t / base:.2f} | {p:.0f} | {'' if c == 'direct' else f'{cpu:.1f}'} |")
out.append("")
open(report, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
