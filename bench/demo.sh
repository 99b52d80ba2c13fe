#!/usr/bin/env bash
# The ringmesh demo: two namespaced "pods", interception installed in both, a uring-proxy
# sidecar in both, and plain clients whose traffic goes through them. Prints what happened.
# Run by `make demo` (which builds the release binaries first). Root only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=${BIN:-$root/target/release}
work=$(mktemp -d /tmp/ringmesh-demo.XXXXXX)
chmod 755 "$work"
# shellcheck source=testbed.sh
source "$here/testbed.sh"

cleanup() {
  testbed_down
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
PROXY_UID=1337

step "Two pods: $POD_A ($POD_A_IP4, $POD_A_IP6) and $POD_B ($POD_B_IP4, $POD_B_IP6), one veth link"
testbed_up

step "Interception: mesh-redirect install in both pods"
# pod-a's sidecar runs as uid $PROXY_UID and is exempted by uid; pod-b's runs as root and
# is exempted by its socket mark (1337, the default).
in_pod "$POD_A" "$bin/mesh-redirect" install --backend iptables --proxy-uid "$PROXY_UID" --no-mark
in_pod "$POD_B" "$bin/mesh-redirect" install --backend nftables
echo "-- $POD_A (iptables):"
in_pod "$POD_A" iptables-save -t nat | grep RINGMESH
echo "-- $POD_B (nftables):"
in_pod "$POD_B" nft list table inet ringmesh

step "Sidecars: uring-proxy in both pods"
cat >"$work/pod-a.yaml" <<YAML
# pod-a's sidecar: knows the "hello" service (virtual IP 10.96.0.10:80 -> pod-b:8080).
bypass_mark: 0
services:
  - name: hello
    addrs: ["10.96.0.10:80", "[fd00:96::10]:80"]
    endpoints:
      - addr: "$POD_B_IP4:8080"
YAML
chmod 644 "$work/pod-a.yaml"
tb_spawn "$POD_A" "$work/proxy-a.log" setpriv --reuid="$PROXY_UID" --regid="$PROXY_UID" --clear-groups \
  "$bin/uring-proxy" --config "$work/pod-a.yaml" --log-level info
tb_spawn "$POD_B" "$work/proxy-b.log" "$bin/uring-proxy" --log-level info
tb_wait_http "$POD_A" http://127.0.0.1:15000/ready
tb_wait_http "$POD_B" http://127.0.0.1:15000/ready
echo "pod-a sidecar: uid $PROXY_UID, $(in_pod "$POD_A" curl -s 127.0.0.1:15000/metrics | grep -o 'driver="[a-z_]*"} 1' | head -1)"
echo "pod-b sidecar: root + mark 1337, config version $(in_pod "$POD_B" curl -s 127.0.0.1:15000/config | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')"

step "App: an HTTP server on port 8080 in $POD_B"
mkdir -p "$work/www"
echo "hello from $POD_B" >"$work/www/index.html"
tb_spawn "$POD_B" "$work/app.log" python3 -u -m http.server 8080 --bind :: --directory "$work/www"
for _ in $(seq 50); do in_pod "$POD_B" curl -fs -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.1; done

step "Traffic: plain curl in $POD_A (it knows nothing of the mesh)"
while read -r url what; do
  printf '%-30s %-34s -> %s\n' "$url" "($what)" "$(in_pod "$POD_A" curl -fsS -m 5 "$url")"
done <<URLS
http://$POD_B_IP4:8080/ pod-b's address, an endpoint
http://10.96.0.10/ the hello service's virtual IP
http://[$POD_B_IP6]:8080/ pod-b over IPv6, egress passthrough
http://[fd00:96::10]/ the service's IPv6 virtual IP
URLS

step "What the app saw (its client is the inbound sidecar on loopback)"
grep -E '"GET' "$work/app.log" || true

step "Metrics: pod-a's sidecar (outbound)"
in_pod "$POD_A" curl -s 127.0.0.1:15000/metrics |
  grep -E '^ringmesh_(connections_(opened|closed)_total\{direction="outbound"[^}]*\} [1-9]|bytes_total\{direction="outbound"|outbound_routes_total|driver\{|copy_connections_total)'
step "Metrics: pod-b's sidecar (inbound)"
in_pod "$POD_B" curl -s 127.0.0.1:15000/metrics |
  grep -E '^ringmesh_(connections_(opened|closed)_total\{direction="inbound"[^}]*\} [1-9]|bytes_total\{direction="inbound"|driver\{)'

step "Sidecar logs (connection failures only; successful connections log at debug)"
cat "$work/proxy-a.log" "$work/proxy-b.log" | grep -E 'WARN|ERROR' || echo "(none)"

step "Drain: SIGTERM both sidecars"
testbed_down
grep -hE 'drain|stopped' "$work/proxy-a.log" "$work/proxy-b.log" || true
echo
echo "demo done; namespaces and rules removed"
