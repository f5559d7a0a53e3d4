#!/usr/bin/env bash
# Zap demo, as root on Debian: installs what is needed, builds, then
#  1. runs a real program (python3 keeping state in objects), checkpoints it (the original is
#     killed), restores it in a new PID namespace with its old pid, and shows it continue;
#  2. takes a second, incremental checkpoint of the restored process while it keeps running;
#  3. stores a real file set (Python's standard library) and reads it back, byte for byte;
#  4. verifies the store, shows its statistics, deletes a checkpoint and collects garbage.
# Everything it creates lives under a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
scripts/setup.sh
cargo build --release -p zap-cli
ZAP="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/zap"

work=$(mktemp -d /var/tmp/zap-demo.XXXXXX)
export ZAP_STORE="$work/store"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Start a program with only fds 0-2 (some shells leak others into children).
start_clean() {
  ( for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
    exec setsid "$@" </dev/null >/dev/null 2>&1 ) &
  echo $!
}

cat > "$work/app.py" <<PY
import time
class Account:
    def __init__(self):
        self.balance = 0
        self.history = []
    def deposit(self, n):
        self.balance += n
        self.history.append(n)
acct = Account()
log = open("$work/app.log", "a", buffering=1)
blob = bytearray(64 << 20)          # 64 MiB of zero pages: recorded, never stored
i = 0
while True:
    i += 1
    acct.deposit(i)
    log.write("step %d balance %d history %d\n" % (i, acct.balance, len(acct.history)))
    time.sleep(0.1)
PY

say "1. a python3 program keeping state in objects"
pid=$(start_clean python3 "$work/app.py"); pids+=("$pid")
sleep 2
echo "pid $pid, last log line: $(tail -1 "$work/app.log")"

say "checkpoint it (zap checkpoint --pid $pid): the original is killed once the checkpoint is stored"
id=$("$ZAP" checkpoint --pid "$pid")
sleep 1
echo "checkpoint $id; log after the checkpoint (no progress, the process is gone): $(tail -1 "$work/app.log")"

say "restore it (zap restore $id): same pid inside a new PID namespace, state intact"
restored=$("$ZAP" restore "$id" --json)
echo "$restored"
rpid=$(echo "$restored" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'); pids+=("$rpid")
sleep 1.5
echo "log continues where it stopped:"; tail -3 "$work/app.log"
grep NSpid "/proc/$rpid/status"

say "2. a second checkpoint while it keeps running (--leave-running): only new data is stored"
"$ZAP" checkpoint --pid "$rpid" --leave-running --json
"$ZAP" ls

say "3. a real file set: Python's standard library"
lib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
fid=$("$ZAP" store put "$lib" --name python-stdlib --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"]); print(json.dumps(d), file=sys.stderr)')
"$ZAP" store get "$fid" --out "$work/restored"
diff -r "$lib" "$work/restored$lib" && echo "restored file set is identical to $lib"
fid2=$("$ZAP" store put "$lib" --name python-stdlib-again --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["id"]); print("stored again: %d new bytes" % d["new_stored_bytes"], file=sys.stderr)')

say "4. verify, statistics, delete and collect"
"$ZAP" store verify
"$ZAP" store stats
"$ZAP" store rm "$fid"
"$ZAP" store gc
echo "(nothing freed: python-stdlib-again still uses every chunk; now remove it too)"
"$ZAP" store rm "$fid2"
"$ZAP" store gc
"$ZAP" store verify
say "done (the demo's processes and store are removed on exit)"
