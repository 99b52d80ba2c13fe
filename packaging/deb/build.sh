#!/usr/bin/env bash
# Builds ringmesh_<version>_<arch>.deb with dpkg-deb from the binaries already built (no cargo
# here, and no cargo-deb: it would need a `cargo install`), into $OUT (default
# $target_dir/deb). The binaries come from $BIN (default $target_dir/release).
#
# Contents: the three binaries in /usr/bin (stripped, as dh_strip does: the release profile's
# line tables are 3/4 of their size; the unstripped ones stay in $BIN for symbolizing a
# backtrace, matched by build id), the unit from packaging/systemd, a default config as a
# conffile, man pages made from each binary's --help, and the copyright and changelog lintian
# expects. The maintainer scripts (postinst, prerm, postrm) are next to this file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../../bench/target-dir.sh
source "$root/bench/target-dir.sh"
bin=${BIN:-$target_dir/release}
out=${OUT:-$target_dir/deb}
maintainer=${DEB_MAINTAINER:-ringmesh maintainers <ringmesh@example.invalid>}

die() { echo "deb/build.sh: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps strip objcopy gzip python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian packages: dpkg-dev, binutils, gzip, python3)"
done
binaries=(uring-proxy mesh-redirect meshctl)
for b in "${binaries[@]}"; do
  [[ -x $bin/$b ]] || die "$bin/$b is missing: build first (cargo build --release --workspace --bins)"
done

# Version, licence and homepage come from the workspace manifest, the one place they are kept.
# shellcheck source=../workspace.sh
source "$root/packaging/workspace.sh"
version=$(workspace_field version)
license=$(workspace_field license)
homepage=$(workspace_field repository)
[[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "workspace version '$version' is not a Debian upstream version"
# No Debian revision: upstream builds this package itself, so it is a native package (and its
# changelog is changelog.gz, not changelog.Debian.gz, as lintian wants for native packages).
arch=$(dpkg --print-architecture)
# The binaries must be for the architecture the package claims (cross builds are not handled).
case $arch in
  amd64) machine='Advanced Micro Devices X86-64' ;;
  arm64) machine='AArch64' ;;
  *) die "architecture $arch is not handled" ;;
esac
for b in "${binaries[@]}"; do
  readelf -h "$bin/$b" | grep -q "Machine: *$machine" || die "$bin/$b is not a $arch binary"
  # A binary from another checkout or version would be packaged under the wrong version.
  v=$("$bin/$b" --version) || die "$bin/$b --version failed"
  [[ $v == "$b $version" ]] || die "$bin/$b reports '$v', the workspace is $version: rebuild"
done

# Timestamps (man page dates, changelog, archive members) from the last commit, so the same
# commit gives the same .deb.
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$root" status --porcelain 2>/dev/null) ]]; then commit+="-dirty"; fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
pkg=$scratch/pkg
install -d -m 0755 "$pkg"/DEBIAN "$pkg"/usr/bin "$pkg"/lib/systemd/system "$pkg"/etc/ringmesh \
  "$pkg"/usr/share/man/man1 "$pkg"/usr/share/doc/ringmesh

for b in "${binaries[@]}"; do
  # dh_strip's flags: symbols and debug info out, .comment and .note out (the build id, in
  # .note.gnu.build-id, is kept: strip never removes an allocated note).
  strip --remove-section=.comment --remove-section=.note --strip-unneeded \
    -o "$pkg/usr/bin/$b" "$bin/$b"
  chmod 0755 "$pkg/usr/bin/$b"
  python3 "$here/help2roff.py" "$bin/$b" "$b" "$version" \
    "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" >"$scratch/$b.1"
  gzip -9n <"$scratch/$b.1" >"$pkg/usr/share/man/man1/$b.1.gz"
done

install -m 0644 "$root/packaging/systemd/ringmesh.service" "$pkg/lib/systemd/system/ringmesh.service"

# The default config: the binary's embedded default, so that the file and the binary agree,
# with its leading comment replaced by notes for a host install, and a note on the fields a
# host install ties to the unit.
unit=$root/packaging/systemd/ringmesh.service
unit_mark=$(sed -n 's/^ExecStartPre=.*mesh-redirect install.*--proxy-mark \([0-9]*\).*/\1/p' "$unit")
[[ -n $unit_mark ]] || die "no --proxy-mark N in the ExecStartPre= of $unit"
"$bin/uring-proxy" --print-default-config >"$scratch/default.yaml"
grep -qx "bypass_mark: $unit_mark" "$scratch/default.yaml" ||
  die "the default config's bypass_mark is not the unit's --proxy-mark $unit_mark"
config=$pkg/etc/ringmesh/config.yaml
{
  cat <<EOF
# /etc/ringmesh/config.yaml: the config of ringmesh.service (uring-proxy --config), as
# installed by the ringmesh package. A conffile: your changes survive upgrades.
#
# What follows is uring-proxy's embedded default (uring-proxy --print-default-config): the
# proxy for this host's own traffic, which the unit's ExecStartPre (mesh-redirect install)
# sends to it; destinations that are not in the mesh are forwarded unchanged (egress: allow),
# and there are no services yet. Every field is optional; the project's README (the
# package's Homepage) lists them all.
#
#   uring-proxy --check-config --config /etc/ringmesh/config.yaml   # validate an edit
#   systemctl reload ringmesh     # apply it without dropping a connection (SIGHUP)
#   systemctl restart ringmesh    # needed for the fields marked restart-only
#
# The service runs as the system user ringmesh with CAP_NET_ADMIN only; it can write
# /var/lib/ringmesh (e.g. control_plane.nats.persist) and /run/ringmesh, nothing else.

EOF
  # Drop the default's own leading comment block (it describes a sidecar), keep the rest.
  sed -e '1,/^[^#]/{/^#/d}' "$scratch/default.yaml" |
    awk -v mark="$unit_mark" '
      /^listeners:/ { print "# restart-only. mesh-redirect (the unit'\''s ExecStartPre) redirects to 15001/15006 by"
                      print "# default: change its --outbound-port/--inbound-port with these." }
      /^admin:/     { print "# restart-only. /ready, /live, /metrics, /config, /identity: keep it on loopback." }
      /^bypass_mark:/ { print "# restart-only. Keep it at " mark ": the unit exempts the proxy'\''s own upstream"
                        print "# connections from interception by this socket mark (mesh-redirect install"
                        print "# --proxy-mark " mark ") and grants CAP_NET_ADMIN only to set it. A different mark here"
                        print "# without the same change in the unit loops the proxy'\''s traffic back into itself." }
      /^identity:/  { print "# restart-only. none: no mTLS. With SPIRE on this host:"
                      print "#   identity: { source: workload_api, socket: /run/spire/sockets/agent.sock }" }
      { print }'
} >"$config"
chmod 0644 "$config"
# The notes must not have changed what the file means: the same config as the default.
"$bin/uring-proxy" --check-config --config "$config" >/dev/null ||
  die "the packaged config does not validate"
for key in listeners admin bypass_mark identity; do
  grep -q "^$key:" "$config" || die "the default config has no top-level '$key:' any more: update the notes in $0"
done
echo /etc/ringmesh/config.yaml >"$pkg/DEBIAN/conffiles"

cat >"$pkg/usr/share/doc/ringmesh/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ringmesh
Source: $homepage

Files: *
Copyright: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y) The ringmesh authors
License: $license
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this file except in compliance with the License. You may obtain a copy of
 the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations under
 the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can be
 found in "/usr/share/common-licenses/Apache-2.0".
EOF
[[ $license == Apache-2.0 ]] || die "the copyright text above is Apache-2.0's; the workspace says $license"
chmod 0644 "$pkg/usr/share/doc/ringmesh/copyright"

cat >"$scratch/changelog" <<EOF
ringmesh ($version) unstable; urgency=medium

  * Built from commit $commit by packaging/deb/build.sh.

 -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
gzip -9n <"$scratch/changelog" >"$pkg/usr/share/doc/ringmesh/changelog.gz"

install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$pkg/DEBIAN/"
# lintian reads libyaml's version strings in the binaries as an embedded copy of the C
# library: they come from unsafe-libyaml, the Rust translation of libyaml that serde_yaml
# compiles in, as every crate is linked statically; there is no C libyaml to link against.
install -d -m 0755 "$pkg/usr/share/lintian/overrides"
printf '%s\n' "ringmesh: embedded-library libyaml [usr/bin/meshctl]" \
  "ringmesh: embedded-library libyaml [usr/bin/uring-proxy]" >"$pkg/usr/share/lintian/overrides/ringmesh"
chmod 0644 "$pkg/usr/share/lintian/overrides/ringmesh"

# Depends: the shared libraries the binaries link (by dpkg-shlibdeps, from the symbols
# files of the libraries on this machine), adduser for postinst, the backend mesh-redirect
# runs (the unit uses nftables; iptables-restore serves --backend iptables), and procps for
# the unit's ExecReload=/bin/kill (not in a minimal Debian: `systemctl reload` would fail),
# and netbase: without /etc/protocols nft lists "meta l4proto 6" for "tcp", and
# `mesh-redirect verify` reports rules it installed itself as different.
mkdir -p "$scratch/src/debian"
printf 'Source: ringmesh\n\nPackage: ringmesh\nArchitecture: any\n' >"$scratch/src/debian/control"
shlibs=$(cd "$scratch/src" && dpkg-shlibdeps -O "${binaries[@]/#/$pkg/usr/bin/}" 2>"$scratch/shlibdeps.err") ||
  { cat "$scratch/shlibdeps.err" >&2; die "dpkg-shlibdeps failed"; }
shlibs=${shlibs#shlibs:Depends=}
[[ $shlibs == *libc6* ]] || die "dpkg-shlibdeps found no libc6 dependency: '$shlibs'"
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<EOF
Package: ringmesh
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $shlibs, adduser, netbase, nftables | iptables, procps
Section: net
Priority: optional
Homepage: $homepage
Description: service-mesh data plane: transparent TCP/UDP proxy on io_uring
 ringmesh intercepts a host's (or a pod's) TCP and UDP traffic, recovers where
 each connection was going, routes it by the mesh's configuration, with mutual
 TLS between proxies and SPIFFE identities, and reports what it saw.
 .
 This package runs the proxy for the host's own traffic: uring-proxy as the
 systemd service ringmesh.service (user ringmesh, CAP_NET_ADMIN only), with
 mesh-redirect installing the interception before it starts and removing it
 after it stops, and meshctl, the operator tool (identities, configuration
 over NATS, node mode).
EOF

# Reproducible: every mtime the commit's (dpkg-deb keeps them as they are).
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb=$out/ringmesh_${version}_${arch}.deb
# --root-owner-group: root:root inside the archive whoever builds it; -Zxz: Debian's default.
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb.tmp" >/dev/null
mv -f "$deb.tmp" "$deb"
echo "$deb ($(du -h --apparent-size "$deb" | cut -f1), installed $((installed_size / 1024)) MiB)"
