#!/usr/bin/env bash
# Installs the system packages Zap needs to build and test on Debian 12, as root.
# Idempotent: packages already present are left alone.
set -euo pipefail
pkgs=(clang libclang-dev gcc make pkg-config python3 iproute2 procps redis-server redis-tools sqlite3 nftables libnftables1 nginx postgresql nodejs memcached)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Servers the tests run in their own pods (nginx, postgresql, memcached) are not started on the host by their package.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
