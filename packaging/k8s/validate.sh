#!/usr/bin/env bash
# Validates the Kubernetes manifests offline: every YAML (or JSON) document under packaging/k8s
# (recursively) and under any extra files or directories given, strictly (unknown fields are
# errors) against one Kubernetes version's schemas, with kubernetes-validate from PyPI in the
# project's venv (.tools/venv, created and filled when missing). Then every ringmesh config
# the ConfigMaps carry goes through the real binary's `uring-proxy --check-config`, and every
# nats-server config through `nats-server -t`, so the shipped configs stay valid.
#
#   packaging/k8s/validate.sh [FILE_OR_DIR...]
#
# Env: BIN (where uring-proxy and meshctl are; default: cargo's target dir, release if built,
# else debug), K8S_VERSION (default below), NATS_SERVER (default: .tools/venv/bin/nats-server,
# else nats-server on PATH). Exit 1 on any failure; it prints how many documents it checked.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

kv_pin=1.37.0                    # kubernetes-validate, from PyPI
k8s=${K8S_VERSION:-1.37.0}       # the newest stable Kubernetes whose schemas kv_pin ships
venv=$root/.tools/venv
py=$venv/bin/python

if [[ ! -x $py ]]; then
  echo "creating $venv"
  /usr/bin/python3 -m venv "$venv"
fi
have=$("$py" -c 'import kubernetes_validate as k; print(k.__version__)' 2>/dev/null || true)
if [[ $have != "$kv_pin" ]]; then
  echo "installing kubernetes-validate $kv_pin into $venv (from PyPI)"
  if ! "$py" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$kv_pin"; then
    echo "validate.sh: cannot install kubernetes-validate $kv_pin (PyPI unreachable?)" >&2
    exit 1
  fi
fi

if [[ -z ${BIN:-} ]]; then
  # shellcheck source=../../bench/target-dir.sh
  source "$root/bench/target-dir.sh"
  BIN=$target_dir/debug
  [[ -x $target_dir/release/uring-proxy ]] && BIN=$target_dir/release
fi
if [[ ! -x $BIN/uring-proxy ]]; then
  echo "validate.sh: $BIN/uring-proxy is missing: build first (cargo build --workspace --bins) or set BIN" >&2
  exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rc=0

PYTHONDONTWRITEBYTECODE=1 "$py" "$here/validate.py" -k "$k8s" --extract "$scratch/configs" --extract-dir "$scratch/x" \
  "$here" "$@" || rc=1
[[ -f $scratch/configs ]] || { echo "validate.sh: FAILED (manifests not read)" >&2; exit 1; }

# Certificates for nats-server -t, which loads the files its config names.
nats_certs() {
  [[ -f $scratch/pki/ca.pem ]] && return 0
  mkdir -p "$scratch/pki"
  if [[ -x $BIN/meshctl ]]; then
    "$BIN/meshctl" identity ca --cert "$scratch/pki/ca.pem" --key "$scratch/pki/ca.key" >/dev/null &&
      "$BIN/meshctl" identity mint --ca-cert "$scratch/pki/ca.pem" --ca-key "$scratch/pki/ca.key" \
        --name nats.ringmesh.svc --cert "$scratch/pki/srv.pem" --key "$scratch/pki/srv.key" >/dev/null
  else
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=ca \
      -keyout "$scratch/pki/ca.key" -out "$scratch/pki/ca.pem" 2>/dev/null &&
      cp "$scratch/pki/ca.pem" "$scratch/pki/srv.pem" && cp "$scratch/pki/ca.key" "$scratch/pki/srv.key"
  fi
}
nats=${NATS_SERVER:-}
if [[ -z $nats ]]; then
  if [[ -x $venv/bin/nats-server ]]; then nats=$venv/bin/nats-server
  else nats=$(command -v nats-server || true); fi
fi

n_ring=0 n_nats=0 n_nats_unchecked=0
while IFS=$'\t' read -r kind what path; do
  case $kind in
    ringmesh)
      if out=$("$BIN/uring-proxy" --config "$path" --check-config 2>&1); then
        n_ring=$((n_ring + 1))
      else
        echo "FAIL $what: uring-proxy --check-config refused it:"
        sed 's/^/    /' <<<"$out"
        rc=1
      fi
      ;;
    nats)
      if [[ -z $nats ]]; then
        echo "NOTE $what: not checked (no nats-server: set NATS_SERVER, or \`make test\` installs one)"
        n_nats_unchecked=$((n_nats_unchecked + 1))
        continue
      fi
      nats_certs
      sed -E -e "s#(cert_file:[[:space:]]*)\"[^\"]*\"#\1\"$scratch/pki/srv.pem\"#" \
        -e "s#(key_file:[[:space:]]*)\"[^\"]*\"#\1\"$scratch/pki/srv.key\"#" \
        -e "s#(ca_file:[[:space:]]*)\"[^\"]*\"#\1\"$scratch/pki/ca.pem\"#" \
        -e "s#(store_dir:[[:space:]]*)\"[^\"]*\"#\1\"$scratch/js\"#" "$path" >"$path.check"
      if out=$("$nats" -c "$path.check" -t 2>&1); then
        n_nats=$((n_nats + 1))
      else
        echo "FAIL $what: nats-server -t refused it (certificate paths and store_dir replaced):"
        sed 's/^/    /' <<<"$out"
        rc=1
      fi
      ;;
  esac
done <"$scratch/configs"

echo "ringmesh configs passing $BIN/uring-proxy --check-config: $n_ring"
if [[ -n $nats ]]; then
  echo "nats-server configs passing $("$nats" --version 2>&1 | head -1) -t: $n_nats"
elif [[ $n_nats_unchecked -gt 0 ]]; then
  echo "nats-server configs not checked: $n_nats_unchecked"
fi
if [[ $rc -ne 0 ]]; then
  echo "validate.sh: FAILED" >&2
  exit 1
fi
echo "validate.sh: all valid"
