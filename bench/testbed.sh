# shellcheck shell=bash
# The two-pod network-namespace testbed, for the demo and for perf runs: "pod-a" (client)
# and "pod-b" (server) joined by a veth pair, IPv4 10.200.99.0/24 and IPv6 fd00:200:99::/64,
# each with a default route to the other. Source it, then call testbed_up; testbed_down
# removes everything it made (set it as an EXIT trap).

TB_PREFIX=${TB_PREFIX:-rmdemo}
POD_A=${TB_PREFIX}-a
POD_B=${TB_PREFIX}-b
POD_A_IP4=10.200.99.1
POD_B_IP4=10.200.99.2
POD_A_IP6=fd00:200:99::1
POD_B_IP6=fd00:200:99::2
TB_PIDS=()
# Pods with UDP interception (pinned eBPF programs), and the mesh-redirect that put it there:
# testbed_down takes it out before it deletes the namespaces.
TB_UDP_PODS=()
TB_REDIRECT=

tb_need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "the testbed builds network namespaces and netfilter rules: run as root" >&2
    exit 1
  fi
}

# in_pod POD CMD...: runs CMD inside the pod's network namespace.
in_pod() {
  local pod=$1
  shift
  ip netns exec "$pod" "$@"
}

testbed_up() {
  tb_need_root
  testbed_down 2>/dev/null || true
  ip netns add "$POD_A"
  ip netns add "$POD_B"
  ip link add "${TB_PREFIX}-va" netns "$POD_A" type veth peer name "${TB_PREFIX}-vb" netns "$POD_B"
  # Connection-rate runs leave tens of thousands of TIME_WAIT sockets; without reuse over the
  # veth (the default reuses only on loopback) every connect() ends up scanning a nearly
  # exhausted port range. Same for every contender.
  local pod
  for pod in "$POD_A" "$POD_B"; do
    in_pod "$pod" sysctl -qw net.ipv4.tcp_tw_reuse=1 "net.ipv4.ip_local_port_range=1024 65535"
  done
  in_pod "$POD_A" sh -ec "
    ip link set lo up; ip link set ${TB_PREFIX}-va up
    ip addr add $POD_A_IP4/24 dev ${TB_PREFIX}-va
    ip -6 addr add $POD_A_IP6/64 dev ${TB_PREFIX}-va nodad
    ip route add default via $POD_B_IP4; ip -6 route add default via $POD_B_IP6"
  in_pod "$POD_B" sh -ec "
    ip link set lo up; ip link set ${TB_PREFIX}-vb up
    ip addr add $POD_B_IP4/24 dev ${TB_PREFIX}-vb
    ip -6 addr add $POD_B_IP6/64 dev ${TB_PREFIX}-vb nodad
    ip route add default via $POD_A_IP4; ip -6 route add default via $POD_A_IP6"
}

# ns_pod POD CMD...: like in_pod, with `nsenter --net`, which keeps the host's /sys/fs/bpf
# (where mesh-redirect pins the UDP programs; `ip netns exec` hides it).
ns_pod() {
  local pod=$1
  shift
  nsenter --net="/run/netns/$pod" "$@"
}

# tb_udp_install POD MESH-REDIRECT ARGS...: `mesh-redirect install --udp ARGS` in the pod,
# remembered for testbed_down.
tb_udp_install() {
  local pod=$1
  TB_REDIRECT=$2
  shift 2
  ns_pod "$pod" "$TB_REDIRECT" install --udp "$@"
  TB_UDP_PODS+=("$pod")
}

# tb_spawn POD LOG CMD...: starts CMD in the pod in the background, remembers its PID.
tb_spawn() {
  local pod=$1 log=$2
  shift 2
  ip netns exec "$pod" "$@" >"$log" 2>&1 &
  TB_PIDS+=($!)
}

testbed_down() {
  local pid
  for pid in "${TB_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${TB_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  TB_PIDS=()
  for pod in "${TB_UDP_PODS[@]}"; do
    ns_pod "$pod" "$TB_REDIRECT" uninstall >/dev/null 2>&1 || true
  done
  TB_UDP_PODS=()
  ip netns del "$POD_A" 2>/dev/null || true
  ip netns del "$POD_B" 2>/dev/null || true
}

# tb_identity_server BIN SOCK LOG MESHCTL-ARGS...: starts `meshctl identity serve` on SOCK in
# the root namespace (pods reach a unix socket by path) and waits until it is bound.
tb_identity_server() {
  local bin=$1 sock=$2 log=$3 i
  shift 3
  "$bin/meshctl" identity serve --socket "$sock" "$@" >"$log" 2>&1 &
  TB_PIDS+=($!)
  for i in $(seq 100); do
    [[ -S $sock ]] && return 0
    sleep 0.05
  done
  echo "meshctl never bound $sock; see $log" >&2
  return 1
}

# tb_wait_http POD URL: waits until URL answers 200 inside the pod.
tb_wait_http() {
  local pod=$1 url=$2 i
  for i in $(seq 1 100); do
    if in_pod "$pod" curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $url in $pod" >&2
  return 1
}
