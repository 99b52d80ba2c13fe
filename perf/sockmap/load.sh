#!/usr/bin/env bash
# Loads perf/sockmap/sockmap.c for perf/compare.sh's uring-sockmap contender, and takes it
# away again. Nothing on the host's /sys/fs/bpf: the programs and maps are pinned in a bpffs
# mounted under DIR, and the sock_ops program is attached to a cgroup of its own, which only
# the processes compare.sh puts there (that proxy, and the generator while it loads it) join.
#
#   perf/sockmap/load.sh up DIR CGROUP PROXY_PORT VIP...   # prints nothing; fails loudly
#   perf/sockmap/load.sh stats DIR                          # "redirected N passed M"
#   perf/sockmap/load.sh down DIR CGROUP                    # the processes must have left
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=$1 dir=$2
fs=$dir/bpffs

case $cmd in
  up)
    cg=$3 port=$4
    shift 4
    [[ -d $(dirname "$cg") && $(stat -fc %T "$(dirname "$cg")") == cgroup2fs ]] ||
      { echo "sockmap: $(dirname "$cg") is not a cgroup2 mount" >&2; exit 1; }
    mkdir -p "$fs"
    clang-19 -target bpf -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu \
      -c "$here/sockmap.c" -o "$dir/sockmap.o"
    mountpoint -q "$fs" || mount -t bpf bpf "$fs"
    mkdir -p "$fs/maps"
    bpftool prog loadall "$dir/sockmap.o" "$fs/progs" pinmaps "$fs/maps"
    le32() { printf '%d %d %d %d' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
    # shellcheck disable=SC2046
    bpftool map update pinned "$fs/maps/settings" key 0 0 0 0 value $(le32 "$port")
    for vip in "$@"; do
      # shellcheck disable=SC2046
      bpftool map update pinned "$fs/maps/vips" key $(tr '.' ' ' <<<"$vip") value 1 0 0 0
    done
    mkdir -p "$cg"
    bpftool cgroup attach "$cg" sock_ops pinned "$fs/progs/rm_sockops"
    bpftool prog attach pinned "$fs/progs/rm_msg" msg_verdict pinned "$fs/maps/socks"
    ;;
  stats)
    bpftool -j map dump pinned "$fs/maps/stats" | python3 -c '
import json, sys
rows = json.load(sys.stdin)
tot = [0, 0]
for r in rows:
    f = r["formatted"]
    for v in f["values"]:
        tot[f["key"]] += v["value"]
print(f"redirected {tot[0]} passed {tot[1]}")'
    ;;
  down)
    cg=$3
    if [[ -d $cg ]]; then
      bpftool cgroup detach "$cg" sock_ops pinned "$fs/progs/rm_sockops" 2>/dev/null || true
      rmdir "$cg" || echo "sockmap: $cg still has processes: $(tr '\n' ' ' <"$cg/cgroup.procs")" >&2
    fi
    if mountpoint -q "$fs"; then
      bpftool prog detach pinned "$fs/progs/rm_msg" msg_verdict pinned "$fs/maps/socks" 2>/dev/null || true
      umount "$fs"
    fi
    rm -rf "$fs" "$dir/sockmap.o"
    ;;
  *) echo "usage: $0 up|stats|down DIR ..." >&2; exit 2 ;;
esac
