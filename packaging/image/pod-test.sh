#!/usr/bin/env bash
# Two real pods with podman, from the images build.sh makes, as Kubernetes would run an
# injected pod (meshctl inject), once per seccomp profile:
#
#   pod "server" (10.201.0.10): init mesh-redirect (NET_ADMIN only), the sidecar, python3's
#                               http.server on :8080 as uid 1000; inbound strict, only the
#                               client's identity allowed
#   pod "client" (10.201.0.11): init mesh-redirect, the sidecar, an app container whose plain
#                               curl is the client
#
# Each sidecar: its own uid (2101 server, 2102 client), every capability dropped, read-only
# root filesystem, no-new-privileges, the SPIFFE Workload API socket of `meshctl identity
# serve` (on the host, naming callers by uid) mounted at /run/spire/sockets. The proxy's own
# traffic is exempt from interception by uid (mesh-redirect --proxy-uid --no-mark; the
# config's bypass_mark: 0), since without CAP_NET_ADMIN it cannot set a socket mark.
#
# Variants: --seccomp packaging/seccomp/ringmesh.json (the runtime's default plus io_uring:
# the proxy must run on io_uring), then the runtime's stock default (io_uring denied: it
# must fall back to epoll and say so in ringmesh_driver_fallback). In both, curl reaches
# the server over mTLS (both sidecars' metrics prove it) and a plaintext connection to the
# strict server is refused before the app sees it.
#
# Everything (containers, pods, the network, images, podman's whole store, the identity
# server) is removed afterwards, pass or fail; the host's firewall rules are compared
# before and after. Run as root; traffic stays on the podman network (--internal).
#
#   pod-test.sh [--variant ringmesh|default]...   (default: both)
# Env: BIN (release binaries), OUT (image archives), KEEP_LOGS=DIR (copy logs there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

variants=()
while (($#)); do
  case $1 in
    --variant) variants+=("${2:?--variant needs ringmesh or default}"); shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
  esac
done
((${#variants[@]})) || variants=(ringmesh default)
for v in "${variants[@]}"; do [[ $v == ringmesh || $v == default ]] || die "unknown variant $v"; done

fail() { echo "pod-test.sh: FAIL: $*" >&2; exit 1; }
t0=$(date +%s%N)
step() { printf '[%5.1fs] %s\n' "$(($(date +%s%N) - t0))e-9" "$*"; }

[[ $(id -u) == 0 ]] || fail "run as root (rootful podman with a scratch store)"
for t in podman buildah curl iptables-save nft; do
  command -v "$t" >/dev/null || fail "$t is not installed (./.ci/deps.sh installs it)"
done
resolve_dirs
[[ -x $bin_dir/meshctl ]] || fail "$bin_dir/meshctl is missing: build first, or set BIN"
stock_profile=/usr/share/containers/seccomp.json
our_profile=$img_root/packaging/seccomp/ringmesh.json
[[ -f $stock_profile ]] || fail "$stock_profile is missing (golang-github-containers-common)"
python3 "$img_root/packaging/seccomp/generate.py" --check >/dev/null ||
  fail "packaging/seccomp/ringmesh.json is not the stock profile plus io_uring"

NET=ringmesh-podtest
SUBNET=10.201.0.0/24
SERVER_IP=10.201.0.10
CLIENT_IP=10.201.0.11
SERVER_UID=2101
CLIENT_UID=2102
APP_UID=1000
TD=cluster.local
SERVER_ID=spiffe://$TD/ns/podtest/sa/server
CLIENT_ID=spiffe://$TD/ns/podtest/sa/client

work=$(mktemp -d /tmp/ringmesh-podtest.XXXXXX)
chmod 755 "$work"
ident_pid=''
# The host's rules without comments and counters, iptables' and nft's (traffic through a
# chain that was there before changes only its counters; grep finding no line is no error).
fw_snapshot() {
  { iptables-save; ip6tables-save; nft list ruleset; } 2>/dev/null | { grep -v '^#' || true; } |
    sed -E 's/\[[0-9]+:[0-9]+\]//; s/counter packets [0-9]+ bytes [0-9]+/counter/'
}
fw_snapshot >"$work/fw.before"
links_before=$(ip -o link show | awk -F': ' '{print $2}' | sort)

cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    echo "--- logs of every container:" >&2
    for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null); do
      echo "--- $c ($(podman inspect --format '{{.State.Status}} exit {{.State.ExitCode}}' "$c" 2>/dev/null)):" >&2
      podman logs "$c" 2>&1 | tail -n 30 >&2
    done
    [[ -f $work/identity.log ]] && { echo "--- identity server:" >&2; tail -n 20 "$work/identity.log" >&2; }
  fi
  if [[ -n ${KEEP_LOGS:-} ]]; then
    mkdir -p "$KEEP_LOGS"
    for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null); do podman logs "$c" >"$KEEP_LOGS/$c.log" 2>&1; done
    cp "$work"/*.log "$KEEP_LOGS/" 2>/dev/null
  fi
  podman pod rm --all --force --time 0 >/dev/null 2>&1
  podman rm --all --force --time 0 >/dev/null 2>&1
  podman network rm --force "$NET" >/dev/null 2>&1
  podman rmi --all --force >/dev/null 2>&1
  buildah rm --all >/dev/null 2>&1
  if [[ -n $ident_pid ]] && kill -0 "$ident_pid" 2>/dev/null; then kill "$ident_pid"; wait "$ident_pid" 2>/dev/null; fi
  ctr_env_purge "$work/ctr"
  # What CNI's bridge and firewall plugins leave on the host once the network is gone: empty
  # chains they created (CNI-FORWARD, CNI-ADMIN...) and were not there before.
  fw_snapshot >"$work/fw.after"
  if ! diff -q "$work/fw.before" "$work/fw.after" >/dev/null; then
    cni_chain_cleanup
    fw_snapshot >"$work/fw.after"
  fi
  if ! diff -u "$work/fw.before" "$work/fw.after" >&2; then
    echo "pod-test.sh: the host's firewall rules differ from before the test (diff above)" >&2
    rc=1
  fi
  local links_after
  links_after=$(ip -o link show | awk -F': ' '{print $2}' | sort)
  if [[ $links_after != "$links_before" ]]; then
    echo "pod-test.sh: links left on the host: $(comm -13 <(echo "$links_before") <(echo "$links_after") | tr '\n' ' ')" >&2
    rc=1
  fi
  rm -rf "$work"
  ((rc == 0)) && echo "pod-test.sh: PASS (${variants[*]}) in $((($(date +%s%N) - t0) / 1000000)) ms" ||
    echo "pod-test.sh: FAILED (exit $rc)" >&2
  exit "$rc"
}
# cni_chain_cleanup: removes, from the host's iptables, the chains whose names CNI uses that
# were absent before the test, with the jumps to them; never a chain or rule that was there.
cni_chain_cleanup() {
  local cmd table chain
  for cmd in iptables ip6tables; do
    for table in filter nat; do
      while read -r chain; do
        grep -q "^:$chain " "$work/fw.before" && continue
        while "$cmd" -t "$table" -S 2>/dev/null | grep -q -- "-j $chain\$"; do
          "$cmd" -t "$table" -S | grep -- "-j $chain\$" | head -n 1 | sed 's/^-A/-D/' |
            xargs "$cmd" -t "$table" 2>/dev/null || break
        done
        "$cmd" -t "$table" -F "$chain" 2>/dev/null
        "$cmd" -t "$table" -X "$chain" 2>/dev/null
      done < <("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-/ {print $2}')
    done
  done
  # iptables-nft makes its tables (with empty, accepting base chains) on first use; one that
  # was not there before and holds no rule now goes again.
  local family
  for family in ip ip6; do
    for table in filter nat mangle; do
      grep -qx "table $family $table {" "$work/fw.before" && continue
      nft list table "$family" "$table" >/dev/null 2>&1 || continue
      if ! nft list table "$family" "$table" | grep -vqE '^\s*(table .*\{|chain .*\{|type .* policy accept;|\}|)$'; then
        nft delete table "$family" "$table"
      fi
    done
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- images and the network -----------------------------------------------------------------
ctr_env "$work/ctr"
step "building the images (build.sh --test-images)"
"$here/build.sh" --test-images | sed 's/^/    /'
for image in "$PROXY_IMAGE" "$INIT_IMAGE"; do
  # No shell and no package manager in either image; the proxy's executables are its own.
  mnt=$(podman image mount "$image") || fail "cannot mount $image"
  for f in bin/sh bin/bash bin/dash bin/busybox bin/apt bin/dpkg; do
    [[ ! -e $mnt/usr/$f ]] || fail "$image contains /usr/$f"
  done
  [[ -x $mnt/usr/bin/$([[ $image == "$PROXY_IMAGE" ]] && echo uring-proxy || echo mesh-redirect) ]] ||
    fail "$image lacks its binary"
  if [[ $image == "$PROXY_IMAGE" ]]; then
    exes=$(cd "$mnt" && find . -type f -perm -u+x ! -name '*.so*' | sort | tr '\n' ' ')
    [[ $exes == "./usr/bin/meshctl ./usr/bin/uring-proxy " ]] ||
      fail "$image has executables besides uring-proxy and meshctl: $exes"
  fi
  podman image unmount "$image" >/dev/null
done
[[ $(podman image inspect --format '{{.Config.User}}' "$PROXY_IMAGE") == 1337:1337 ]] ||
  fail "$PROXY_IMAGE does not run as 1337:1337"
for key in version revision source; do
  v=$(podman image inspect --format "{{index .Annotations \"org.opencontainers.image.$key\"}}" "$PROXY_IMAGE")
  [[ -n $v ]] || fail "$PROXY_IMAGE has no org.opencontainers.image.$key annotation"
done
podman network create --internal --subnet "$SUBNET" "$NET" >/dev/null
step "network $NET ($SUBNET, internal: no route off it)"

# --- identities -------------------------------------------------------------------------------
"$bin_dir/meshctl" identity ca --trust-domain "$TD" --cert "$work/ca.pem" --key "$work/ca.key"
mkdir -m 0755 "$work/sockets"
"$bin_dir/meshctl" identity serve --socket "$work/sockets/agent.sock" --trust-domain "$TD" --ttl 1h \
  --ca-cert "$work/ca.pem" --ca-key "$work/ca.key" \
  --map "$SERVER_UID=$SERVER_ID" --map "$CLIENT_UID=$CLIENT_ID" >"$work/identity.log" 2>&1 &
ident_pid=$!
for _ in $(seq 100); do [[ -S $work/sockets/agent.sock ]] && break; sleep 0.05; done
[[ -S $work/sockets/agent.sock ]] || fail "meshctl identity serve never bound its socket"
step "identity server: uid $SERVER_UID -> $SERVER_ID, uid $CLIENT_UID -> $CLIENT_ID"

# --- configs and content ----------------------------------------------------------------------
mkdir -m 0755 "$work/server-cfg" "$work/client-cfg" "$work/www"
cat >"$work/server-cfg/config.yaml" <<YAML
# The server pod's sidecar: no socket mark (no CAP_NET_ADMIN; exempt by uid instead), SVID
# from the Workload API, inbound mTLS only, and only from the client.
bypass_mark: 0
identity: { source: workload_api, socket: /run/spire/sockets/agent.sock }
inbound: { mode: strict }
access:
  default: deny
  rules:
    - destination: { port: 8080 }
      sources: ["$CLIENT_ID"]
YAML
cat >"$work/client-cfg/config.yaml" <<YAML
# The client pod's sidecar: the server pod's port 8080 is a meshed endpoint whose proxy
# must prove it is $SERVER_ID.
bypass_mark: 0
identity: { source: workload_api, socket: /run/spire/sockets/agent.sock }
services:
  - name: hello
    addrs: ["10.96.0.10:80"]
    endpoints:
      - { addr: "$SERVER_IP:8080", identity: "$SERVER_ID" }
YAML
for side in server client; do
  "$bin_dir/uring-proxy" --check-config --config "$work/$side-cfg/config.yaml" >/dev/null ||
    fail "the $side sidecar's config does not validate"
done
chmod 0644 "$work"/*-cfg/config.yaml
echo "hello from the server pod" >"$work/www/index.html"
chmod 0644 "$work/www/index.html"

# --- helpers ----------------------------------------------------------------------------------
# metrics POD: its sidecar's /metrics, fetched from the app container (its network namespace
# is the pod's, so 127.0.0.1:15000 is the sidecar's admin port).
metrics() { podman exec "$1-app" curl -sS --max-time 2 http://127.0.0.1:15000/metrics; }
# metric POD PATTERN: the sum of the samples whose line starts with PATTERN (a prefix such as
# 'ringmesh_tls_handshakes_total{' or a full label set).
metric() { metrics "$1" | awk -v m="$2" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }
# has_sample POD NAME LABEL...: some sample of NAME has every LABEL (k="v") and a value > 0.
has_sample() {
  local pod=$1 name=$2
  shift 2
  metrics "$pod" | python3 -c '
import re, sys
name, want = sys.argv[1], sys.argv[2:]
for line in sys.stdin:
    m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line.strip())
    if m and m.group(1) == name and float(m.group(3)) > 0 and all(w in m.group(2).split(",") for w in want):
        sys.exit(0)
sys.exit(1)' "$name" "$@"
}
# wait_until SECONDS DESCRIPTION COMMAND...
wait_until() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s%N) + secs * 1000000000))
  until "$@" >/dev/null 2>&1; do
    (($(date +%s%N) < deadline)) || fail "no $what within ${secs}s"
    sleep 0.2
  done
}

# pod_up NAME IP UID SECCOMP APP-UID [APP-COMMAND...]: a pod as meshctl inject makes one: the
# init container, the sidecar, the app.
pod_up() {
  local name=$1 ip=$2 uid=$3 seccomp=$4 app_uid=$5
  shift 5
  podman pod create --name "$name" --network "$NET" --ip "$ip" --hostname "$name" >/dev/null
  # Init: interception for this pod, NET_ADMIN only (no NET_RAW: no UDP here), as the
  # injected init container. It exempts the sidecar by uid.
  podman create --pod "$name" --name "$name-init" --init-ctr always \
    --cap-drop ALL --cap-add NET_ADMIN --security-opt no-new-privileges \
    "$INIT_IMAGE" install --backend nftables --proxy-uid "$uid" --no-mark >/dev/null
  # The sidecar: its own uid, nothing added, read-only (no tmpfs either: it writes nothing).
  podman create --pod "$name" --name "$name-proxy" --user "$uid:$uid" \
    --cap-drop ALL --read-only --read-only-tmpfs=false --security-opt no-new-privileges \
    --security-opt "seccomp=$seccomp" \
    -v "$work/$name-cfg:/etc/ringmesh:ro" -v "$work/sockets:/run/spire/sockets" \
    "$PROXY_IMAGE" --config /etc/ringmesh/config.yaml --workload "podtest/$name" >/dev/null
  podman create --pod "$name" --name "$name-app" --user "$app_uid:$app_uid" --cap-drop ALL --read-only \
    --security-opt no-new-privileges -v "$work/www:/srv/www:ro" "$APP_IMAGE" "$@" >/dev/null
  podman pod start "$name" >/dev/null
}

# --- one variant ------------------------------------------------------------------------------
run_variant() {
  local variant=$1 seccomp want_driver
  case $variant in
    ringmesh) seccomp=$our_profile want_driver=io_uring ;;
    default) seccomp=$stock_profile want_driver=epoll ;;
  esac
  step "variant $variant: sidecars under $(basename "$seccomp"), expecting the $want_driver driver"
  pod_up server "$SERVER_IP" "$SERVER_UID" "$seccomp" "$APP_UID" \
    /usr/bin/python3 -u -m http.server 8080 --bind 0.0.0.0 --directory /srv/www
  pod_up client "$CLIENT_IP" "$CLIENT_UID" "$seccomp" "$APP_UID"
  local pod
  for pod in server client; do
    [[ $(podman inspect --format '{{.State.ExitCode}} {{.State.Status}}' "$pod-init") == "0 exited" ]] ||
      fail "$pod-init: $(podman inspect --format '{{.State.Status}} exit {{.State.ExitCode}}' "$pod-init")"
    wait_until 20 "$pod sidecar /ready" podman exec "$pod-app" curl -fsS --max-time 1 -o /dev/null http://127.0.0.1:15000/ready
    # The sidecar process as the kernel sees it: its uid, no capability at all, no new
    # privileges, a seccomp filter, and a read-only root.
    local pid st
    pid=$(podman inspect --format '{{.State.Pid}}' "$pod-proxy")
    st=/proc/$pid/status
    [[ $(<"/proc/$pid/comm") == uring-proxy ]] || fail "$pod-proxy's PID $pid is $(<"/proc/$pid/comm")"
    local want_uid=$SERVER_UID
    [[ $pod == client ]] && want_uid=$CLIENT_UID
    read -r _ ruid euid _ < <(grep '^Uid:' "$st")
    [[ "$ruid $euid" == "$want_uid $want_uid" ]] || fail "$pod-proxy runs as uid $ruid/$euid, not $want_uid"
    for c in CapPrm CapEff CapBnd CapAmb; do
      grep -q "^$c:[[:space:]]*0000000000000000$" "$st" || fail "$pod-proxy: $(grep "^$c:" "$st")"
    done
    grep -q '^NoNewPrivs:[[:space:]]*1$' "$st" || fail "$pod-proxy may gain privileges"
    grep -q '^Seccomp:[[:space:]]*2$' "$st" || fail "$pod-proxy runs without a seccomp filter"
    [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$pod-proxy") == true ]] ||
      fail "$pod-proxy's root filesystem is writable"
    has_sample "$pod" ringmesh_driver "driver=\"$want_driver\"" || fail "$pod-proxy is not on $want_driver: $(metrics "$pod" | grep '^ringmesh_driver')"
    if [[ $variant == default ]]; then
      has_sample "$pod" ringmesh_driver_fallback || fail "$pod-proxy fell back without ringmesh_driver_fallback"
    fi
    has_sample "$pod" ringmesh_identity_valid || fail "$pod-proxy has no valid SVID"
  done
  step "  both pods up: init exited 0; sidecars ready as uid $SERVER_UID/$CLIENT_UID, no capabilities, NoNewPrivs, seccomp, read-only root, on $want_driver"
  metrics server | grep '^ringmesh_driver' | sed 's/^/    server: /'

  # Plain curl in the client pod: intercepted, mTLS between the sidecars, the app answers.
  local hs_c hs_s body
  hs_c=$(metric client 'ringmesh_tls_handshakes_total{')
  hs_s=$(metric server 'ringmesh_tls_handshakes_total{')
  body=$(podman exec client-app curl -fsS --max-time 5 "http://$SERVER_IP:8080/index.html") ||
    fail "curl from the client pod to $SERVER_IP:8080 failed"
  [[ $body == "hello from the server pod" ]] || fail "unexpected body: $body"
  has_sample client ringmesh_connections_security_total 'direction="outbound"' 'security="mtls"' ||
    fail "the client sidecar counted no outbound mTLS connection: $(metrics client | grep -E '^ringmesh_(connections_security|tls_handshakes)')"
  has_sample server ringmesh_connections_security_total 'direction="inbound"' 'security="mtls"' ||
    fail "the server sidecar counted no inbound mTLS connection: $(metrics server | grep -E '^ringmesh_(connections_security|tls_handshakes)')"
  (($(metric client 'ringmesh_tls_handshakes_total{') > hs_c)) || fail "no TLS handshake in the client sidecar"
  (($(metric server 'ringmesh_tls_handshakes_total{') > hs_s)) || fail "no TLS handshake in the server sidecar"
  grep -q "\"GET /index.html HTTP/1.1\" 200" <(podman logs server-app 2>&1) || fail "the server app logged no GET"
  step "  curl client -> $SERVER_IP:8080 over mTLS: \"$body\""
  metrics client | grep -E '^ringmesh_(connections_security_total|tls_handshakes_total)\{[^}]*outbound' | sed 's/^/    client: /'
  metrics server | grep -E '^ringmesh_(connections_security_total|tls_handshakes_total)\{[^}]*inbound' | sed 's/^/    server: /'

  # Plaintext to the strict server, from a process the client pod's interception exempts (it
  # runs as the client sidecar's uid): the server sidecar refuses it, the app never sees it.
  local gets refused
  gets=$(podman logs server-app 2>&1 | grep -c '"GET ' || true)
  refused=$(metric server 'ringmesh_connections_refused_total{')
  if podman exec --user "$CLIENT_UID" client-app curl -fsS --max-time 5 -o /dev/null "http://$SERVER_IP:8080/index.html" 2>/dev/null; then
    fail "a plaintext request to the strict server succeeded"
  fi
  refusal_counted() { (($(metric server 'ringmesh_connections_refused_total{') > refused)); }
  wait_until 5 "refusal counted by the server sidecar" refusal_counted
  [[ $(podman logs server-app 2>&1 | grep -c '"GET ' || true) == "$gets" ]] || fail "the plaintext request reached the app"
  step "  plaintext to the strict server: refused ($(metrics server | grep '^ringmesh_connections_refused_total{' | grep -v ' 0$' | tr '\n' ' '))"

  # The sidecars drain on SIGTERM (podman's stop signal for them) and exit 0.
  podman stop --time 10 server-proxy client-proxy >/dev/null
  for pod in server client; do
    [[ $(podman inspect --format '{{.State.ExitCode}}' "$pod-proxy") == 0 ]] ||
      fail "$pod-proxy exited $(podman inspect --format '{{.State.ExitCode}}' "$pod-proxy") on SIGTERM"
  done
  step "  sidecars stopped: exit 0 after SIGTERM"
  podman pod rm --force --time 5 server client >/dev/null
  [[ -z $(podman ps -a --format '{{.Names}}') ]] || fail "containers left after pod rm: $(podman ps -a --format '{{.Names}}')"
}

for v in "${variants[@]}"; do run_variant "$v"; done
podman network rm "$NET" >/dev/null
podman rmi --all --force >/dev/null
[[ -z $(podman images -q) ]] || fail "images left: $(podman images)"
