#!/usr/bin/env bash
# Runs Debian's lintian (bookworm's) on the ringmesh .deb, in a throwaway root with lintian in
# it (cached like test.sh's, under the target dir), so nothing is installed on this machine.
# Fails on lintian errors and warnings; prints the informational tags too.
# The .deb is $DEB, else $OUT/ringmesh_<version>_<arch>.deb (packaging/deb/build.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
die() { echo "deb/lintian.sh: FAIL: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mounts)"
# A private mount namespace: the chroot's mounts never reach the host (see test.sh).
if [[ ${RINGMESH_DEB_LINTIAN_UNSHARED:-} != 1 ]]; then
  RINGMESH_DEB_LINTIAN_UNSHARED=1 exec unshare --mount --propagation private -- "$0" "$@"
fi

# shellcheck source=../../bench/target-dir.sh
source "$root/bench/target-dir.sh"
# shellcheck source=rootfs.sh
source "$here/rootfs.sh"
# shellcheck source=../workspace.sh
source "$root/packaging/workspace.sh"
version=$(workspace_field version)
deb=${DEB:-${OUT:-$target_dir/deb}/ringmesh_${version}_$(dpkg --print-architecture).deb}
[[ -f $deb ]] || die "$deb is missing: run packaging/deb/build.sh first"

scratch=$(mktemp -d /tmp/ringmesh-lintian.XXXXXX)
chr=$scratch/root
cleanup() {
  local rc=$?
  rootfs_umount || rc=1
  rootfs_remove "$chr" || rc=1
  [[ -d $chr ]] || rm -rf --one-file-system "$scratch"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rootfs_prepare "$chr" lintian-rootfs ca-certificates lintian
rootfs_mount "$chr"
cp "$deb" "$chr/root/"
# --fail-on error,warning: what lintian calls a policy violation or a likely bug fails this;
# info and pedantic tags are shown for a person to judge.
if chroot "$chr" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 HOME=/root \
  lintian --fail-on error,warning --display-info --pedantic --info "/root/$(basename "$deb")"; then
  echo "deb/lintian.sh: $(basename "$deb"): no lintian errors or warnings"
else
  die "lintian found errors or warnings in $(basename "$deb") (above)"
fi
