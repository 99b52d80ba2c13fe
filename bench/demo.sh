#!/usr/bin/env bash
# The ringmesh demo: two namespaced "pods", interception installed in both, a uring-proxy
# sidecar in both taking its identity from a Workload API and its config from a NATS control
# plane, and plain clients whose traffic goes through them. Prints what happened.
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

step "Interception: mesh-redirect install --udp in both pods (TCP rules and UDP eBPF programs)"
# pod-a's sidecar runs as uid $PROXY_UID and is exempted by uid; pod-b's runs as root and
# is exempted by its socket mark (1337, the default). The control plane's port (NATS, 4222)
# is not intercepted.
tb_udp_install "$POD_A" "$bin/mesh-redirect" --backend iptables --proxy-uid "$PROXY_UID" --no-mark \
  --exclude-outbound-ports 4222 --exclude-inbound-ports 4222
tb_udp_install "$POD_B" "$bin/mesh-redirect" --backend nftables --exclude-outbound-ports 4222
echo "-- $POD_A (iptables):"
in_pod "$POD_A" iptables-save -t nat | grep RINGMESH
echo "-- $POD_B (nftables):"
in_pod "$POD_B" nft list table inet ringmesh
echo "-- UDP in both (pinned under /sys/fs/bpf/ringmesh/):"
ns_pod "$POD_B" "$bin/mesh-redirect" show --udp --backend nftables | sed -n '/^# UDP: eBPF/,/^proxy/p'

step "Identities: a CA, and a development SPIFFE Workload API server (meshctl identity)"
# It identifies each caller by its uid, as a SPIRE agent would by its selectors: pod-a's
# sidecar runs as uid $PROXY_UID, pod-b's as root.
ID_A=spiffe://cluster.local/ns/demo/sa/pod-a
ID_B=spiffe://cluster.local/ns/demo/sa/pod-b
ID_CP=spiffe://cluster.local/ns/ringmesh/sa/control-plane
SOCK=$work/workload.sock
"$bin/meshctl" identity ca --trust-domain cluster.local --cert "$work/ca.pem" --key "$work/ca.key"
tb_identity_server "$bin" "$SOCK" "$work/meshctl.log" --trust-domain cluster.local --ttl 1h \
  --ca-cert "$work/ca.pem" --ca-key "$work/ca.key" --write-bundle "$work/bundle.pem" \
  --map "$PROXY_UID=$ID_A" --map "0=$ID_B"
echo "uid $PROXY_UID -> $ID_A"
echo "uid 0    -> $ID_B"
# The control plane's own certificates: the NATS server's, and meshctl's as $ID_CP.
"$bin/meshctl" identity mint --ca-cert "$work/ca.pem" --ca-key "$work/ca.key" \
  --name 127.0.0.1 --name "$POD_A_IP4" --cert "$work/nats.pem" --key "$work/nats.key"
"$bin/meshctl" identity mint --ca-cert "$work/ca.pem" --ca-key "$work/ca.key" \
  --id "$ID_CP" --cert "$work/cp.pem" --key "$work/cp.key"
chmod 644 "$work"/*.pem "$work"/*.key

step "Control plane: nats-server with JetStream and TLS, users by SPIFFE ID (meshctl nats-config)"
# It runs in $POD_A's namespace (the demo has no third host); pod-b reaches it over the link.
"$bin/meshctl" nats-config --listen 0.0.0.0:4222 --server-name demo --store "$work/js" \
  --ca "$work/bundle.pem" --cert "$work/nats.pem" --key "$work/nats.key" \
  --control-plane "$ID_CP" --proxy "$ID_A=demo/pod-a" --proxy "$ID_B=demo/pod-b" >"$work/nats.conf"
grep -E 'user:|verify_and_map' "$work/nats.conf" | sed 's/^/  /' | cut -c1-150
tb_spawn "$POD_A" "$work/nats.log" /usr/sbin/nats-server -c "$work/nats.conf"
for _ in $(seq 100); do in_pod "$POD_A" bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222' 2>/dev/null && break; sleep 0.1; done
NATS_A=(--nats tls://127.0.0.1:4222 --ca "$work/bundle.pem" --cert "$work/cp.pem" --key "$work/cp.key")

step "Mesh config: pushed to NATS (meshctl push), one mesh-wide version and one override"
cat >"$work/mesh-v1.yaml" <<YAML
# The mesh: the "hello" service (virtual IP 10.96.0.10:80) is pod-b's port 8080, whose proxy
# must prove it is $ID_B.
services:
  - name: hello
    addrs: ["10.96.0.10:80", "[fd00:96::10]:80"]
    endpoints:
      - { addr: "$POD_B_IP4:8080", identity: "$ID_B" }
# pod-b's DNS server, behind the virtual IP 10.96.0.53 (UDP goes in plaintext).
  - name: dns
    addrs: ["10.96.0.53:53"]
    endpoints:
      - { addr: "$POD_B_IP4:53" }
YAML
cat >"$work/pod-b-override.yaml" <<YAML
# Only for workload demo/pod-b: its app port takes mTLS only, and only from pod-a.
inbound: { mode: strict }
access:
  default: deny
  rules:
    - destination: { port: 8080 }
      sources: ["$ID_A"]
    - destination: { port: 8081 }
      sources: ["$ID_A"]
YAML
in_pod "$POD_A" "$bin/meshctl" push "${NATS_A[@]}" "$work/mesh-v1.yaml"
in_pod "$POD_A" "$bin/meshctl" push "${NATS_A[@]}" --scope workload/demo/pod-b "$work/pod-b-override.yaml"

step "Sidecars: uring-proxy in both pods, following NATS, mTLS between them"
for pod in a b; do
  server=tls://127.0.0.1:4222
  [[ $pod == b ]] && server=tls://$POD_A_IP4:4222
  mark=""
  [[ $pod == a ]] && mark="bypass_mark: 0"
  cat >"$work/pod-$pod.yaml" <<YAML
# pod-$pod's sidecar: its identity from the Workload API, its live config from NATS (with
# its SVID as the client certificate).
$mark
identity: { source: workload_api, socket: "$SOCK" }
control_plane:
  nats:
    servers: ["$server"]
    tls: { ca: "$work/bundle.pem" }
    persist: "$work/pod-$pod-config.json"
YAML
done
chmod 644 "$work/pod-a.yaml" "$work/pod-b.yaml"
chmod 777 "$work"
tb_spawn "$POD_A" "$work/proxy-a.log" setpriv --reuid="$PROXY_UID" --regid="$PROXY_UID" --clear-groups \
  "$bin/uring-proxy" --config "$work/pod-a.yaml" --workload demo/pod-a --log-level info
tb_spawn "$POD_B" "$work/proxy-b.log" "$bin/uring-proxy" --config "$work/pod-b.yaml" --workload demo/pod-b --log-level info
tb_wait_http "$POD_A" http://127.0.0.1:15000/ready
tb_wait_http "$POD_B" http://127.0.0.1:15000/ready
for pod in "$POD_A" "$POD_B"; do
  printf '%s sidecar: ' "$pod"
  in_pod "$pod" curl -s 127.0.0.1:15000/identity | python3 -c 'import json,sys,time; v=json.load(sys.stdin); print(v["spiffe_id"], "serial", v["serial"], "valid until", time.strftime("%H:%M:%S", time.gmtime(v["not_after"])), "UTC")'
done
# wait_applied POD VERSION: until the sidecar runs that mesh version.
wait_applied() {
  for _ in $(seq 100); do
    in_pod "$1" curl -s 127.0.0.1:15000/config | grep -q "\"version\": \"$2\"" && return 0
    sleep 0.1
  done
  echo "$1 did not apply version $2" >&2
  return 1
}
wait_applied "$POD_A" 1
wait_applied "$POD_B" 1
sleep 1.5 # one status interval
in_pod "$POD_A" "$bin/meshctl" status "${NATS_A[@]}"

step "App: an HTTP server on port 8080 in $POD_B"
mkdir -p "$work/www"
echo "hello from $POD_B" >"$work/www/index.html"
tb_spawn "$POD_B" "$work/app.log" python3 -u -m http.server 8080 --bind :: --directory "$work/www"
for _ in $(seq 50); do in_pod "$POD_B" curl -fs -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.1; done

step "App: dnsmasq (a DNS server) on $POD_B_IP4:53 in $POD_B"
tb_spawn "$POD_B" "$work/dnsmasq.log" dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts \
  --pid-file= --log-facility=- --user=root --bind-interfaces --listen-address="$POD_B_IP4" --port=53 \
  --address=/hello.demo.test/10.96.0.10
for _ in $(seq 50); do grep -q started "$work/dnsmasq.log" 2>/dev/null && break; sleep 0.1; done

step "UDP: dig in $POD_A, through both sidecars (eBPF steers each datagram with a PROXY v2 header)"
for server in 10.96.0.53 "$POD_B_IP4"; do
  printf '%-34s -> %s\n' "dig @$server hello.demo.test" \
    "$(in_pod "$POD_A" dig +short +time=2 +tries=2 "@$server" hello.demo.test 2>&1 | tr '\n' ' ')"
done
in_pod "$POD_A" curl -s 127.0.0.1:15000/metrics | grep -E '^ringmesh_udp_(datagrams_total\{[^}]*outbound|flows_created_total\{[^}]*outbound)'
in_pod "$POD_B" curl -s 127.0.0.1:15000/metrics | grep -E '^ringmesh_udp_(datagrams_total\{[^}]*inbound|flows_created_total\{[^}]*inbound)'

step "Traffic: plain curl in $POD_A (it knows nothing of the mesh)"
while read -r url what; do
  printf '%-30s %-40s -> %s\n' "$url" "($what)" "$(in_pod "$POD_A" curl -fsS -m 5 "$url" 2>&1 || true)"
done <<URLS
http://10.96.0.10/ the hello service's virtual IP, mTLS
http://$POD_B_IP4:8080/ pod-b's address, a meshed endpoint, mTLS
http://[fd00:96::10]/ the service's IPv6 virtual IP, mTLS
http://[$POD_B_IP6]:8080/ not in the mesh: plaintext, refused (strict)
URLS

step "A config change: hello moves to pod-b's port 8081 (meshctl push, then traffic follows)"
mkdir -p "$work/www2"
echo "hello from $POD_B, version 2" >"$work/www2/index.html"
tb_spawn "$POD_B" "$work/app2.log" python3 -u -m http.server 8081 --bind :: --directory "$work/www2"
for _ in $(seq 50); do in_pod "$POD_B" curl -fs -o /dev/null http://127.0.0.1:8081/ && break; sleep 0.1; done
sed "s/:8080\"/:8081\"/" "$work/mesh-v1.yaml" >"$work/mesh-v2.yaml"
in_pod "$POD_A" "$bin/meshctl" push "${NATS_A[@]}" "$work/mesh-v2.yaml"
wait_applied "$POD_A" 2
printf '%-30s -> %s\n' "http://10.96.0.10/" "$(in_pod "$POD_A" curl -fsS -m 5 http://10.96.0.10/ 2>&1 || true)"
sleep 1.5
in_pod "$POD_A" "$bin/meshctl" status "${NATS_A[@]}"

step "What the apps saw (their client is the inbound sidecar on loopback)"
grep -hE '"GET' "$work/app.log" "$work/app2.log" || true

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
