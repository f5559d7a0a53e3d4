#!/usr/bin/env bash
# Installs the system packages Zap needs to build and test on Debian 12, as root.
# Idempotent: packages already present are left alone.
set -euo pipefail
pkgs=(clang libclang-dev gcc make pkg-config python3 iproute2 procps redis-server redis-tools sqlite3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
