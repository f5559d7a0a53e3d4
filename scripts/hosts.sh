#!/usr/bin/env bash
# Several Zap hosts on one machine, on one LAN, for migration tests and the demo.
#
#   scripts/hosts.sh up                      LAN, hosts a b c, namespace client
#   scripts/hosts.sh exec NAME -- CMD...     run CMD on host NAME (a, b, c) or in the client
#   scripts/hosts.sh root NAME               print host NAME's Zap root
#   scripts/hosts.sh down                    remove everything `up` made (pods of the hosts too)
#
# Environment (so that several topologies can coexist, e.g. one per test):
#   ZAP_HOSTS_PREFIX  name prefix of the namespaces and the hosts' directory (default zh)
#   ZAP_HOSTS_NET     first three octets of the LAN's /24 (default 10.99.0)
#   ZAP_HOSTS_DIR     where the hosts' Zap roots live (default /var/tmp/zap-hosts/PREFIX)
#   ZAP_HOSTS         the hosts (default "a b c")
#   ZAP               the zap binary `down` uses to remove the hosts' pods (default: zap on PATH)
#
# Topology (PREFIX zh, NET 10.99.0):
#
#   netns zh-lan:  bridge lan0, 10.99.0.1/24 (the LAN's router: the pods' default gateway)
#       ├── veth ══ uplink ─ bridge zap0 of host a (netns zh-a), 10.99.0.11/24; pods' veths on zap0
#       ├── veth ══ uplink ─ bridge zap0 of host b (netns zh-b), 10.99.0.12/24
#       ├── veth ══ uplink ─ bridge zap0 of host c (netns zh-c), 10.99.0.13/24
#       └── veth ══ eth0 of the client (netns zh-client), 10.99.0.200/24
#
# Each host's zap0 is joined to the LAN at layer 2 (its uplink is a port of it), so a pod's
# eth0 is on the LAN wherever the pod runs: pods take LAN addresses (10.99.0.50 and up, say)
# and route through the LAN's router, and a pod that moves keeps its address and MAC. The
# hosts' <root>/net.json tells Zap that zap0 and the gateway are not its own (it neither adds a
# gateway address to the bridge nor deletes it), so no two hosts ever carry the same address.
#
# A host is also a mount namespace of its own in which /srv/zap is the host's private
# directory ROOT/srv: files a pod keeps there (a database's directory) are the host's own, as on
# separate machines, and `zap migrate --copy /srv/zap/...` carries them. A small holder process
# (`sleep`, its pid in DIR/NAME.pid) keeps each host's namespaces; `exec` enters them through it,
# so it works from anywhere, including from inside another host (a `--via` command).
set -euo pipefail

P=${ZAP_HOSTS_PREFIX:-zh}
NET=${ZAP_HOSTS_NET:-10.99.0}
DIR=$(realpath -m "${ZAP_HOSTS_DIR:-/var/tmp/zap-hosts/$P}")
HOSTS=(${ZAP_HOSTS:-a b c})
SRV=/srv/zap

die() { echo "hosts.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
[ "${#P}" -le 8 ] || die "ZAP_HOSTS_PREFIX must be at most 8 characters"

ns_of() { if [ "$1" = client ]; then echo "$P-client"; else echo "$P-$1"; fi; }
root_of() { echo "$DIR/$1"; }
holder_of() { cat "$DIR/$1.pid" 2>/dev/null; }

up() {
  ip netns list | grep -qw "$P-lan" && die "topology $P exists already (scripts/hosts.sh down first)"
  mkdir -p "$DIR" "$SRV"
  ip netns add "$P-lan"
  ip -n "$P-lan" link set lo up
  ip -n "$P-lan" link add lan0 type bridge
  ip -n "$P-lan" addr add "$NET.1/24" dev lan0
  ip -n "$P-lan" link set lan0 up
  local i=0 h
  for h in "${HOSTS[@]}"; do
    i=$((i + 1))
    local ns root
    ns=$(ns_of "$h"); root=$(root_of "$h")
    mkdir -p "$root/srv"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$P-lan" link add "u-$h" type veth peer name uplink netns "$ns"
    ip -n "$P-lan" link set "u-$h" master lan0 up
    # zap0 gets a MAC of its own per host: the hosts' bridges share one segment.
    ip -n "$ns" link add zap0 address "$(printf '02:7a:68:%02x:%02x:%02x' $(( $$ % 256 )) $(( ${#P} )) "$i")" type bridge
    ip -n "$ns" link set uplink master zap0 up
    ip -n "$ns" addr add "$NET.$((10 + i))/24" dev zap0
    ip -n "$ns" link set zap0 up
    ip -n "$ns" route add default via "$NET.1"
    printf '{"bridge": "zap0", "gateway": "%s.1", "external": true}\n' "$NET" > "$root/net.json"
    # The holder: in the host's network namespace and a mount namespace of its own.
    setsid nsenter --net="/run/netns/$ns" unshare --mount --propagation slave \
      sh -c "mount --bind '$root/srv' '$SRV' && exec sleep infinity" </dev/null >/dev/null 2>&1 &
    echo $! > "$DIR/$h.pid"
  done
  # Wait until every holder sits in its own namespaces, with its /srv/zap mounted.
  for h in "${HOSTS[@]}"; do
    local hp; hp=$(holder_of "$h")
    for _ in $(seq 200); do
      [ "$(cat "/proc/$hp/comm" 2>/dev/null)" = sleep ] && break
      sleep 0.01
    done
    [ "$(cat "/proc/$hp/comm" 2>/dev/null)" = sleep ] || die "host $h: holder process did not start"
  done
  ip netns add "$P-client"
  ip -n "$P-client" link set lo up
  ip -n "$P-lan" link add u-client type veth peer name eth0 netns "$P-client"
  ip -n "$P-lan" link set u-client master lan0 up
  ip -n "$P-client" addr add "$NET.200/24" dev eth0
  ip -n "$P-client" link set eth0 up
  ip -n "$P-client" route add default via "$NET.1"
  echo "hosts ${HOSTS[*]} on LAN $NET.0/24 (router $NET.1, client $NET.200); roots under $DIR"
}

exec_on() {
  local name=$1; shift
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "exec $name: no command"
  local ns; ns=$(ns_of "$name")
  ip netns list | grep -qw "$ns" || die "no host or client $name in topology $P"
  if [ "$name" = client ]; then
    exec nsenter --net="/run/netns/$ns" "$@"
  fi
  local holder; holder=$(holder_of "$name")
  [ -n "$holder" ] && [ -d "/proc/$holder" ] || die "host $name has no holder process (scripts/hosts.sh up)"
  # nsenter, not `ip netns exec`, which would mount a sysfs of the namespace over /sys and hide
  # the cgroup hierarchies Zap works in.
  exec nsenter -t "$holder" --mount --net env ZAP_ROOT="$(root_of "$name")" "$@"
}

down() {
  local zap=${ZAP:-$(command -v zap || true)} h
  for h in "${HOSTS[@]}"; do
    local root; root=$(root_of "$h")
    if [ -n "$zap" ] && [ -d "$root/pods" ] && [ -n "$(holder_of "$h")" ]; then
      for pod in $(ls "$root/pods" 2>/dev/null); do
        nsenter -t "$(holder_of "$h")" --mount --net env ZAP_ROOT="$root" "$zap" rm -f "$pod" >/dev/null 2>&1 || true
      done
    fi
  done
  for h in "${HOSTS[@]}" client; do
    ip netns del "$(ns_of "$h")" 2>/dev/null || true
  done
  ip netns del "$P-lan" 2>/dev/null || true
  for h in "${HOSTS[@]}"; do
    local hp; hp=$(holder_of "$h")
    [ -n "$hp" ] && kill "$hp" 2>/dev/null || true
    # The host's cgroup parent (zap-<host>-<hash>, derived from its root), once empty.
    local cg; cg=$(cgparent "$(root_of "$h")")
    for d in /sys/fs/cgroup/unified/"$cg" /sys/fs/cgroup/"$cg" /sys/fs/cgroup/*/"$cg"; do
      [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
  done
  rm -rf "$DIR"
}

# The cgroup parent Zap derives from a root (host::cgroup_parent_of: FNV-1a of the path).
cgparent() {
  python3 - "$1" <<'PY'
import sys, re, os
p = sys.argv[1]
h = 0xcbf29ce484222325
for b in p.encode():
    h ^= b
    h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
last = re.sub(r'[^A-Za-z0-9-]', '_', os.path.basename(p))[:24]
print("zap-%s-%08x" % (last, (h ^ (h >> 32)) & 0xFFFFFFFF))
PY
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  exec) [ $# -ge 1 ] || die "usage: hosts.sh exec NAME -- CMD..."; exec_on "$@" ;;
  root) [ $# -ge 1 ] || die "usage: hosts.sh root NAME"; root_of "$1" ;;
  down) down ;;
  *) die "usage: hosts.sh up | exec NAME -- CMD... | root NAME | down" ;;
esac
