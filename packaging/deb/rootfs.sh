# Sourced by test.sh and lintian.sh: a throwaway Debian root from a cached debootstrap, and
# the mounts a chroot into it needs. Expects $target_dir (bench/target-dir.sh) and die().
#
# The cache is a tarball of a fresh `debootstrap --variant=minbase` under the target dir, with
# a key file naming what went into it (suite, mirror, extra packages): a different key builds
# it again, so the cache never serves a root without a package the test now needs.

rootfs_suite=${DEB_SUITE:-bookworm}
rootfs_mirror=${DEB_MIRROR:-http://deb.debian.org/debian}
rootfs_cache_dir=${DEB_CACHE:-$target_dir/deb}

# rootfs_prepare DIR NAME PKG,PKG,... [APT-PKG...]: DIR becomes a fresh root with those
# packages (the APT-PKGs installed by apt-get in the root after debootstrap: debootstrap's own
# resolver cannot configure some packages, lintian's Perl stack among them); the cache is
# $rootfs_cache_dir/NAME.tar. Sets rootfs_source to "cache" or "debootstrap".
rootfs_prepare() {
  local dir=$1 name=$2 include=$3
  shift 3
  local apt_pkgs=("$@")
  local cache=$rootfs_cache_dir/$name.tar
  local key="suite=$rootfs_suite variant=minbase mirror=$rootfs_mirror include=$include apt=${apt_pkgs[*]}"
  mkdir -p "$rootfs_cache_dir" "$dir"
  # Two runs at once would both build, and one could read the other's half-written tarball.
  exec {rootfs_lock}>"$cache.lock"
  flock "$rootfs_lock"
  if [[ -f $cache && -f $cache.key && $(<"$cache.key") == "$key" ]]; then
    tar -xf "$cache" -C "$dir" --numeric-owner -p || die "cannot unpack $cache (delete it to rebuild)"
    rootfs_source=cache
  else
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    echo "rootfs: debootstrap $rootfs_suite (minbase + $include) from $rootfs_mirror into the cache $cache"
    if ! debootstrap --variant=minbase --include="$include" "$rootfs_suite" "$dir" "$rootfs_mirror" \
      >"$dir.debootstrap.log" 2>&1; then
      tail -n 30 "$dir.debootstrap.log" >&2
      die "debootstrap failed (log above)"
    fi
    rm -f "$dir.debootstrap.log"
    if ((${#apt_pkgs[@]})); then
      # In a mount namespace of its own, so that /proc goes away with it.
      if ! unshare --mount --propagation private -- sh -c 'mount -t proc proc "$1/proc" && shift &&
        chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
          sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $*"' \
        "$dir" "$dir" "${apt_pkgs[@]}" >"$dir.apt.log" 2>&1; then
        tail -n 30 "$dir.apt.log" >&2
        die "apt-get install ${apt_pkgs[*]} in the root failed (log above)"
      fi
      rm -f "$dir.apt.log"
      rm -rf "$dir/var/lib/apt/lists/"*
    fi
    # The downloaded .debs are 2/3 of the root and are never used again.
    find "$dir/var/cache/apt/archives" -name '*.deb' -delete
    tar -cf "$cache.tmp" -C "$dir" --numeric-owner . || die "cannot write $cache"
    mv -f "$cache.tmp" "$cache"
    echo "$key" >"$cache.key"
    rootfs_source=debootstrap
  fi
  flock -u "$rootfs_lock"
  exec {rootfs_lock}>&-
}

# The mounts made by rootfs_mount, innermost last, for rootfs_umount.
rootfs_mounts=()

# rootfs_mount DIR: /proc, /sys (with the cgroup tree under it: the proxy reads its CPU
# quota there) and /dev for a chroot into DIR. Call it in a private mount namespace
# (unshare --mount --propagation private): the mounts never reach the host's, and vanish
# with the namespace even if the caller is killed before rootfs_umount.
rootfs_mount() {
  local dir=$1
  mount -t proc proc "$dir/proc" && rootfs_mounts+=("$dir/proc") || die "cannot mount $dir/proc"
  mount --rbind /sys "$dir/sys" && rootfs_mounts+=("$dir/sys") || die "cannot bind /sys"
  mount --make-rslave "$dir/sys"
  # /dev non-recursively: /dev/null, /dev/urandom and the like, not the host's /dev/pts.
  mount --bind /dev "$dir/dev" && rootfs_mounts+=("$dir/dev") || die "cannot bind /dev"
}

# rootfs_umount: undoes rootfs_mount, and says so if a mount stays (the caller must then not
# delete the tree: under a bind of /dev that would delete the host's device nodes).
rootfs_umount() {
  local i rc=0
  for ((i = ${#rootfs_mounts[@]} - 1; i >= 0; i--)); do
    umount -R "${rootfs_mounts[i]}" 2>/dev/null || umount -R -l "${rootfs_mounts[i]}" || rc=1
  done
  rootfs_mounts=()
  return $rc
}

# rootfs_remove DIR: deletes a root once nothing is mounted under it; --one-file-system as a
# second guard against deleting through a mount.
rootfs_remove() {
  local dir=$1
  [[ -d $dir ]] || return 0
  if findmnt -rn -o TARGET | grep -q "^$dir/"; then
    echo "rootfs: still mounted under $dir, not deleting it:" >&2
    findmnt -rn -o TARGET | grep "^$dir/" >&2
    return 1
  fi
  rm -rf --one-file-system "$dir"
}
