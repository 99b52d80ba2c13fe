#!/usr/bin/env bash
# Every packaging check, as `make test` runs them, on one set of binaries (BIN: default the
# debug ones `make test` has just built; `make package-test` passes the release ones):
#   systemd-analyze verify of the unit; the seccomp profile is the runtime default plus
#   io_uring; every Kubernetes manifest and injected output validates; the images build and
#   run as two podman pods under both seccomp profiles; the .deb builds, installs, runs and
#   purges in a throwaway root, and lintian finds no error or warning in it.
# Artifacts go to TARGET/packaging/<bin dir name>/{image,deb}, so a CI run on debug binaries
# never overwrites the release ones `make image` and `make deb` leave in TARGET/{image,deb}.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../bench/target-dir.sh
source "$root/bench/target-dir.sh"
export BIN=${BIN:-$target_dir/debug}
out=$target_dir/packaging/$(basename "$BIN")
# shellcheck source=workspace.sh
source "$root/packaging/workspace.sh"
version=$(workspace_field version)
run() {
  local t=$EPOCHREALTIME
  echo "== $*"
  "$@"
  printf '== %s: done in %.0f s\n' "$1" "$(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')"
}
cd "$root"
run ./packaging/systemd/verify.sh
run python3 ./packaging/seccomp/generate.py --check
run ./packaging/k8s/validate.sh
OUT=$out/image run ./packaging/image/pod-test.sh
OUT=$out/deb run ./packaging/deb/build.sh
deb=$out/deb/ringmesh_${version}_$(dpkg --print-architecture).deb
DEB=$deb run ./packaging/deb/test.sh
DEB=$deb run ./packaging/deb/lintian.sh
