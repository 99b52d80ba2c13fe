#!/usr/bin/env bash
# The ringmesh .deb's install / run / purge cycle, in a throwaway Debian root (never this
# machine's own /etc, /usr, users or dpkg database):
#   1. a fresh bookworm minbase root with the package's Depends (debootstrap, cached under the
#      target dir: only the first run on a machine downloads), and a snapshot of its state;
#   2. dpkg -i: files, conffile registration, the system user, the unit enabled;
#   3. dpkg -i again over itself: a locally modified conffile is kept;
#   4. the service's own command lines, read from the installed unit, run as systemd would
#      (ExecStartPre as root, ExecStart as User= with only the unit's capabilities) in a
#      network namespace of the test's: ready, live, intercepted traffic through the proxy,
#      reload (ExecReload), drain on SIGTERM to exit 0 within TimeoutStopSec, ExecStopPost;
#   5. dpkg --purge, and the state must equal the snapshot: nothing left behind.
# The .deb is $DEB, else $OUT/ringmesh_<version>_<arch>.deb (packaging/deb/build.sh).
# Run as root. The only network traffic is debootstrap's, to the Debian mirror, and the
# proxy's, inside the namespace.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
die() { echo "deb/test.sh: FAIL: $*" >&2; exit 1; }
step() { printf '[%5.1fs] %s\n' "$(($(date +%s%N) - t0))e-9" "$*"; }
t0=$(date +%s%N)

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mounts, a network namespace)"
for tool in unshare nsenter chroot curl ip flock findmnt dpkg-deb python3; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done

# Everything below runs in a private mount namespace of its own: the chroot's mounts and the
# network namespace's bind mount are invisible to the host, and go away with this process
# even if it is killed before its trap runs.
if [[ ${RINGMESH_DEB_TEST_UNSHARED:-} != 1 ]]; then
  RINGMESH_DEB_TEST_UNSHARED=1 exec unshare --mount --propagation private -- "$0" "$@"
fi

# shellcheck source=../../bench/target-dir.sh
source "$root/bench/target-dir.sh"
# shellcheck source=rootfs.sh
source "$here/rootfs.sh"
# shellcheck source=../workspace.sh
source "$root/packaging/workspace.sh"
version=$(workspace_field version)
arch=$(dpkg --print-architecture)
deb=${DEB:-${OUT:-$target_dir/deb}/ringmesh_${version}_${arch}.deb}
[[ -f $deb ]] || die "$deb is missing: run packaging/deb/build.sh first"
deb=$(realpath "$deb")

scratch=$(mktemp -d /tmp/ringmesh-debtest.XXXXXX)
chr=$scratch/root          # the throwaway root
netns=$scratch/netns       # the network namespace, bind-mounted on this file
proxy_pid='' server_pid=''
cleanup() {
  local rc=$?
  # Only processes this script started, by PID.
  for pid in $proxy_pid $server_pid; do
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  if mountpoint -q "$netns" 2>/dev/null; then umount "$netns" || rc=1; fi
  rootfs_umount || rc=1
  rootfs_remove "$chr" || rc=1
  [[ -d $chr ]] || rm -rf --one-file-system "$scratch"
  if ((rc != 0)); then echo "deb/test.sh: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the root -----------------------------------------------------------------------------
# What debootstrap adds to minbase: the package's Depends, the first of each alternative
# (nftables of "nftables | iptables": the unit's backend), without version constraints.
depends=$(dpkg-deb -f "$deb" Depends)
include=$(python3 - "$depends" <<'EOF'
import re, sys
names = [re.sub(r"\s*\(.*?\)", "", dep.split("|")[0]).strip() for dep in sys.argv[1].split(",")]
print(",".join(sorted(n for n in names if n)))
EOF
)
t_root=$(date +%s%N)
rootfs_prepare "$chr" rootfs-cache "$include"
step "root ready from $rootfs_source in $((($(date +%s%N) - t_root) / 1000000)) ms (minbase + $include)"
t_test=$(date +%s%N)
in_root() { chroot "$chr" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
cp "$deb" "$chr/root/ringmesh.deb" # before the snapshot: in both, so not a difference
rootfs_mount "$chr"

# The state: every path with its type, mode, numeric owner and link target, and the content
# of every regular file under /etc (the users and groups among them). Not compared: what dpkg
# and apt keep about themselves (status, available, info, triggers, logs, caches), the
# mounts, and what the account tools keep for themselves: shadow-utils' backups of the
# previous version of passwd, group, shadow and gshadow (rewritten by every user change, by
# any package) and adduser's lock file in /run (a tmpfs: gone at boot).
snapshot() {
  (
    cd "$chr"
    find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev \
      -o -path ./var/lib/dpkg -o -path ./var/log/dpkg.log -o -path ./var/log/apt \
      -o -path ./var/cache/apt -o -path ./var/cache/debconf \
      -o -path ./etc/passwd- -o -path ./etc/group- -o -path ./etc/shadow- -o -path ./etc/gshadow- \
      -o -path ./run/adduser \) -prune \
      -o -printf '%y %m %U:%G %p -> %l\n' | LC_ALL=C sort
    find ./etc -xdev -type f ! -name '*-' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  ) >"$1"
}
snapshot "$scratch/before"
step "snapshot: $(wc -l <"$scratch/before") entries"

# --- 2. install -----------------------------------------------------------------------------
in_root dpkg -i /root/ringmesh.deb </dev/null >"$scratch/dpkg.log" 2>&1 ||
  { cat "$scratch/dpkg.log" >&2; die "dpkg -i failed"; }
status=$(in_root dpkg-query -W -f='${Status} ${Version}' ringmesh)
[[ $status == "install ok installed $version" ]] || die "after dpkg -i: '$status'"
# Every path of the .deb is installed, with the archive's mode and owner root.
while read -r mode owner path; do
  [[ -e $chr/$path || -L $chr/$path ]] || die "$path is not installed"
  got=$(stat -c '%A %U/%G' "$chr/$path")
  # Directories the package shares with others (/etc, /usr/bin...) keep their own mode.
  [[ $mode == d* ]] && continue
  [[ $got == "$mode root/root" ]] || die "$path: $got, the .deb says $mode $owner"
done < <(dpkg-deb --fsys-tarfile "$deb" | tar -tv | awk '{p=$6; sub(/^\./, "", p); print $1, $2, p}')
for b in uring-proxy mesh-redirect meshctl; do
  v=$(in_root "/usr/bin/$b" --version) || die "$b does not run in the root"
  [[ $v == "$b $version" ]] || die "$b --version: $v"
  gzip -t "$chr/usr/share/man/man1/$b.1.gz" || die "$b.1.gz is not gzip"
done
in_root uring-proxy --check-config --config /etc/ringmesh/config.yaml >/dev/null ||
  die "the installed /etc/ringmesh/config.yaml does not validate"
# The conffile is registered, with the md5sum of the file as installed.
conffiles=$(in_root dpkg-query -W -f='${Conffiles}' ringmesh)
md5=$(md5sum <"$chr/etc/ringmesh/config.yaml" | cut -d' ' -f1)
[[ $conffiles == *" /etc/ringmesh/config.yaml $md5"* ]] ||
  die "conffile not registered as /etc/ringmesh/config.yaml $md5: '$conffiles'"
# The system user and group, no home directory made (systemd's StateDirectory= makes it).
IFS=: read -r _ _ uid gid _ home shell < <(in_root getent passwd ringmesh) || die "no user ringmesh"
IFS=: read -r _ _ group_gid _ < <(in_root getent group ringmesh) || die "no group ringmesh"
((uid < 1000)) || die "ringmesh is uid $uid, not a system user"
[[ $gid == "$group_gid" ]] || die "ringmesh's primary group is $gid, not ringmesh ($group_gid)"
[[ $home == /var/lib/ringmesh && $shell == /usr/sbin/nologin ]] || die "ringmesh: home $home, shell $shell"
[[ ! -e $chr/var/lib/ringmesh ]] || die "postinst created /var/lib/ringmesh"
# Enabled (for the next boot: no systemd runs here, so nothing was started).
wants=$chr/etc/systemd/system/multi-user.target.wants/ringmesh.service
[[ $(readlink "$wants") == /lib/systemd/system/ringmesh.service ]] || die "the unit is not enabled ($wants)"
step "installed: files, conffile, user ringmesh ($uid:$gid), unit enabled"

# --- 3. dpkg -i over itself keeps a modified conffile ---------------------------------------
cp -a "$chr/etc/passwd" "$scratch/passwd.installed"
echo "# a local change: dpkg must keep it" >>"$chr/etc/ringmesh/config.yaml"
modified=$(sha256sum <"$chr/etc/ringmesh/config.yaml")
# stdin from /dev/null: a conffile prompt would fail here instead of waiting for an answer.
in_root dpkg -i /root/ringmesh.deb </dev/null >"$scratch/dpkg.log" 2>&1 ||
  { cat "$scratch/dpkg.log" >&2; die "the second dpkg -i failed"; }
[[ $(sha256sum <"$chr/etc/ringmesh/config.yaml") == "$modified" ]] || die "the modified conffile was replaced"
leftovers=$(find "$chr/etc/ringmesh" -name '*.dpkg-*')
[[ -z $leftovers ]] || die "the reinstall left $leftovers"
cmp -s "$chr/etc/passwd" "$scratch/passwd.installed" || die "the reinstall changed /etc/passwd (postinst not idempotent)"
status=$(in_root dpkg-query -W -f='${Status}' ringmesh)
[[ $status == "install ok installed" ]] || die "after the reinstall: '$status'"
step "reinstalled over itself: the modified conffile is kept, the user unchanged"

# --- 4. the service, as the installed unit says ---------------------------------------------
unit=$chr/lib/systemd/system/ringmesh.service
# unit_get KEY: the values of KEY= in [Service], one per line.
unit_get() { sed -n '/^\[Service\]/,/^\[/{s/^'"$1"'=//p}' "$unit"; }
unit_one() {
  local v
  v=$(unit_get "$1")
  [[ -n $v && $v != *$'\n'* ]] || die "the unit has not exactly one $1= ('$v')"
  echo "$v"
}
# Command lines are split on whitespace, as systemd would for these (no quotes, no %
# specifiers); anything else is refused rather than run differently from systemd.
split_cmd() {
  [[ $1 != *[\"\'\\%]* ]] || die "this test cannot run a command line with quotes, escapes or specifiers: $1"
  read -ra cmd <<<"$1"
}
caps() { # "CAP_NET_ADMIN CAP_X" -> "-all,+net_admin,+x"
  local out=-all c
  for c in $1; do out+=",+$(tr 'A-Z' 'a-z' <<<"${c#CAP_}")"; done
  echo "$out"
}
user=$(unit_one User) group=$(unit_one Group)
[[ $user == ringmesh && $group == ringmesh ]] || die "the unit runs as $user:$group, the package made ringmesh"
stop_timeout=$(unit_one TimeoutStopSec)
[[ $stop_timeout =~ ^[0-9]+$ ]] || die "TimeoutStopSec=$stop_timeout: only plain seconds are handled"
kill_signal=$(unit_one KillSignal)
[[ $(unit_one NoNewPrivileges) == yes ]] || die "NoNewPrivileges= is not yes"
# LimitNOFILE= as systemd sets it, if this process may: raising the hard limit needs
# CAP_SYS_RESOURCE, which some sandboxes (containers, this CI's VM) withhold even from root.
# Then the proxy gets the hard limit there is, and the test says so.
nofile=$(unit_one LimitNOFILE)
if ! prlimit --nofile="$nofile" true 2>/dev/null; then
  echo "deb/test.sh: NOTE: LimitNOFILE=$nofile cannot be applied here (no CAP_SYS_RESOURCE," \
    "hard limit $(ulimit -Hn)): the proxy runs with $(ulimit -Hn) open files" >&2
  nofile=$(ulimit -Hn)
fi
# The unprivileged side of the unit: User=/Group= with their groups, only the unit's
# capabilities (ambient, so that an exec without file capabilities keeps them), no new
# privileges, its umask and file limit, systemd's clean environment.
as_service=(/usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  /bin/sh -c "umask $(unit_one UMask); exec \"\$@\"" sh
  /usr/bin/prlimit --nofile="$nofile"
  /usr/bin/setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs
  --inh-caps="$(caps "$(unit_one AmbientCapabilities)")" --ambient-caps="$(caps "$(unit_one AmbientCapabilities)")"
  --bounding-set="$(caps "$(unit_one CapabilityBoundingSet)")" --)
in_ns() { nsenter --net="$netns" "$@"; }
# exec_cmd LINE: sets run=(...) to one Exec*= line as systemd would run it: with "+", as root
# outside the sandbox; without, as the service. (An array, not a function that runs it, so
# that `"${run[@]}" &` makes $! the PID of the process itself: nsenter, chroot, env, sh,
# prlimit and setpriv each exec the next.)
exec_cmd() {
  local line=$1 privileged=0
  if [[ $line == +* ]]; then privileged=1 line=${line#+}; fi
  [[ $line == /* ]] || die "unhandled Exec prefix in '$1'"
  split_cmd "$line"
  if ((privileged)); then run=(nsenter --net="$netns" chroot "$chr" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${cmd[@]}")
  else run=(nsenter --net="$netns" chroot "$chr" "${as_service[@]}" "${cmd[@]}"); fi
}
exec_line() { exec_cmd "$1"; "${run[@]}"; }

touch "$netns"
unshare --net="$netns" true || die "cannot create a network namespace"
# A non-loopback address for the intercepted traffic to go to; on lo, so that no kernel
# module (dummy, veth) is needed: the rules exempt 127.0.0.0/8 and ::1, not this.
{ in_ns ip link set lo up && in_ns ip addr add 10.77.0.1/32 dev lo; } || die "cannot set up lo in the namespace"
# The directories systemd makes for StateDirectory=/RuntimeDirectory= (owned by User=, 0755).
for d in "var/lib/$(unit_one StateDirectory)" "run/$(unit_one RuntimeDirectory)"; do
  install -d -m 0755 -o "$uid" -g "$gid" "$chr/$d"
done

while read -r line; do
  exec_line "$line" >>"$scratch/exec.log" 2>&1 || { cat "$scratch/exec.log" >&2; die "ExecStartPre=$line failed"; }
  # The interception is in place exactly as planned (same flags, 'verify').
  if [[ $line == *"mesh-redirect install"* ]]; then
    exec_line "${line/ install / verify }" >>"$scratch/exec.log" 2>&1 ||
      { cat "$scratch/exec.log" >&2; die "mesh-redirect verify after ExecStartPre failed"; }
  fi
done < <(unit_get ExecStartPre)
in_ns chroot "$chr" nft list table inet ringmesh >/dev/null || die "ExecStartPre installed no nftables table"
step "ExecStartPre: interception installed and verified"

exec_cmd "$(unit_one ExecStart)"
"${run[@]}" >"$scratch/proxy.log" 2>&1 &
proxy_pid=$!
fail_proxy() { echo "--- proxy log:" >&2; cat "$scratch/proxy.log" >&2; die "$*"; }
curl_ns() { in_ns curl -sS --max-time 2 -o "$scratch/body" -w '%{http_code}' "$@" 2>>"$scratch/curl.log" || true; }
# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.1 s, failing as soon as the
# proxy is gone, or when SECONDS pass.
wait_for() {
  local what=$1 secs=$2 deadline=$(($(date +%s%N) + $2 * 1000000000))
  shift 2
  until "$@"; do
    kill -0 "$proxy_pid" 2>/dev/null || fail_proxy "the proxy exited while waiting for $what"
    (($(date +%s%N) < deadline)) || fail_proxy "no $what within ${secs}s"
    sleep 0.1
  done
}
ready() { [[ $(curl_ns http://127.0.0.1:15000/ready) == 200 ]]; }
wait_for "/ready = 200" 15 ready
# It is the proxy (the exec chain ended in it, so $! is its PID), as the user, with exactly
# the unit's capability, no new privileges and the unit's file limit.
[[ $(</proc/$proxy_pid/comm) == uring-proxy ]] || die "PID $proxy_pid is $(</proc/$proxy_pid/comm), not uring-proxy"
st=/proc/$proxy_pid/status
read -r _ ruid euid suid fsuid < <(grep '^Uid:' "$st")
[[ "$ruid $euid $suid $fsuid" == "$uid $uid $uid $uid" ]] || die "the proxy runs as uids $ruid $euid $suid $fsuid, not $uid"
for c in CapPrm CapEff CapBnd CapAmb; do
  grep -q "^$c:[[:space:]]*0000000000001000$" "$st" || die "the proxy's $(grep "^$c:" "$st"), not CAP_NET_ADMIN only"
done
grep -q '^NoNewPrivs:[[:space:]]*1$' "$st" || die "the proxy may gain privileges (NoNewPrivs not set)"
grep -q "^Max open files *$nofile *$nofile " "/proc/$proxy_pid/limits" || die "LimitNOFILE not applied"
[[ $(curl_ns http://127.0.0.1:15000/live) == 200 ]] || fail_proxy "/live is not 200"
step "ExecStart: ready and live as $user with CAP_NET_ADMIN only (PID $proxy_pid)"

# Intercepted traffic: a client in the namespace dials 10.77.0.1:8080 (not loopback, so the
# rules send it to the proxy); the proxy dials it again with the bypass mark, which the rules
# let pass, to a server there. This is what CAP_NET_ADMIN and --proxy-mark are for.
mkdir "$scratch/www" && echo "through ringmesh" >"$scratch/www/ok.txt"
# nsenter and the interpreter itself, not a function or a wrapper (a pyenv shim): each would
# fork, and $! would not be the server.
python=$(python3 -c 'import sys; print(sys.executable)')
nsenter --net="$netns" "$python" -m http.server --bind 10.77.0.1 --directory "$scratch/www" 8080 >"$scratch/server.log" 2>&1 &
server_pid=$!
server_up() { in_ns ss -Htln 'sport = :8080' | grep -q .; }
wait_for "the test server on 10.77.0.1:8080" 10 server_up
[[ $(tr '\0' ' ' </proc/$server_pid/cmdline) == *http.server* ]] || die "PID $server_pid is not the test server"
metric() { in_ns curl -sS --max-time 2 http://127.0.0.1:15000/metrics | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }
opened=$(metric 'ringmesh_connections_opened_total{')
[[ $(curl_ns http://10.77.0.1:8080/ok.txt) == 200 && $(<"$scratch/body") == "through ringmesh" ]] ||
  fail_proxy "the intercepted request failed: $(cat "$scratch/curl.log")"
opened_after=$(metric 'ringmesh_connections_opened_total{')
((opened_after > opened)) || fail_proxy "the request did not go through the proxy (connections_opened_total $opened -> $opened_after)"
kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
server_pid=''
step "intercepted: 10.77.0.1:8080 answered through the proxy (connections_opened_total $opened -> $opened_after)"

# ExecReload (kill -HUP $MAINPID, as the service) after an edit of a live field (an
# unchanged file is not applied again): the edit is applied, and the proxy still ready.
applied() { metric 'ringmesh_config_reloads_total{result="applied"}'; }
reloads=$(applied)
sed -i 's/^  connect: 1s$/  connect: 2s/' "$chr/etc/ringmesh/config.yaml"
grep -q '^  connect: 2s$' "$chr/etc/ringmesh/config.yaml" || die "no 'connect: 1s' in the config to change for the reload"
reload=$(unit_one ExecReload)
exec_line "${reload//\$MAINPID/$proxy_pid}" >>"$scratch/exec.log" 2>&1 ||
  { cat "$scratch/exec.log" >&2; die "ExecReload failed"; }
reloaded() { (($(applied) > reloads)); }
wait_for "an applied reload after ExecReload" 10 reloaded
ready || fail_proxy "not ready after the reload"
step "ExecReload: the edited config applied (reloads_total{applied} $reloads -> $(applied)), still ready"

# Stop: KillSignal, then exit 0 within TimeoutStopSec (the drain).
kill -s "${kill_signal#SIG}" "$proxy_pid"
deadline=$(($(date +%s) + stop_timeout))
gone() { [[ ! -e /proc/$proxy_pid || $(awk '{print $3}' "/proc/$proxy_pid/stat" 2>/dev/null) == Z ]]; }
until gone; do
  (($(date +%s) < deadline)) || fail_proxy "still running ${stop_timeout}s (TimeoutStopSec) after $kill_signal"
  sleep 0.1
done
rc=0
wait "$proxy_pid" || rc=$?
proxy_pid=''
((rc == 0)) || fail_proxy "exit status $rc after $kill_signal, not 0"
# systemd removes RuntimeDirectory= when the service stops (StateDirectory= stays).
rm -rf "$chr/run/$(unit_one RuntimeDirectory)"
while read -r line; do
  exec_line "$line" >>"$scratch/exec.log" 2>&1 || { cat "$scratch/exec.log" >&2; die "ExecStopPost=$line failed"; }
done < <(unit_get ExecStopPost)
rules=$(in_ns chroot "$chr" nft list ruleset)
[[ -z $rules ]] || die "rules left after ExecStopPost: $rules"
umount "$netns"
step "stopped: exit 0 after $kill_signal, ExecStopPost removed the interception"

# --- 5. purge: back to the snapshot ---------------------------------------------------------
in_root dpkg --purge ringmesh </dev/null >"$scratch/dpkg.log" 2>&1 ||
  { cat "$scratch/dpkg.log" >&2; die "dpkg --purge failed"; }
status=$(in_root dpkg-query -W -f='${Status}' ringmesh 2>/dev/null || true)
[[ -z $status || $status == "unknown ok not-installed" ]] || die "after the purge: '$status'"
snapshot "$scratch/after"
if ! diff -u "$scratch/before" "$scratch/after" >"$scratch/diff"; then
  cat "$scratch/diff" >&2
  die "the purge left the root different from before the install (diff above: - before, + after)"
fi
step "purged: the root equals the snapshot"
rootfs_umount || die "cannot unmount the root's /proc, /sys, /dev"
echo "deb/test.sh: PASS ($(basename "$deb")): root from $rootfs_source, test $((($(date +%s%N) - t_test) / 1000000)) ms, total $((($(date +%s%N) - t0) / 1000000)) ms"
