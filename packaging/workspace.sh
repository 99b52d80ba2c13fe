# Sourced by the packaging scripts: fields of Cargo.toml's [workspace.package], the one place
# the version, licence and repository are kept.

# workspace_field NAME: prints [workspace.package] NAME, or fails.
workspace_field() {
  python3 - "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/Cargo.toml" "$1" <<'PY'
import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"][sys.argv[2]])
PY
}
