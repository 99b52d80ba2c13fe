#!/usr/bin/env bash
# System calls per proxied request and per proxied connection, counted by strace on a fixed
# workload: a regression guard that is not a timing test (counts repeat on a loaded machine;
# times do not). The proxy runs on its real transparent path (NAT REDIRECT, SO_ORIGINAL_DST,
# a service lookup, an upstream dial) in a throwaway network namespace, one worker, unpinned:
#
#   keepalive  one connection, REQUESTS ping-pong exchanges of 64 B (per request)
#   connect    CONNECTIONS connections one after another, one 64 B exchange each (per
#              connection: accept to close on both sides)
#
# strace attaches to all the proxy's threads only after it is ready and warmed up, and
# detaches after each workload, so start-up is not counted; the client is a plain Python
# socket loop, one request in flight, so batching cannot vary with timing.
#
# Two figures per workload are guarded: "fixed", the calls our code makes itself on every
# connection or request (socket, setsockopt, getsockopt, fcntl, connect, accept, shutdown,
# close, ...), which do not depend on timing and get a tight margin (FIXED_MARGIN, 5%: one
# more call per connection is more than that); and "total", which adds the event loop's
# waits and the reads and writes, whose count moves a little with timing (a spurious wake-up
# costs a recv that finds nothing, and on io_uring how completions batch into one
# io_uring_enter moves with load: 3.1 to 4.3 per keep-alive request were seen on one machine),
# with a looser one (MARGIN, 30%).
#
#   perf/syscalls.sh                 print the counts for both drivers
#   perf/syscalls.sh --check         fail if a figure exceeds perf/syscall-budget.txt by more
#                                    than its margin
#   perf/syscalls.sh --write-budget  record the current counts as the budget
# Env: BIN (binaries; default the debug build), DRIVERS ("uring epoll"), REQUESTS (2000),
# CONNECTIONS (300), MARGIN (0.30), FIXED_MARGIN (0.05).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
mode=print
case ${1:-} in
  "") ;;
  --check) mode=check ;;
  --write-budget) mode=write ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
die() { echo "syscalls.sh: FAIL: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (a network namespace, iptables)"
for t in strace iptables python3 ip; do command -v "$t" >/dev/null || die "$t is missing (./.ci/deps.sh)"; done
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/debug}
for b in uring-proxy mesh-bench; do [[ -x $bin/$b ]] || die "$bin/$b is missing: build first"; done
DRIVERS=${DRIVERS:-uring epoll}
REQUESTS=${REQUESTS:-2000}
CONNECTIONS=${CONNECTIONS:-300}
MARGIN=${MARGIN:-0.30}
FIXED_MARGIN=${FIXED_MARGIN:-0.05}
budget=$here/syscall-budget.txt

ns=rmsys$$
work=$(mktemp -d /tmp/ringmesh-syscalls.XXXXXX)
pids=()
cleanup() {
  local rc=$? p
  # errexit would end the trap at the first wait on a killed process (status 143).
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
in_ns() { ip netns exec "$ns" "$@"; }
ip netns add "$ns"
in_ns ip link set lo up
# The proxy's real path: 127.0.2.1:9000 is a service whose endpoint is the echo backend.
in_ns iptables -t nat -A OUTPUT -p tcp -d 127.0.2.1 -j REDIRECT --to-ports 15001
cat >"$work/proxy.yaml" <<'YAML'
listeners: { outbound: "127.0.0.1:15001", inbound: "127.0.0.1:15006" }
admin: "127.0.0.1:15000"
bypass_mark: 0
services:
  - { name: echo, addrs: ["127.0.2.1:9000"], endpoints: [{ addr: "127.0.0.1:9000" }] }
YAML
ip netns exec "$ns" "$bin/mesh-bench" serve tcp-echo --listen 127.0.0.1:9000 >"$work/echo.log" 2>&1 &
pids+=($!)

# The client: python, one request in flight. "keepalive N" or "connect N".
cat >"$work/client.py" <<'PY'
import socket, sys
kind, n = sys.argv[1], int(sys.argv[2])
msg = b"x" * 64
def exchange(s):
    s.sendall(msg)
    got = 0
    while got < len(msg):
        b = s.recv(4096)
        if not b:
            sys.exit("closed early")
        got += len(b)
if kind == "keepalive":
    s = socket.create_connection(("127.0.2.1", 9000))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(n):
        exchange(s)
    s.close()
else:
    for _ in range(n):
        s = socket.create_connection(("127.0.2.1", 9000))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange(s)
        # Wait for the proxy to finish this connection (its FIN) before the next one.
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
        s.close()
PY

# count DRIVER KIND N OUT: the syscalls the proxy made during one workload, as "name calls"
# lines in OUT.
count() {
  local driver=$1 kind=$2 n=$3 out=$4 proxy tids strace_pid
  # ip netns exec itself, not in_ns: a function would fork, and $! would not be the proxy.
  ip netns exec "$ns" "$bin/uring-proxy" --config "$work/proxy.yaml" --workers 1 --no-pin \
    --driver "$driver" --log-level warn >"$work/proxy-$driver.log" 2>&1 &
  proxy=$!
  pids+=("$proxy")
  # Ready, not just the admin port open: every worker has its listeners (the admin answers
  # before the workers do, and a connection in between is refused).
  for _ in $(seq 100); do
    in_ns python3 -c 'import urllib.request as u; u.build_opener(u.ProxyHandler({})).open("http://127.0.0.1:15000/ready", timeout=1)' 2>/dev/null && break
    sleep 0.1
  done
  # Warm up: the first connections fill caches, grow buffers, start lazy state.
  in_ns python3 "$work/client.py" connect 20 || die "warm-up through the $driver proxy failed"
  in_ns python3 "$work/client.py" keepalive 200 || die "warm-up through the $driver proxy failed"
  [[ $(<"/proc/$proxy/comm") == uring-proxy ]] || die "PID $proxy is $(<"/proc/$proxy/comm"), not the proxy"
  # -f with the process's PID attaches to all its threads (and any it starts).
  strace -qq -f -c -U calls,errors,name -o "$work/strace.out" -p "$proxy" &
  strace_pid=$!
  # strace is attached once the proxy's threads show a tracer.
  for _ in $(seq 100); do
    grep -q "^TracerPid:[[:space:]]*$strace_pid$" "/proc/$proxy/status" 2>/dev/null && break
    sleep 0.05
  done
  in_ns python3 "$work/client.py" "$kind" "$n" || die "the $kind workload through the $driver proxy failed"
  kill -INT "$strace_pid"
  wait "$strace_pid" || true
  kill "$proxy"
  wait "$proxy" 2>/dev/null || true
  # strace -c -U calls,errors,name: a header, a dashes line, rows, a dashes line, a total.
  awk 'NR > 2 && $1 ~ /^[0-9]+$/ { name = $NF; calls = $1; if (name != "total") print name, calls }' \
    "$work/strace.out" >"$out"
  [[ -s $out ]] || die "strace counted nothing for the $driver proxy ($kind)"
}

results=$work/results.txt
: >"$results"
for driver in $DRIVERS; do
  for kind in keepalive connect; do
    n=$REQUESTS
    [[ $kind == connect ]] && n=$CONNECTIONS
    count "$driver" "$kind" "$n" "$work/counts"
    awk -v d="$driver" -v k="$kind" -v n="$n" '{ printf "%s %s %s %.3f\n", d, k, $1, $2 / n }' \
      "$work/counts" >>"$results"
  done
done

# The table: per request (keepalive) and per connection (connect), by syscall.
report() {
  python3 - "$results" <<'PY'
import collections, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    d, k, name, per = line.split()
    rows[(d, k)][name] = float(per)
for (d, k), calls in sorted(rows.items()):
    unit = "request" if k == "keepalive" else "connection"
    total = sum(calls.values())
    print(f"{d} {k}: {total:.2f} syscalls per {unit}: " +
          ", ".join(f"{n} {v:.2f}" for n, v in sorted(calls.items(), key=lambda x: -x[1]) if v >= 0.01))
PY
}
report

# figures: "driver workload total N" and "driver workload fixed N" lines.
figures() {
  awk '
    { t[$1 " " $2] += $4 }
    $3 !~ /^(io_uring_enter|epoll_wait|epoll_pwait|poll|ppoll|recvfrom|sendto|read|write|futex)$/ { f[$1 " " $2] += $4 }
    END { for (k in t) printf "%s total %.2f\n%s fixed %.2f\n", k, t[k], k, f[k] + 0 }' "$results" | sort
}

case $mode in
  write)
    {
      echo "# perf/syscalls.sh --write-budget on $(date -u +%Y-%m-%d), $(git -C "$root" rev-parse --short HEAD 2>/dev/null), binaries from $(basename "$bin")"
      echo "# (make test checks the debug build; its std adds fd checks: 2 fcntl(F_GETFD) per epoll connection)"
      echo "# driver workload figure syscalls-per-unit (keepalive: per request; connect: per connection)"
      figures
    } >"$budget"
    echo "wrote $budget"
    ;;
  check)
    [[ -f $budget ]] || die "$budget is missing (perf/syscalls.sh --write-budget)"
    figures >"$work/now.txt"
    python3 - "$budget" "$work/now.txt" "$MARGIN" "$FIXED_MARGIN" <<'PY'
import sys
def load(p):
    out = {}
    for line in open(p):
        if line.startswith("#") or not line.strip():
            continue
        d, k, fig, v = line.split()
        out[(d, k, fig)] = float(v)
    return out
budget, now = load(sys.argv[1]), load(sys.argv[2])
margins = {"total": float(sys.argv[3]), "fixed": float(sys.argv[4])}
bad = 0
for key, got in sorted(now.items()):
    if key not in budget:
        print(f"syscalls.sh: {' '.join(key)}: no budget recorded", file=sys.stderr)
        bad = 1
        continue
    # Plus 0.05 per unit: the other threads' occasional calls (the heartbeat, the admin
    # thread) land in any window; a regression on the path is a whole call per unit.
    limit = budget[key] * (1 + margins[key[2]]) + 0.05
    verdict = "ok" if got <= limit else "OVER"
    print(f"  {key[0]:6} {key[1]:9} {key[2]:5} {got:7.2f} (budget {budget[key]:.2f}, limit {limit:.2f}) {verdict}")
    if got > limit:
        bad = 1
if bad:
    sys.exit("syscalls.sh: FAIL: more system calls than the budget (perf/syscall-budget.txt); "
             "find the new ones (perf/syscalls.sh prints them by name), or, if they are worth it, "
             "record a new budget with --write-budget and say why in the commit")
PY
    echo "syscalls.sh: within the budget (margins: total $MARGIN, fixed $FIXED_MARGIN)"
    ;;
esac
