# Sourced by build.sh and pod-test.sh: the image names, the version, and a self-contained
# podman/buildah environment (config, storage, network configs, locks, events, temp files all
# under one scratch directory), so that nothing touches /etc/containers, /var/lib/containers
# or another podman user's state on the machine.

img_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
img_root=$(cd "$img_here/../.." && pwd)

die() { echo "error: $*" >&2; exit 1; }

# shellcheck source=../workspace.sh
source "$img_root/packaging/workspace.sh"
# The workspace version: the image tag.
RINGMESH_VERSION=$(workspace_field version) || die "no [workspace.package] version in $img_root/Cargo.toml"
PROXY_IMAGE=localhost/ringmesh/proxy:$RINGMESH_VERSION
INIT_IMAGE=localhost/ringmesh/init:$RINGMESH_VERSION
# Test-only images: an app (python3 http.server and curl) and the pods' infra ("pause")
# container. podman would otherwise build its pause image from catatonit, which is not
# installed here, or pull one, which must not happen.
APP_IMAGE=localhost/ringmesh/test-app:$RINGMESH_VERSION
PAUSE_IMAGE=localhost/ringmesh/test-pause:$RINGMESH_VERSION

# bin_dir / out_dir: BIN and OUT, or defaults under cargo's target directory. Asking cargo
# (bench/target-dir.sh runs `cargo metadata`, which builds nothing) only when one is unset.
resolve_dirs() {
  if [[ -z ${BIN:-} || -z ${OUT:-} ]]; then
    # shellcheck source=../../bench/target-dir.sh
    source "$img_root/bench/target-dir.sh"
  fi
  bin_dir=${BIN:-$target_dir/release}
  out_dir=${OUT:-$target_dir/image}
}

# ctr_env DIR: points podman and buildah at a scratch environment under DIR (created if
# missing) and exports it, so child scripts (build.sh called by pod-test.sh) share it.
# Settings this machine needs (measured): runc (crun refuses hybrid cgroups), cgroupfs (no
# systemd), file events, ulimits within the hard limits root has here; file locks (the
# default SHM locks are one machine-wide segment shared with every other podman user);
# CNI (no netavark here) with its network configs under DIR, not /etc/cni/net.d.
ctr_env() {
  local d=$1
  mkdir -p "$d"/{storage,run,tmp,libpod,cni,events}
  cat >"$d/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
network_config_dir = "$d/cni"
cni_plugin_dirs = ["/usr/lib/cni"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/events/events.log"
tmp_dir = "$d/libpod"
lock_type = "file"
image_copy_tmp_dir = "$d/tmp"
infra_image = "$PAUSE_IMAGE"
EOF
  cat >"$d/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$d/storage"
runroot = "$d/run"
EOF
  # No search registries: a short name can never resolve to a registry, and every image
  # used here is localhost/... and built locally.
  printf 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n' >"$d/registries.conf"
  export CONTAINERS_CONF=$d/containers.conf
  export CONTAINERS_STORAGE_CONF=$d/storage.conf
  export CONTAINERS_REGISTRIES_CONF=$d/registries.conf
  export TMPDIR=$d/tmp
  export RINGMESH_CTR_ENV=$d
}

# ctr_env_purge DIR: unmounts whatever storage left mounted under DIR and removes it.
ctr_env_purge() {
  local d=$1 m
  [[ -d $d ]] || return 0
  # buildah/podman normally unmount their overlay layers; a crash can leave some behind,
  # and rm -rf would then fail (busy) or reach into a lower layer.
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v p="$d/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)
  rm -rf "$d"
}
