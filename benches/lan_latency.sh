#!/usr/bin/env bash
# benches/lan_latency.sh - what LAN emulation adds: a broadcast vs a unicast on the same path.
#
# Topology (fresh namespaces lrl-<pid>-*, deleted on exit; nothing in the root namespace):
#   lrl-<pid>-sw: bridge; -ctl 10.97.0.1 (control plane), -a 10.97.0.2, -b 10.97.0.3
#   A and B run `lanrage up`, A creates a party, B joins; the path is direct.
#
# On A, tests/e2e/lanpeer.py listens on UDP 27015 and answers every datagram unicast (as a
# game server answers a lobby query). From B, N numbered probes one at a time:
#   unicast     to A's virtual IP:27015          (tunnel both ways)
#   broadcast   to 10.66.255.255:27015           (LAN emulation out, unicast answer back)
# Round trips in microseconds, median and p99; the broadcast's added one-way latency is
# the difference of the medians (the answer is an ordinary unicast in both cases).
#
# Usage:  sudo benches/lan_latency.sh        Env: N=500 SKIP_BUILD=1 KEEP=1
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
N=${N:-500}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
PEER=$ROOT/tests/e2e/lanpeer.py
log() { echo "[lan-bench] $*" >&2; }
die() { echo "lan_latency.sh: error: $*" >&2; exit 1; }
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer"
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, TUN devices)"
for c in ip python3 timeout; do command -v "$c" >/dev/null || die "missing $c"; done
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/lanrage
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release -p lanrage"
    (cd "$ROOT" && cargo build --release -p lanrage) >&2 || die "build failed"
fi
[ -x "$BIN" ] || die "no LANrage binary at $BIN"

P=lrl-$$
NS_SW=$P-sw NS_C=$P-ctl NS_A=$P-a NS_B=$P-b
TMP=$(mktemp -d "/tmp/lrl-$$.XXXXXX") || die "mktemp failed"
CREATED=""
cleanup() {
    local rc=$? ns pids
    trap - EXIT INT TERM
    for ns in $CREATED; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
    done
    sleep 1
    for ns in $CREATED; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
    wait 2>/dev/null
    if [ "$rc" -eq 0 ] && [ "$KEEP" != 1 ]; then rm -rf "$TMP"; else log "logs kept in $TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }

for ns in $NS_SW $NS_C $NS_A $NS_B; do
    ip netns add "$ns" || die "ip netns add $ns"
    CREATED="$ns $CREATED"
    ip -n "$ns" link set lo up
done
ip -n "$NS_SW" link add br0 type bridge && ip -n "$NS_SW" link set br0 up
i=0
for pair in "$NS_C 10.97.0.1" "$NS_A 10.97.0.2" "$NS_B 10.97.0.3"; do
    set -- $pair
    ip -n "$NS_SW" link add "p$i" type veth peer name eth0 netns "$1"
    ip -n "$NS_SW" link set "p$i" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    i=$((i + 1))
done
wait_until() {
    local end=$((SECONDS + $1)); shift
    while ! "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.2; done
}
status() { nsx "$1" timeout 5 "$BIN" status --json --state-dir "$2"; }

nsx "$NS_C" "$BIN" control --listen 10.97.0.1:8667 --database "sqlite://$TMP/ctl.db" >"$TMP/control.log" 2>&1 &
wait_until 10 nsx "$NS_C" bash -c 'exec 3<>/dev/tcp/10.97.0.1/8667' || die "control plane did not start"
nsx "$NS_A" "$BIN" up --control http://10.97.0.1:8667 --state-dir "$TMP/pA" --name A >"$TMP/A.log" 2>&1 &
nsx "$NS_B" "$BIN" up --control http://10.97.0.1:8667 --state-dir "$TMP/pB" --name B >"$TMP/B.log" 2>&1 &
wait_until 15 status "$NS_A" "$TMP/pA" || die "daemon A did not start"
wait_until 15 status "$NS_B" "$TMP/pB" || die "daemon B did not start"
CODE=$(nsx "$NS_A" "$BIN" party create bench --state-dir "$TMP/pA" 2>/dev/null | tail -1)
nsx "$NS_B" "$BIN" party join "$CODE" --state-dir "$TMP/pB" >/dev/null || die "join failed"
A_IP=$(status "$NS_A" "$TMP/pA" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual_ip"])')
direct() { status "$NS_B" "$TMP/pB" | grep -q '"path": "direct"'; }
wait_until 20 direct || die "B has no direct path to A"
log "A is $A_IP; direct path up"

nsx "$NS_A" python3 "$PEER" listen 27015 --reply --seconds $((N / 20 + 60)) >"$TMP/listener.out" 2>&1 &
wait_until 10 grep -q listening "$TMP/listener.out" || die "listener did not start"
nsx "$NS_B" python3 "$PEER" pingpong "$A_IP" 27015 --count 20 --interval 0.01 >/dev/null   # warm up

summary() {   # file -> "median p99 lost"
    local lost
    lost=$(grep -c '^lost$' "$1")
    grep -v '^lost$' "$1" | sort -n | awk -v lost="$lost" '{a[NR] = $1} END {
        if (NR == 0) { print "nan nan " lost; exit }
        med = (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)
        i = int(0.99 * NR); if (i < 0.99 * NR) i++
        printf "%d %d %d\n", med, a[i], lost }'
}
declare -A MED P99 LOST
for kind in unicast broadcast; do
    dst=$A_IP; [ $kind = broadcast ] && dst=10.66.255.255
    log "$kind: $N probes to $dst:27015"
    nsx "$NS_B" timeout $((N / 10 + 60)) python3 "$PEER" pingpong "$dst" 27015 --count "$N" --interval 0.01 >"$TMP/$kind.txt"
    read -r MED[$kind] P99[$kind] LOST[$kind] < <(summary "$TMP/$kind.txt")
done

echo "LAN emulation latency, B -> A over a direct path, $N probes each, round trip in us (answer always unicast)"
printf "%-10s %8s %8s %6s\n" path median p99 lost
for kind in unicast broadcast; do
    printf "%-10s %8s %8s %6s\n" "$kind" "${MED[$kind]}" "${P99[$kind]}" "${LOST[$kind]}"
done
printf "broadcast adds %s us (median) one way over unicast\n" "$((MED[broadcast] - MED[unicast]))"
