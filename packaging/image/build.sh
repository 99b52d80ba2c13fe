#!/usr/bin/env bash
# Builds the ringmesh container images with buildah from the release binaries already built,
# FROM scratch: each image holds its binaries, exactly the shared libraries `ldd` says they
# need (and the dynamic loader), and nothing else: no shell, no package manager. Nothing is
# pulled from a registry.
#
#   localhost/ringmesh/proxy:VERSION  uring-proxy (and meshctl), as uid/gid 1337 (ringmesh)
#   localhost/ringmesh/init:VERSION   mesh-redirect with nft and iptables (nft backend), as root
#
# Both are saved as OCI archives in $OUT (default: the target dir's image/). With
# --test-images it also builds the images pod-test.sh needs (an app with python3 and curl,
# and a pause image for the pods' infra containers).
#
# Env: BIN (binaries; default TARGET/release), OUT (archives; default TARGET/image),
# RINGMESH_CTR_ENV (a podman/buildah scratch environment to build into and keep, as
# pod-test.sh passes; otherwise a temporary one is made and removed with its images).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

test_images=0
for a in "$@"; do
  case $a in
    --test-images) test_images=1 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $a (try --help)" ;;
  esac
done

start=$EPOCHREALTIME
resolve_dirs
for b in uring-proxy meshctl mesh-redirect; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing: build first (cargo build --release --workspace --bins), or set BIN"
done
for t in buildah podman ldd tar strip; do
  command -v "$t" >/dev/null || die "$t is not installed (apt-get install buildah podman)"
done
[[ $(id -u) == 0 ]] || die "run as root (rootful buildah/podman with a scratch store)"

work=$(mktemp -d /tmp/ringmesh-image.XXXXXX)
own_env=0
if [[ -z ${RINGMESH_CTR_ENV:-} ]]; then
  own_env=1
  ctr_env "$work/ctr"
fi
cleanup() {
  local rc=$?
  # Working containers left by a failed step, then (if the store is ours) the whole store.
  buildah rm --all >/dev/null 2>&1 || true
  if ((own_env)); then
    podman rmi --all --force >/dev/null 2>&1 || true
    ctr_env_purge "$work/ctr"
  fi
  rm -rf "$work"
  ((rc == 0)) || echo "build.sh failed (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT

revision=$(git -C "$img_root" rev-parse HEAD 2>/dev/null) || die "cannot read the git revision of $img_root"
# Any change against HEAD, untracked files included, makes the revision "-dirty": the
# binaries may have been built from it.
[[ -z $(git -C "$img_root" status --porcelain 2>/dev/null) ]] || revision+=-dirty
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=$(workspace_field repository)

# new_rootfs NAME: an empty root with Debian's merged-/usr layout, so that library paths
# as ldd prints them (/lib/x86_64-linux-gnu/..., /lib64/ld-linux-x86-64.so.2) resolve.
new_rootfs() {
  local r=$work/$1
  mkdir -p "$r"/usr/{bin,sbin,lib,lib64} "$r"/etc
  ln -s usr/bin "$r/bin"
  ln -s usr/sbin "$r/sbin"
  ln -s usr/lib "$r/lib"
  ln -s usr/lib64 "$r/lib64"
  echo "$r"
}

# add_path ROOTFS PATH: copies PATH to the same place in ROOTFS, its directory taken
# through the host's symlinks (/lib -> usr/lib), and when PATH is a symlink, its target
# too (ld-linux-x86-64.so.2 is a chain of two).
add_path() {
  local r=$1 p=$2 dir target
  dir=$(realpath -e "$(dirname "$p")") || die "$p: no such directory"
  p=$dir/$(basename "$p")
  [[ -e $p || -L $p ]] || die "$p: no such file"
  [[ -e $r$p || -L $r$p ]] && return 0
  mkdir -p "$r$dir"
  cp -a "$p" "$r$p"
  if [[ -L $p ]]; then
    target=$(readlink "$p")
    [[ $target == /* ]] || target=$dir/$target
    add_path "$r" "$target"
  fi
}

# add_closure ROOTFS FILE...: each FILE at its own path plus every library ldd lists for it.
# A library ldd cannot find fails the build.
add_closure() {
  local r=$1 f
  shift
  for f in "$@"; do add_path "$r" "$f"; done
  add_libs "$r" "$@"
}

# add_libs ROOTFS FILE...: only the libraries ldd lists for each FILE, the loader included.
add_libs() {
  local r=$1 lib out
  shift
  out=$(ldd "$@" 2>&1) || true
  if grep -q 'not found' <<<"$out"; then
    die "missing libraries: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
  fi
  # "\tname => /path (0x...)" and "\t/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso
  # has no file; "statically linked" lines have no path.
  while read -r lib; do
    add_path "$r" "$lib"
  done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(0x/ {print $1}' <<<"$out" | sort -u)
}

# add_bin ROOTFS SRC DEST [strip]: a binary from SRC installed as DEST, with its ldd closure;
# with "strip", without symbols and debug info (as the .deb's: the unstripped binary in BIN
# symbolizes a backtrace, matched by build id, which strip keeps).
add_bin() {
  local r=$1 src=$2 dest=$3
  mkdir -p "$r$(dirname "$dest")"
  if [[ ${4:-} == strip ]]; then
    strip --remove-section=.comment --remove-section=.note --strip-unneeded -o "$r$dest" "$src"
  else
    cp -L "$src" "$r$dest"
  fi
  chmod 0755 "$r$dest"
  add_libs "$r" "$src"
}

# commit ROOTFS IMAGE TITLE DESCRIPTION CONFIG-ARGS...: one layer (the rootfs as a tar, owned
# by root) FROM scratch, the OCI labels and annotations, committed in OCI format.
commit() {
  local r=$1 image=$2 title=$3 desc=$4 ctr kv
  shift 4
  tar -C "$r" --numeric-owner --owner=0 --group=0 -cf "$r.tar" .
  ctr=$(buildah from --quiet scratch)
  buildah add --quiet "$ctr" "$r.tar" / >/dev/null
  local meta=(
    "org.opencontainers.image.title=$title"
    "org.opencontainers.image.description=$desc"
    "org.opencontainers.image.version=$RINGMESH_VERSION"
    "org.opencontainers.image.revision=$revision"
    "org.opencontainers.image.source=$source_url"
    "org.opencontainers.image.licenses=Apache-2.0"
    "org.opencontainers.image.created=$created"
  )
  local cfg=(--env PATH=/usr/sbin:/usr/bin --workingdir / --os linux --arch amd64)
  for kv in "${meta[@]}"; do cfg+=(--label "$kv" --annotation "$kv"); done
  buildah config "${cfg[@]}" "$@" "$ctr"
  buildah commit --quiet --rm --format oci "$ctr" "$image" >/dev/null
}

# --- proxy: uring-proxy as uid 1337 ------------------------------------------------------
r=$(new_rootfs proxy)
add_bin "$r" "$bin_dir/uring-proxy" /usr/bin/uring-proxy strip
# meshctl: the development identity server (packaging/k8s/control-plane/identity-server.yaml)
# and `meshctl node add` run from this image.
add_bin "$r" "$bin_dir/meshctl" /usr/bin/meshctl strip
# A user and group to run as (the proxy's identity is its uid: interception exempts it, and
# the Workload API picks its SVID by it); root exists only so that tools reading
# /etc/passwd find uid 0.
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nringmesh:x:1337:1337:ringmesh:/nonexistent:/usr/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\nringmesh:x:1337:\n' >"$r/etc/group"
# Mount points for the config and the SPIFFE Workload API socket, so that they exist
# under a read-only root filesystem.
mkdir -p "$r/etc/ringmesh" "$r/run/spire/sockets" "$r/tmp"
chmod 1777 "$r/tmp"
commit "$r" "$PROXY_IMAGE" ringmesh-proxy \
  "ringmesh sidecar proxy (uring-proxy): transparent TCP/UDP proxy with SPIFFE mTLS on io_uring" \
  --user 1337:1337 --entrypoint '["/usr/bin/uring-proxy"]' --cmd '[]' \
  --port 15001/tcp --port 15006/tcp --port 15000/tcp

# --- init: mesh-redirect, nft, iptables (nf_tables backend), as root ---------------------
r=$(new_rootfs init)
add_bin "$r" "$bin_dir/mesh-redirect" /usr/bin/mesh-redirect strip
add_bin "$r" /usr/sbin/nft /usr/sbin/nft
add_bin "$r" /usr/sbin/xtables-nft-multi /usr/sbin/xtables-nft-multi
# xtables-nft-multi picks its personality from argv[0]; these are the names mesh-redirect
# runs (iptables-save/-restore, ip6tables-save/-restore) plus the plain ones for debugging.
for n in iptables ip6tables iptables-save iptables-restore ip6tables-save ip6tables-restore \
  iptables-nft iptables-nft-save iptables-nft-restore ip6tables-nft ip6tables-nft-save ip6tables-nft-restore; do
  ln -s xtables-nft-multi "$r/usr/sbin/$n"
done
# iptables dlopens its match and target extensions (libxt_owner, libxt_REDIRECT, ...).
xt=/usr/lib/x86_64-linux-gnu/xtables
[[ -d $xt ]] || die "$xt is missing (apt-get install iptables)"
add_closure "$r" "$xt"/*.so
# Protocol and service names, which both tools resolve through glibc's files database.
cp /etc/protocols /etc/services "$r/etc/"
[[ -f /etc/ethertypes ]] && cp /etc/ethertypes "$r/etc/"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
mkdir -p "$r/run" "$r/tmp"
chmod 1777 "$r/tmp"
commit "$r" "$INIT_IMAGE" ringmesh-init \
  "ringmesh interception installer (mesh-redirect) with nftables and iptables, for a pod's init container" \
  --user 0:0 --entrypoint '["/usr/bin/mesh-redirect"]' --cmd '["install"]'

if ((test_images)); then
  # --- test-app: python3 (http.server) and curl from Debian, for pod-test.sh -------------
  # Both test images stop on SIGKILL: as PID 1 of a container, sleep and http.server have no
  # handler for SIGTERM, which would only make podman wait its timeout.
  r=$(new_rootfs app)
  py=$(readlink -f /usr/bin/python3)
  [[ $py == /usr/bin/python3.* ]] || die "no Debian python3 in /usr/bin (apt-get install python3)"
  pyver=$(basename "$py")
  add_bin "$r" "$py" "/usr/bin/$pyver"
  ln -s "$pyver" "$r/usr/bin/python3"
  # The standard library without what a web server never imports (tests, GUI, the 2to3
  # tool, pip's bootstrap): a third of the files.
  tar -C / --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
    --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=site-packages \
    --exclude=dist-packages --exclude='config-*' -cf - "usr/lib/$pyver" | tar -C "$r" -xf -
  add_closure "$r" "$r/usr/lib/$pyver"/lib-dynload/*.so
  add_bin "$r" /usr/bin/curl /usr/bin/curl
  add_bin "$r" /usr/bin/sleep /usr/bin/sleep
  mkdir -p "$r/srv/www" "$r/tmp"
  chmod 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\n' >"$r/etc/group"
  commit "$r" "$APP_IMAGE" ringmesh-test-app "python3 and curl, for ringmesh's pod test" \
    --entrypoint '[]' --cmd '["/usr/bin/sleep", "infinity"]' --stop-signal SIGKILL

  # --- test-pause: the pods' infra container (holds the shared namespaces) ---------------
  r=$(new_rootfs pause)
  add_bin "$r" /usr/bin/sleep /usr/bin/sleep
  commit "$r" "$PAUSE_IMAGE" ringmesh-test-pause "pod infra container for ringmesh's pod test" \
    --entrypoint '["/usr/bin/sleep", "infinity"]' --cmd '[]' --stop-signal SIGKILL
fi

# --- archives and sizes -----------------------------------------------------------------
mkdir -p "$out_dir"
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }
printf '%-42s %12s %12s  %s\n' IMAGE UNCOMPRESSED ARCHIVE FILE
for image in "$PROXY_IMAGE" "$INIT_IMAGE"; do
  name=${image#localhost/ringmesh/}
  file=$out_dir/ringmesh-${name%%:*}-$RINGMESH_VERSION.oci.tar
  rm -f "$file"
  podman save --quiet --format oci-archive -o "$file" "$image"
  size=$(podman image inspect --format '{{.Size}}' "$image")
  printf '%-42s %12s %12s  %s\n' "$image" "$(human "$size")" "$(human "$(stat -c %s "$file")")" "$file"
done
if ((test_images)); then
  for image in "$APP_IMAGE" "$PAUSE_IMAGE"; do
    size=$(podman image inspect --format '{{.Size}}' "$image")
    printf '%-42s %12s %12s  %s\n' "$image" "$(human "$size")" - "(test only, not saved)"
  done
fi
printf 'revision %s; built in %s s\n' "$revision" "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')"
