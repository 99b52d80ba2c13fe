#!/usr/bin/env python3
"""Writes packaging/seccomp/ringmesh.json: the container runtime's default seccomp profile
(containers-common's /usr/share/containers/seccomp.json, which podman, CRI-O and, in the same
format, Docker and containerd use) with io_uring's three syscalls allowed, and nothing else
changed.

    generate.py [--base FILE] [--out FILE]   write the profile
    generate.py --check [--base FILE]        fail if the committed profile is not what this
                                             would write from FILE (CI runs this)

The stock default denies io_uring_setup with ENOSYS (it is not on its allow list), so under
it uring-proxy starts on its epoll driver and says so in ringmesh_driver_fallback; with this
profile it runs on io_uring. See README.md next to this file.
"""
import argparse
import json
import sys
from pathlib import Path

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
COMMENT = "ringmesh: io_uring (uring-proxy's data path); the rest is the runtime's default"
HERE = Path(__file__).resolve().parent


def derive(base: dict) -> dict:
    prof = json.loads(json.dumps(base))
    rules = prof.get("syscalls")
    if not isinstance(rules, list) or prof.get("defaultAction") in (None, "SCMP_ACT_ALLOW"):
        sys.exit("generate.py: the base is not a deny-by-default profile with a syscalls list")
    kept = []
    for rule in rules:
        unconditional = not rule.get("includes") and not rule.get("excludes") and not rule.get("args")
        # A newer default may deny io_uring explicitly: drop it from such a rule (the
        # conditional rules, by capability or architecture, never name it).
        if unconditional and rule.get("action") != "SCMP_ACT_ALLOW":
            names = [n for n in rule.get("names", []) if n not in IO_URING]
            if not names:
                continue
            rule["names"] = names
        kept.append(rule)
    for rule in kept:
        overlap = set(rule.get("names", [])) & set(IO_URING)
        if overlap and rule.get("action") != "SCMP_ACT_ALLOW":
            sys.exit(f"generate.py: a conditional rule in the base denies {sorted(overlap)}; look at it")
    allowed = any(
        rule.get("action") == "SCMP_ACT_ALLOW" and set(IO_URING) <= set(rule.get("names", []))
        and not rule.get("includes") and not rule.get("excludes") and not rule.get("args")
        for rule in kept
    )
    if not allowed:
        # Right after the main allow list, as its own rule, so a diff against the base is
        # this one block.
        at = next((i + 1 for i, r in enumerate(kept) if r.get("action") == "SCMP_ACT_ALLOW"), len(kept))
        kept.insert(at, {"names": IO_URING, "action": "SCMP_ACT_ALLOW", "args": [], "comment": COMMENT,
                         "includes": {}, "excludes": {}})
    prof["syscalls"] = kept
    return prof


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="/usr/share/containers/seccomp.json")
    ap.add_argument("--out", default=str(HERE / "ringmesh.json"))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    try:
        base = json.loads(Path(a.base).read_text())
    except OSError as e:
        sys.exit(f"generate.py: cannot read the base profile: {e} (apt-get install golang-github-containers-common)")
    text = json.dumps(derive(base), indent="\t") + "\n"
    out = Path(a.out)
    if a.check:
        have = out.read_text() if out.exists() else ""
        if have != text:
            sys.exit(f"generate.py: {out} is not {a.base} plus io_uring: run packaging/seccomp/generate.py")
        print(f"{out.name}: {a.base} plus {', '.join(IO_URING)}")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
