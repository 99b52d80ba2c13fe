#!/usr/bin/env bash
# Checks ringmesh.service with `systemd-analyze verify` (no systemd as PID 1 needed), against
# the binaries just built instead of /usr/bin (nothing is installed on this machine), and
# fails on any line it prints: it exits 0 on warnings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/debug}
for b in uring-proxy mesh-redirect; do
  [[ -x $bin/$b ]] || { echo "$bin/$b is missing: build first (cargo build --workspace --bins)" >&2; exit 1; }
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
sed -e "s|/usr/bin/uring-proxy|$bin/uring-proxy|" -e "s|/usr/bin/mesh-redirect|$bin/mesh-redirect|g" \
  "$here/ringmesh.service" >"$scratch/ringmesh.service"
out=$(systemd-analyze verify "$scratch/ringmesh.service" 2>&1) || { echo "$out" >&2; exit 1; }
if [[ -n $out ]]; then
  echo "systemd-analyze verify printed (warnings count as failures):" >&2
  echo "$out" >&2
  exit 1
fi
echo "packaging/systemd/ringmesh.service: systemd-analyze verify clean"
