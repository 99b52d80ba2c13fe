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
  curl         # the demo's client
  python3      # the demo's app server
  tcpdump      # packet captures in end-to-end tests
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
