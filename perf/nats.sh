#!/usr/bin/env bash
# Configuration over NATS, measured: time from `push` to applied in every follower, for 1 and
# 100 followers, and for a one-service change in a 10,000-service mesh. A local nats-server
# (Debian's) with JetStream and TLS, certificates from `meshctl identity`; the followers are
# the proxy's own follower code (ctrl/examples/apply_latency.rs) with an apply that only
# records the time. Writes perf/NATS.md. Benchmarks are not tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
"$root/.ci/deps.sh"
(cd "$root" && cargo build --release -q -p ringmesh-ctrl --bin meshctl --example apply_latency)
bin=$target_dir/release
work=$(mktemp -d /tmp/ringmesh-nats-perf.XXXXXX)
nats_pid=
cleanup() {
  if [[ -n $nats_pid ]]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cp_id=spiffe://cluster.local/ns/ringmesh/sa/control-plane
"$bin/meshctl" identity ca --cert "$work/ca.pem" --key "$work/ca.key" >/dev/null
"$bin/meshctl" identity mint --ca-cert "$work/ca.pem" --ca-key "$work/ca.key" --name 127.0.0.1 --cert "$work/nats.pem" --key "$work/nats.key"
"$bin/meshctl" identity mint --ca-cert "$work/ca.pem" --ca-key "$work/ca.key" --id "$cp_id" --cert "$work/cp.pem" --key "$work/cp.key"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/meshctl" nats-config --listen "127.0.0.1:$port" --store "$work/js" --ca "$work/ca.pem" \
  --cert "$work/nats.pem" --key "$work/nats.key" --control-plane "$cp_id" >"$work/nats.conf"
/usr/sbin/nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
run() { "$bin/examples/apply_latency" "tls://127.0.0.1:$port" "$work/ca.pem" "$work/cp.pem" "$work/cp.key" "$@"; }
{
  echo "# Configuration over NATS: push to applied"
  echo
  echo "Produced by \`perf/nats.sh\` on $(date -u +%Y-%m-%d): $(/usr/sbin/nats-server --version), one server on loopback,"
  echo "JetStream file store, TLS with client certificates; $(nproc) CPUs shared by the server, the"
  echo "publisher and every follower. Time from the start of \`push\` to the follower's apply"
  echo "callback (the proxy's own validation and apply, measured separately, add to it)."
  echo
  echo '```'
  run 1 50 10
  run 100 20 10
  run 1 5 10000
  echo '```'
} | tee "$here/NATS.md"
