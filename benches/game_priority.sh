#!/usr/bin/env bash
# benches/game_priority.sh - does a game's traffic stay fast while a download fills the tunnel?
#
# Two players A and B in a party on one switch (benches/lib/pair.sh). A runs a real game
# server, Debian's openarena-server on UDP 27960; LANrage on A detects it and applies the
# OpenArena profile (high priority, ports 27960-27963), and B applies it too once the party
# shows A playing. On A, tests/e2e/lanpeer.py answers small datagrams on two ports:
#   game      UDP 27961  (a port of the running game's profile: prioritised)
#   other     UDP 40961  (no profile: ordinary traffic)
# The underlay is a home uplink: each player's eth0 sends at most RATE (HTB), with a
# 1000-packet FIFO for ordinary traffic (a modem's buffer) and a strict-priority class for
# DSCP EF, as a DSCP-aware router has. All tunnel traffic is one outer UDP flow, so only
# the DSCP mark LANrage puts on the game's packets can tell them apart there.
# From B, NP numbered 32-byte probes per flow, one at a time every 20 ms, round trip in us:
#   idle      each flow alone
#   loaded    both flows at once while `iperf3 -c A` (TCP, B -> A) saturates the tunnel
# The table gives median and p99 per flow and state, and loaded/idle of the medians: the
# game flow should stay within 2x its idle median, the other flow shows what bulk traffic
# does without priority.
#
# Usage:  sudo benches/game_priority.sh      Env: NP=300 RATE=100mbit SKIP_BUILD=1 KEEP=1 WAIT_GAME=1
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
NP=${NP:-300}
WAIT_GAME=${WAIT_GAME:-1}
RATE=${RATE:-100mbit}
PEER=$ROOT/tests/e2e/lanpeer.py
NAME=prio-bench PFX=lrq NET=10.96.0
. "$HERE/lib/pair.sh"
[[ $NP =~ ^[1-9][0-9]*$ ]] || die "NP must be a positive integer"
for c in iperf3 /usr/games/openarena-server; do command -v "$c" >/dev/null || die "missing $c (apt-get install iperf3 openarena-server)"; done
pair_up
uplink() {   # uplink NS: RATE out of eth0, EF first
    local t="nsx $1 tc"
    $t qdisc add dev eth0 root handle 1: htb default 20 r2q 100 &&
    $t class add dev eth0 parent 1: classid 1:1 htb rate "$RATE" &&
    $t class add dev eth0 parent 1:1 classid 1:10 htb rate 1mbit ceil "$RATE" prio 0 &&
    $t class add dev eth0 parent 1:1 classid 1:20 htb rate "$RATE" ceil "$RATE" prio 1 &&
    $t qdisc add dev eth0 parent 1:10 handle 10: pfifo limit 100 &&
    $t qdisc add dev eth0 parent 1:20 handle 20: pfifo limit 1000 &&
    $t filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dsfield 0xb8 0xfc flowid 1:10
}
uplink "$NS_A" 2>/dev/null || die "cannot shape A's uplink (needs sch_htb, cls_u32)"
uplink "$NS_B" 2>/dev/null || die "cannot shape B's uplink"

mkdir -p "$TMP/home"
nsx "$NS_A" env HOME="$TMP/home" /usr/games/openarena-server +set dedicated 1 +set net_port 27960 \
    +set sv_hostname prio-bench +map oa_dm1 >"$TMP/openarena.log" 2>&1 &
plays() { status "$NS_B" "$TMP/pB" | python3 -c 'import json,sys
s = json.load(sys.stdin)
sys.exit(0 if any(g.get("id") == "openarena" for m in (s.get("party") or {}).get("members", []) for g in m.get("games") or []) else 1)'; }
if [ "$WAIT_GAME" = 1 ]; then
    wait_until 20 plays || die "B does not see A playing OpenArena (see $TMP/A.log)"
    log "B sees A playing OpenArena"
fi

SECS=$((NP / 25 + 60))
for port in 27961 40961; do
    nsx "$NS_A" python3 "$PEER" listen "$port" --reply --seconds $((3 * SECS)) >"$TMP/listen-$port.out" 2>&1 &
    wait_until 10 grep -q listening "$TMP/listen-$port.out" || die "listener on $port did not start"
    nsx "$NS_B" python3 "$PEER" pingpong "$A_IP" "$port" --count 20 --interval 0.01 >/dev/null   # warm up
done
probe() {   # probe PORT OUT
    nsx "$NS_B" timeout "$SECS" python3 "$PEER" pingpong "$A_IP" "$1" --count "$NP" --interval 0.02 >"$2"
}
declare -A MED P99 LOST
for port in 27961 40961; do
    log "idle: $NP probes to $A_IP:$port"
    probe "$port" "$TMP/idle-$port.txt"
    read -r MED[idle-$port] P99[idle-$port] LOST[idle-$port] < <(summary "$TMP/idle-$port.txt")
done

nsx "$NS_A" iperf3 -s -B "$A_IP" -p 5201 >"$TMP/iperf3-server.txt" 2>&1 &
wait_until 10 nsx "$NS_A" bash -c "exec 3<>/dev/tcp/$A_IP/5201" || die "iperf3 server did not start"
BULK=$((NP / 50 + 8))
log "loaded: iperf3 TCP B -> A for ${BULK}s, both flows probing after 2 s"
nsx "$NS_B" timeout $((BULK + 30)) iperf3 -c "$A_IP" -p 5201 -t "$BULK" -J >"$TMP/iperf3.json" 2>&1 &
IPERF=$!
sleep 2
probe 27961 "$TMP/loaded-27961.txt" &
G=$!
probe 40961 "$TMP/loaded-40961.txt"
wait "$G"
wait "$IPERF"
for port in 27961 40961; do
    read -r MED[loaded-$port] P99[loaded-$port] LOST[loaded-$port] < <(summary "$TMP/loaded-$port.txt")
done
MBIT=$(python3 -c 'import json,sys
try: print("%.0f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception: print("nan")' "$TMP/iperf3.json")

echo "Game priority under a saturating download: B -> A round trips in us, $NP probes per flow"
echo "bulk: iperf3 TCP B -> A through the tunnel, $MBIT Mbit/s (uplinks shaped to $RATE)"
EF=$(nsx "$NS_B" tc -s class show dev eth0 classid 1:10 | awk '/Sent/ {print $4; exit}')
echo "B's uplink sent ${EF:-0} packets in its DSCP EF class"
printf "%-18s %8s %8s %6s   %8s %8s %6s   %s\n" flow idle-med idle-p99 lost loaded-med loaded-p99 lost loaded/idle
for port in 27961 40961; do
    label="game   UDP $port"; [ $port = 40961 ] && label="other  UDP $port"
    ratio=$(awk -v a="${MED[loaded-$port]}" -v b="${MED[idle-$port]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "nan" }')
    printf "%-18s %8s %8s %6s   %8s %8s %6s   %s\n" "$label" "${MED[idle-$port]}" "${P99[idle-$port]}" "${LOST[idle-$port]}" \
        "${MED[loaded-$port]}" "${P99[loaded-$port]}" "${LOST[loaded-$port]}" "$ratio"
done
