#!/usr/bin/env bash
# What the comparison needs beyond the project's own deps: nginx (with the stream module),
# haproxy and linux-perf from Debian. Their services are not started: a policy-rc.d that
# refuses service starts is in place only while apt runs.
set -euo pipefail
"$(dirname "$0")/../.ci/deps.sh"
packages=(nginx-light libnginx-mod-stream haproxy linux-perf)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "perf deps: installing ${missing[*]}"
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [[ -e $policy ]] && had_policy=1
  if ((had_policy == 0)); then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if ((had_policy == 0)); then rm -f "$policy"; fi
fi
