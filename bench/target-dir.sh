# Sourced by the scripts: sets $target_dir to where cargo puts its builds, honouring
# CARGO_TARGET_DIR and any `build.target-dir` in cargo's config, as cargo itself does.
target_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." &&
  cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [[ -z "$target_dir" ]]; then
  echo "cannot ask cargo where its target directory is (is cargo installed?)" >&2
  exit 1
fi
