#!/usr/bin/env bash
# Runs Zap's whole test suite. Needs root and the real kernel (ptrace, namespaces); installs the
# system packages it needs first. The build shares /var/cache/zap/target (see .cargo/config.toml),
# so RocksDB's C++ build happens once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root (the tests ptrace, freeze and restore real processes)" >&2
  exit 1
fi
scripts/setup.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace --no-fail-fast
