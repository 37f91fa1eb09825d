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
NAME=lan-bench PFX=lrl NET=10.97.0
. "$HERE/lib/pair.sh"
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer"
pair_up

nsx "$NS_A" python3 "$PEER" listen 27015 --reply --seconds $((N / 20 + 60)) >"$TMP/listener.out" 2>&1 &
wait_until 10 grep -q listening "$TMP/listener.out" || die "listener did not start"
nsx "$NS_B" python3 "$PEER" pingpong "$A_IP" 27015 --count 20 --interval 0.01 >/dev/null   # warm up

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
