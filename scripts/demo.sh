#!/usr/bin/env bash
# Zap demo, as root on Debian: installs what is needed, builds, then
#  1. runs redis-server (a real, multi-threaded server) in a pod with its own PID, mount, UTS,
#     IPC, network and cgroup namespaces and an address, loads data into it, checkpoints the
#     whole pod (the pod is stopped and removed), restores it with the same pids, hostname,
#     address and MAC, and shows the data intact and a new client served; then makes a second
#     copy of the running pod under another name and address, takes an incremental checkpoint
#     (only the pages written since the last one), removes both pods and checks that nothing is
#     left;
#  2. checkpoints a single python3 process keeping state in objects, restores it, and takes a
#     second checkpoint while it keeps running;
#  3. stores a real file set (Python's standard library) and reads it back, byte for byte;
#  4. verifies the store, shows its statistics, deletes checkpoints and collects garbage;
#  5. live migration: three hosts on one LAN (network namespaces, scripts/hosts.sh), redis-server
#     in a pod on host a with a LAN address, a client on the LAN holding one TCP connection open
#     (an INCR every 50 ms), the pod moved a -> b -> c while the client talks to it; the client's
#     connection and the counter go on, the pids and address are the same, and nothing of the
#     pod is left on the hosts it left.
# Everything it creates lives under a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
scripts/setup.sh
cargo build --release -p zap-cli -p zap-engine
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
ZAP="$bin/zap"
export ZAP_INIT="$bin/zap-init"

work=$(mktemp -d /var/tmp/zap-demo.XXXXXX)
export ZAP_STORE="$work/store"
export ZAP_RUN_DIR="$work/pods"
pids=()
pods=()
hosts_up=
export ZAP_HOSTS_PREFIX="zd$(( $$ % 100000 ))" ZAP_HOSTS_NET="10.98.$(( $$ % 200 + 1 ))" ZAP_HOSTS_DIR="$work/hosts" ZAP
cleanup() {
  for p in "${pods[@]}"; do "$ZAP" rm -f "$p" >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "$hosts_up" ] && scripts/hosts.sh down >/dev/null 2>&1
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

pod=demo-redis; copy=demo-copy
net=$(( 200 + $$ % 50 ))
ip=10.77.$net.2; ip2=10.77.$net.3
mkdir -p "$work/redis"
rcli() { redis-cli -h "$1" -p 6379 "${@:2}"; }

say "1. redis-server in a pod ($pod, $ip)"
"$ZAP" run --name "$pod" --ip "$ip/24" -- redis-server --bind 0.0.0.0 --port 6379 --save "" \
  --appendonly no --protected-mode no --enable-debug-command yes --dir "$work/redis"
pods+=("$pod")
for _ in $(seq 50); do [ "$(rcli "$ip" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
for i in $(seq 1 20000); do echo "SET user:$i balance-$((i * 7))"; done | rcli "$ip" --pipe >/dev/null
echo "loaded $(rcli "$ip" dbsize) keys; digest $(rcli "$ip" debug digest)"
"$ZAP" ps
echo "inside the pod:"; "$ZAP" exec "$pod" -- sh -c 'echo "  hostname $(hostname)"; ps -e -o pid=,comm= | sed "s/^/  /"; ip -br addr show eth0 | sed "s/^/  /"'
digest=$(rcli "$ip" debug digest)

say "checkpoint the whole pod (zap checkpoint $pod): frozen through its cgroup, then stopped and removed"
id=$("$ZAP" checkpoint "$pod")
"$ZAP" ps | grep -q "^$pod " && echo "pod still listed?" || echo "pod $pod is gone (its state is in checkpoint $id)"

say "restore it (zap restore $id): same name, pids, hostname, address and MAC"
"$ZAP" restore "$id"
for _ in $(seq 50); do [ "$(rcli "$ip" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
echo "keys $(rcli "$ip" dbsize), user:12345 = $(rcli "$ip" get user:12345)"
[ "$(rcli "$ip" debug digest)" = "$digest" ] && echo "the data set's digest is the same as before the checkpoint"
echo "a new client: SET after restore -> $(rcli "$ip" set after restore), GET -> $(rcli "$ip" get after)"
"$ZAP" exec "$pod" -- ps -e -o pid=,comm= | sed 's/^/  /'

say "a second copy of the running pod, under another name and address ($copy, $ip2)"
id2=$("$ZAP" checkpoint --leave-running "$pod")
"$ZAP" restore "$id2" --name "$copy" --ip "$ip2/24"
pods+=("$copy")
for _ in $(seq 50); do [ "$(rcli "$ip2" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
echo "copy: keys $(rcli "$ip2" dbsize), after = $(rcli "$ip2" get after); original still serves: $(rcli "$ip" ping)"

say "incremental: that --leave-running checkpoint armed the dirty-page tracker; write 100 keys and checkpoint again"
for i in $(seq 1 100); do echo "SET new:$i v$i"; done | rcli "$ip" --pipe >/dev/null
"$ZAP" checkpoint --leave-running "$pod" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  %s: %s; read %.1f MiB, stored %.1f KiB new, stopped %.0f ms (parent %s)" % (d["id"], d["mode"], d["memory_bytes"]/1048576, d["new_stored_bytes"]/1024, d["frozen_ms"], d["parent"]))'
"$ZAP" ls
"$ZAP" ps

say "remove both pods: nothing is left (processes, cgroups, veth, bridge, pod directories)"
"$ZAP" rm -f "$pod"
"$ZAP" rm -f "$copy"
pods=()
ls /sys/fs/cgroup/unified/zap/ /sys/fs/cgroup/zap/ 2>/dev/null | grep -E "^demo-" && echo "LEFT: cgroups" || echo "no cgroup left"
ip -o link | grep -E "zv-|zap0" && echo "LEFT: links" || echo "no veth or bridge left"
ls "$ZAP_RUN_DIR" | grep -E "^demo-" && echo "LEFT: pod directories" || echo "no pod directory left"

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

say "2. a single python3 process keeping state in objects"
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

say "a second checkpoint while it keeps running (--leave-running): only new data is stored"
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
say "5. live migration between hosts a, b and c (network namespaces on one LAN: scripts/hosts.sh)"
# Each host has its own run directory and store under its root (ZAP_ROOT, set by hosts.sh).
unset ZAP_STORE ZAP_RUN_DIR
scripts/hosts.sh up
hosts_up=1
on() { local h=$1; shift; scripts/hosts.sh exec "$h" -- "$@"; }
zap_on() { local h=$1; shift; on "$h" "$ZAP" "$@"; }
for h in a b c; do zap_on "$h" key gen >"$work/key.$h"; done
for h in a b c; do for o in a b c; do
  [ "$h" = "$o" ] || zap_on "$h" key allow "$(cat "$work/key.$o")" --comment "$o" >/dev/null
done; done
mip="$ZAP_HOSTS_NET.50"
zap_on a run --name moving --ip "$mip/24" -- redis-server --bind 0.0.0.0 --port 6379 --save "" \
  --appendonly no --protected-mode no
for _ in $(seq 50); do [ "$(on client redis-cli -h "$mip" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
for i in $(seq 1 5000); do echo "SET k:$i v$i"; done | on client redis-cli -h "$mip" --pipe >/dev/null
cat > "$work/client.py" <<'PY'
# One TCP connection to redis, an INCR every 50 ms, each answer logged; bounded to 120 s.
import os, socket, sys, time
ip, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
c = socket.create_connection((ip, 6379), timeout=30)
out = open(log, "w", buffering=1)
t0 = time.time()
while time.time() - t0 < 120 and not os.path.exists(stop):
    c.sendall(b"INCR ticks\r\n")
    a = b""
    while not a.endswith(b"\r\n"):
        d = c.recv(64)
        if not d:
            out.write("connection closed by the server\n"); sys.exit(1)
        a += d
    out.write("%.2f %s port %d\n" % (time.time() - t0, a.decode().strip(), c.getsockname()[1]))
    time.sleep(0.05)
out.write("done: one connection throughout\n")
PY
on client python3 "$work/client.py" "$mip" "$work/client.log" "$work/client.stop" &
client=$!
sleep 1
echo "client on the LAN ($ZAP_HOSTS_NET.200): $(tail -1 "$work/client.log")"
echo "pod on host a: $(zap_on a exec moving -- ps -e -o pid=,comm= | tr -s ' \n' ' ')"
src=a
for dst in b c; do
  say "migrate moving: $src -> $dst (pre-copy rounds over a Noise channel, then a short stop)"
  zap_on "$src" migrate moving --via "$(realpath scripts/hosts.sh) exec $dst -- $ZAP receive --stdio" \
    --peer-key "$(cat "$work/key.$dst")"
  sleep 1
  echo "client: $(tail -1 "$work/client.log")"
  echo "on $dst: $(zap_on "$dst" exec moving -- ps -e -o pid=,comm= | tr -s ' \n' ' ')"
  zap_on "$src" ps | grep -q '^moving ' && echo "LEFT on $src: the pod" || echo "nothing of the pod is left on $src"
  src=$dst
done
touch "$work/client.stop"
wait "$client" && tail -1 "$work/client.log"
echo "answers: $(grep -c ' port ' "$work/client.log"), all on port(s) $(grep ' port ' "$work/client.log" | awk '{print $NF}' | sort -u | tr '\n' ' ')"
echo "keys after two moves: $(on client redis-cli -h "$mip" dbsize), k:4242 = $(on client redis-cli -h "$mip" get k:4242)"
zap_on c rm -f moving
scripts/hosts.sh down
hosts_up=
say "done (the demo's processes and store are removed on exit)"
