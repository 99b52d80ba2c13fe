#!/usr/bin/env bash
# The ringmesh demo: two namespaced "pods", interception installed in both, a uring-proxy
# sidecar in both, and plain clients whose traffic goes through them. Prints what happened.
# Run by `make demo` (which builds the release binaries first). Root only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=target-dir.sh
source "$here/target-dir.sh"
bin=${BIN:-$target_dir/release}
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

step "Identities: a development SPIFFE Workload API server (meshctl identity serve)"
# It identifies each caller by its uid, as a SPIRE agent would by its selectors: pod-a's
# sidecar runs as uid $PROXY_UID, pod-b's as root.
ID_A=spiffe://cluster.local/ns/demo/sa/pod-a
ID_B=spiffe://cluster.local/ns/demo/sa/pod-b
SOCK=$work/workload.sock
tb_identity_server "$bin" "$SOCK" "$work/meshctl.log" --trust-domain cluster.local --ttl 1h \
  --map "$PROXY_UID=$ID_A" --map "0=$ID_B"
echo "uid $PROXY_UID -> $ID_A"
echo "uid 0    -> $ID_B"

step "Sidecars: uring-proxy in both pods, mTLS between them"
cat >"$work/pod-a.yaml" <<YAML
# pod-a's sidecar: knows the "hello" service (virtual IP 10.96.0.10:80 -> pod-b:8080), whose
# endpoint must prove it is $ID_B.
bypass_mark: 0
identity: { source: workload_api, socket: "$SOCK" }
services:
  - name: hello
    addrs: ["10.96.0.10:80", "[fd00:96::10]:80"]
    endpoints:
      - { addr: "$POD_B_IP4:8080", identity: "$ID_B" }
YAML
cat >"$work/pod-b.yaml" <<YAML
# pod-b's sidecar: its app port takes mTLS only, and only from pod-a.
identity: { source: workload_api, socket: "$SOCK" }
inbound: { mode: strict }
access:
  default: deny
  rules:
    - destination: { port: 8080 }
      sources: ["$ID_A"]
YAML
chmod 644 "$work/pod-a.yaml" "$work/pod-b.yaml"
tb_spawn "$POD_A" "$work/proxy-a.log" setpriv --reuid="$PROXY_UID" --regid="$PROXY_UID" --clear-groups \
  "$bin/uring-proxy" --config "$work/pod-a.yaml" --log-level info
tb_spawn "$POD_B" "$work/proxy-b.log" "$bin/uring-proxy" --config "$work/pod-b.yaml" --log-level info
tb_wait_http "$POD_A" http://127.0.0.1:15000/ready
tb_wait_http "$POD_B" http://127.0.0.1:15000/ready
for pod in "$POD_A" "$POD_B"; do
  printf '%s sidecar: ' "$pod"
  in_pod "$pod" curl -s 127.0.0.1:15000/identity | python3 -c 'import json,sys,time; v=json.load(sys.stdin); print(v["spiffe_id"], "serial", v["serial"], "valid until", time.strftime("%H:%M:%S", time.gmtime(v["not_after"])), "UTC")'
done

step "App: an HTTP server on port 8080 in $POD_B"
mkdir -p "$work/www"
echo "hello from $POD_B" >"$work/www/index.html"
tb_spawn "$POD_B" "$work/app.log" python3 -u -m http.server 8080 --bind :: --directory "$work/www"
for _ in $(seq 50); do in_pod "$POD_B" curl -fs -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.1; done

step "Traffic: plain curl in $POD_A (it knows nothing of the mesh)"
while read -r url what; do
  printf '%-30s %-40s -> %s\n' "$url" "($what)" "$(in_pod "$POD_A" curl -fsS -m 5 "$url" 2>&1 || true)"
done <<URLS
http://10.96.0.10/ the hello service's virtual IP, mTLS
http://$POD_B_IP4:8080/ pod-b's address, a meshed endpoint, mTLS
http://[fd00:96::10]/ the service's IPv6 virtual IP, mTLS
http://[$POD_B_IP6]:8080/ not in the mesh: plaintext, refused (strict)
URLS

step "What the app saw (its client is the inbound sidecar on loopback)"
grep -E '"GET' "$work/app.log" || true

step "Metrics: pod-a's sidecar (outbound)"
in_pod "$POD_A" curl -s 127.0.0.1:15000/metrics |
  grep -E '^ringmesh_(connections_(opened|closed)_total\{direction="outbound"[^}]*\} [1-9]|bytes_total\{direction="outbound"|outbound_routes_total|driver\{|tls_handshakes_total\{direction="outbound"|connections_security_total\{direction="outbound")'
step "Metrics: pod-b's sidecar (inbound)"
in_pod "$POD_B" curl -s 127.0.0.1:15000/metrics |
  grep -E '^ringmesh_(connections_(opened|closed)_total\{direction="inbound"[^}]*\} [1-9]|bytes_total\{direction="inbound"|driver\{|tls_handshakes_total\{direction="inbound"|connections_security_total\{direction="inbound"|identity_info)'

step "Sidecar logs (connection failures only: here, the plaintext refused by pod-b)"
cat "$work/proxy-a.log" "$work/proxy-b.log" | grep -E 'WARN|ERROR' || echo "(none)"

step "Drain: SIGTERM both sidecars"
testbed_down
grep -hE 'drain|stopped' "$work/proxy-a.log" "$work/proxy-b.log" || true
echo
echo "demo done; namespaces and rules removed"
