#!/usr/bin/env bash
# benches/bench.sh - LANrage vs wireguard-go vs the raw link, measured in one run.
#
# Topology (all inside fresh network namespaces named lrb-<pid>-*, nothing in the root
# namespace; everything is deleted on exit):
#
#              lrb-<pid>-sw : bridge br0
#              /            |             \
#   lrb-<pid>-ctl       lrb-<pid>-a       lrb-<pid>-b
#   10.98.0.1/24        10.98.0.2/24      10.98.0.3/24
#   (LANrage control)   (player A)        (player B)
#
# Three paths from B (client) to A (server), one after the other, never two tunnels at once:
#   raw           10.98.0.3 -> 10.98.0.2 over the bridge
#   wireguard-go  10.77.0.2 -> 10.77.0.1 (wg set ... listen-port 51820, MTU 1420, as in
#                 the shared testbed's baselines.sh)
#   lanrage       10.66.0.2 -> 10.66.0.1 (control plane in ctl, `lanrage up` in A and B,
#                 A creates a party, B joins it)
#
# Measured per path:
#   TCP   iperf3 -c DST -t DUR -J, one run; end.sum_received.bits_per_second
#   ping  ping -c PINGS -i 0.01; min / median / p99 from the per-packet times
#   UDP   sockperf ping-pong -m 64 --mps 1000 -t UDP_SECS --full-rtt; median / p99 (us)
#         (or benches/udp_rtt.py, the same ping-pong in python3, if sockperf is missing or
#         UDP_TOOL=python)
#   CPU   utime+stime of the tunnel daemons at both ends (/proc/PID/stat) over the TCP run,
#         in % of one core (a 2-core box has 200 %)
#
# Usage:   sudo benches/bench.sh
# Env:     DUR=10 PINGS=100 UDP_SECS=5 UDP_TOOL=auto|sockperf|python UP_TIMEOUT=20
#          SKIP_BUILD=1 (use the existing target/release/lanrage)  KEEP=1 (keep logs in /tmp)
# Output:  the table on stdout; progress and build output on stderr.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DUR=${DUR:-10}
PINGS=${PINGS:-100}
UDP_SECS=${UDP_SECS:-5}
UDP_TOOL=${UDP_TOOL:-auto}
UP_TIMEOUT=${UP_TIMEOUT:-20}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}

log() { echo "[bench] $*" >&2; }
die() { echo "bench.sh: error: $*" >&2; exit 1; }

# ------------------------------------------------------------------ prerequisites
for v in DUR PINGS UDP_SECS UP_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, TUN devices); try: sudo $0"
missing=()
for c in ip iperf3 wireguard-go wg ping python3 timeout ss awk sort; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
[ ${#missing[@]} -eq 0 ] || die "missing prerequisite(s): ${missing[*]} (Debian: apt-get install iproute2 iperf3 wireguard-go wireguard-tools iputils-ping python3)"
case $UDP_TOOL in
    auto) if command -v sockperf >/dev/null 2>&1; then UDP_TOOL=sockperf; else UDP_TOOL=python; fi ;;
    sockperf) command -v sockperf >/dev/null 2>&1 || die "UDP_TOOL=sockperf but sockperf is not installed (apt-get install sockperf, or UDP_TOOL=python)" ;;
    python) ;;
    *) die "UDP_TOOL must be auto, sockperf or python" ;;
esac
[ "$UDP_TOOL" = sockperf ] || [ -r "$HERE/udp_rtt.py" ] || die "missing $HERE/udp_rtt.py"
python3 -c 'import json, socket' 2>/dev/null || die "python3 does not work"

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/lanrage
if [ "$SKIP_BUILD" != 1 ]; then
    CARGO=$(command -v cargo || true)
    [ -z "$CARGO" ] && [ -x "${HOME:-/root}/.cargo/bin/cargo" ] && CARGO=${HOME:-/root}/.cargo/bin/cargo
    [ -z "$CARGO" ] && [ -x /root/.cargo/bin/cargo ] && CARGO=/root/.cargo/bin/cargo
    [ -n "$CARGO" ] || die "cargo not found (install Rust, or SKIP_BUILD=1 with a built $BIN)"
    log "cargo build --release -p lanrage (waits if another build holds the cargo lock)"
    (cd "$ROOT" && "$CARGO" build --release -p lanrage) >&2 || die "cargo build --release -p lanrage failed"
fi
[ -x "$BIN" ] || die "no LANrage binary at $BIN"

# ------------------------------------------------------------------ topology + cleanup
P=lrb-$$
NS_SW=$P-sw NS_C=$P-ctl NS_A=$P-a NS_B=$P-b
ALL_NS="$NS_B $NS_A $NS_C $NS_SW"
IP_C=10.98.0.1 IP_A=10.98.0.2 IP_B=10.98.0.3
WG_A=lrbA$$ WG_B=lrbB$$            # unique: the UAPI socket dir /var/run/wireguard is shared
TMP=$(mktemp -d "/tmp/lrb-$$.XXXXXX") || die "mktemp failed"
CREATED_NS=""

cleanup() {
    local rc=$? ns pids p i
    trap - EXIT INT TERM
    # every process in our namespaces was started by this script
    for ns in $CREATED_NS; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
    done
    for i in $(seq 30); do
        pids=""
        for ns in $CREATED_NS; do pids="$pids $(ip netns pids "$ns" 2>/dev/null)"; done
        [ -z "${pids// /}" ] && break
        sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $CREATED_NS; do ip netns del "$ns" 2>/dev/null; done
    rm -f "/var/run/wireguard/$WG_A.sock" "/var/run/wireguard/$WG_B.sock"
    if [ "$rc" -eq 0 ] && [ "$KEEP" != 1 ]; then
        rm -rf "$TMP"
    else
        echo "[bench] logs kept in $TMP" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }

for ns in $NS_SW $NS_C $NS_A $NS_B; do
    ip netns add "$ns" || die "ip netns add $ns failed"
    CREATED_NS="$ns $CREATED_NS"
    ip -n "$ns" link set lo up
done
ip -n "$NS_SW" link add br0 type bridge || die "cannot create a bridge"
ip -n "$NS_SW" link set br0 up
# bridged frames must not meet iptables in the switch (br_netfilter, testbed obstacle 9)
nsx "$NS_SW" sysctl -qw net.bridge.bridge-nf-call-iptables=0 >/dev/null 2>&1 || true
i=0
for pair in "$NS_C $IP_C" "$NS_A $IP_A" "$NS_B $IP_B"; do
    set -- $pair
    # created inside the switch namespace, peer end moved straight into the host namespace
    ip -n "$NS_SW" link add "p$i" type veth peer name eth0 netns "$1" || die "veth for $1 failed"
    ip -n "$NS_SW" link set "p$i" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    i=$((i + 1))
done

# wait_until SECS cmd... : run cmd every 0.2 s until it succeeds or SECS pass
wait_until() {
    local end=$((SECONDS + $1)); shift
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        [ $SECONDS -ge $end ] && return 1
        sleep 0.2
    done
}
can_ping() { nsx "$1" ping -c1 -W1 -q "$2"; }
listening() { [ -n "$(nsx "$1" ss -Hln "$2" "sport = :$3" 2>/dev/null)" ]; }   # ns -t|-u port

wait_until 10 can_ping "$NS_B" "$IP_A" || die "raw link B -> A does not work"
wait_until 10 can_ping "$NS_B" "$IP_C" || die "raw link B -> control does not work"

# ------------------------------------------------------------------ daemons
bg() {   # bg NS LOGFILE cmd... ; sets BG_PID
    local n=$1 lf=$2; shift 2
    ip netns exec "$n" "$@" >"$lf" 2>&1 &
    BG_PID=$!
}
stop_pids() {
    local p i
    for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
    for p in "$@"; do
        for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    return 0
}
ticks() {   # summed utime+stime (clock ticks) of the given pids
    local p t=0 v
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        v=$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        t=$((t + v))
    done
    echo $t
}
mtu_of() { ip -n "$1" link show dev "$2" 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="mtu") {print $(i+1); exit}}'; }
HZ=$(getconf CLK_TCK)

# ------------------------------------------------------------------ measurements
declare -A TCP PMIN PMED P99 PLOSS UMED U99 CPU MTU NOTE

# measure LABEL DST DAEMON_PIDS... : servers in A on DST, clients in B
measure() {
    local label=$1 dst=$2; shift 2
    local daemons=("$@") f sp ip3 try t0 t1 k0 k1
    local pfx="$TMP/$label"

    log "$label: ping x$PINGS"
    nsx "$NS_B" timeout $((PINGS / 10 + 30)) ping -c "$PINGS" -i 0.01 -W 1 "$dst" >"$pfx-ping.txt" 2>&1
    read -r PMIN[$label] PMED[$label] P99[$label] PLOSS[$label] < <(
        grep -oE 'time=[0-9.]+' "$pfx-ping.txt" | cut -d= -f2 | sort -g |
        awk -v n="$PINGS" '{a[NR]=$1} END {
            if (NR == 0) { print "nan nan nan 100"; exit }
            med = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
            i = int(0.99 * NR); if (i < 0.99 * NR) i++; if (i < 1) i = 1
            printf "%.3f %.3f %.3f %g\n", a[1], med, a[i], 100 * (n - NR) / n }')

    log "$label: UDP 64 B ping-pong ${UDP_SECS}s ($UDP_TOOL)"
    UMED[$label]=nan; U99[$label]=nan
    if [ "$UDP_TOOL" = sockperf ]; then
        bg "$NS_A" "$pfx-udp-server.txt" sockperf sr -i "$dst" -p 11111; sp=$BG_PID
        wait_until 10 listening "$NS_A" -u 11111 || log "$label: sockperf server did not start"
        nsx "$NS_B" timeout $((UDP_SECS + 30)) sockperf ping-pong -i "$dst" -p 11111 \
            -m 64 --mps 1000 -t "$UDP_SECS" --full-rtt >"$pfx-udp.txt" 2>&1
        UMED[$label]=$(awk '/percentile 50.000 =/{print $NF}' "$pfx-udp.txt" | head -1)
        U99[$label]=$(awk '/percentile 99.000 =/{print $NF}' "$pfx-udp.txt" | head -1)
    else
        bg "$NS_A" "$pfx-udp-server.txt" python3 "$HERE/udp_rtt.py" server --bind "$dst" --port 11111; sp=$BG_PID
        wait_until 10 listening "$NS_A" -u 11111 || log "$label: udp_rtt.py server did not start"
        nsx "$NS_B" timeout $((UDP_SECS + 30)) python3 "$HERE/udp_rtt.py" client --dst "$dst" \
            --port 11111 --size 64 --mps 1000 --secs "$UDP_SECS" >"$pfx-udp.txt" 2>&1
        UMED[$label]=$(grep -oE 'median_us=[0-9.]+' "$pfx-udp.txt" | cut -d= -f2)
        U99[$label]=$(grep -oE 'p99_us=[0-9.]+' "$pfx-udp.txt" | cut -d= -f2)
    fi
    stop_pids "$sp"
    : "${UMED[$label]:=nan}" "${U99[$label]:=nan}"
    [[ ${UMED[$label]} =~ ^[0-9] ]] && UMED[$label]=$(printf '%.0f' "${UMED[$label]}")
    [[ ${U99[$label]} =~ ^[0-9] ]] && U99[$label]=$(printf '%.0f' "${U99[$label]}")

    log "$label: iperf3 TCP ${DUR}s"
    bg "$NS_A" "$pfx-iperf3-server.txt" iperf3 -s -B "$dst" -p 5201; ip3=$BG_PID
    wait_until 10 listening "$NS_A" -t 5201 || log "$label: iperf3 server did not start"
    f="$pfx-iperf3.json"
    for try in 1 2 3; do   # "the server is busy": retry, as baselines.sh does
        k0=$(ticks "${daemons[@]}"); t0=$(date +%s.%N)
        nsx "$NS_B" timeout $((DUR + 30)) iperf3 -c "$dst" -p 5201 -t "$DUR" -J >"$f" 2>&1
        t1=$(date +%s.%N); k1=$(ticks "${daemons[@]}")
        grep -q '"error"' "$f" || break
        sleep 2
    done
    stop_pids "$ip3"
    TCP[$label]=$(python3 -c 'import json,sys
try:
    d = json.load(open(sys.argv[1]))
    print("%.1f" % (d["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception:
    print("nan")' "$f")
    if [ ${#daemons[@]} -gt 0 ]; then
        CPU[$label]=$(awk -v k=$((k1 - k0)) -v hz="$HZ" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", 100 * k / hz / (b - a)}')
    else
        CPU[$label]="-"
    fi
    log "$label: TCP ${TCP[$label]} Mbit/s, ping ${PMIN[$label]}/${PMED[$label]}/${P99[$label]} ms, UDP ${UMED[$label]}/${U99[$label]} us, CPU ${CPU[$label]}"
}

mark_failed() {
    local label=$1
    TCP[$label]=nan PMIN[$label]=nan PMED[$label]=nan P99[$label]=nan PLOSS[$label]=nan
    UMED[$label]=nan U99[$label]=nan CPU[$label]=- MTU[$label]=?
}

FAILED=()
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 1. raw link
MTU[raw]=$(mtu_of "$NS_B" eth0); NOTE[raw]="veth+bridge"
measure raw "$IP_A"

# ---- 2. wireguard-go
log "wireguard-go: starting"
WG_OK=1
(umask 077; wg genkey >"$TMP/a.key" && wg genkey >"$TMP/b.key") || die "wg genkey failed"
wg pubkey <"$TMP/a.key" >"$TMP/a.pub"; wg pubkey <"$TMP/b.key" >"$TMP/b.pub"
WG_PIDS=()
for side in A B; do
    if [ $side = A ]; then ns=$NS_A name=$WG_A key=a peer=b ep=$IP_B me=10.77.0.1 other=10.77.0.2
    else                   ns=$NS_B name=$WG_B key=b peer=a ep=$IP_A me=10.77.0.2 other=10.77.0.1; fi
    bg "$ns" "$TMP/wggo-$side.log" wireguard-go -f "$name"; WG_PIDS+=("$BG_PID")
    if ! wait_until 10 test -S "/var/run/wireguard/$name.sock"; then
        log "wireguard-go: no UAPI socket for $name (see $TMP/wggo-$side.log)"; WG_OK=0; break
    fi
    nsx "$ns" wg set "$name" private-key "$TMP/$key.key" listen-port 51820 \
        peer "$(cat "$TMP/$peer.pub")" endpoint "$ep:51820" allowed-ips "$other/32" || WG_OK=0
    ip -n "$ns" addr add "$me/24" dev "$name" || WG_OK=0
    ip -n "$ns" link set "$name" mtu 1420 up || WG_OK=0
done
if [ $WG_OK = 1 ] && wait_until "$UP_TIMEOUT" can_ping "$NS_B" 10.77.0.1; then
    MTU[wireguard-go]=$(mtu_of "$NS_B" "$WG_B"); NOTE[wireguard-go]=$(wireguard-go --version 2>/dev/null | awk '{print $2; exit}')
    measure wireguard-go 10.77.0.1 "${WG_PIDS[@]}"
else
    log "wireguard-go: tunnel did not come up within ${UP_TIMEOUT}s"
    mark_failed wireguard-go; NOTE[wireguard-go]="FAILED"; FAILED+=(wireguard-go)
fi
stop_pids "${WG_PIDS[@]}"
rm -f "/var/run/wireguard/$WG_A.sock" "/var/run/wireguard/$WG_B.sock"

# ---- 3. LANrage
log "lanrage: starting control plane and two daemons"
LR_OK=1
LR_PIDS=()
lr_status() { nsx "$1" timeout 5 "$BIN" status --json --state-dir "$2"; }
tcp_open() { nsx "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3"; }
bg "$NS_C" "$TMP/lanrage-control.log" "$BIN" control --listen "$IP_C:8667" --database "sqlite://$TMP/ctl.db"
CTL_PID=$BG_PID
mkdir -p "$TMP/pA" "$TMP/pB"
if ! wait_until "$UP_TIMEOUT" tcp_open "$NS_A" "$IP_C" 8667; then
    log "lanrage: control plane not reachable (see $TMP/lanrage-control.log)"; LR_OK=0
fi
if [ $LR_OK = 1 ]; then
    bg "$NS_A" "$TMP/lanrage-A.log" "$BIN" up --control "http://$IP_C:8667" --state-dir "$TMP/pA" --name A
    LR_PIDS+=("$BG_PID")
    bg "$NS_B" "$TMP/lanrage-B.log" "$BIN" up --control "http://$IP_C:8667" --state-dir "$TMP/pB" --name B
    LR_PIDS+=("$BG_PID")
    wait_until "$UP_TIMEOUT" lr_status "$NS_A" "$TMP/pA" || { log "lanrage: daemon A API not up (see $TMP/lanrage-A.log)"; LR_OK=0; }
    wait_until "$UP_TIMEOUT" lr_status "$NS_B" "$TMP/pB" || { log "lanrage: daemon B API not up (see $TMP/lanrage-B.log)"; LR_OK=0; }
fi
LR_DST=""
if [ $LR_OK = 1 ]; then
    CODE=$(nsx "$NS_A" timeout 20 "$BIN" party create bench --state-dir "$TMP/pA" 2>>"$TMP/lanrage-cli.log" | tail -1)
    if [ -z "$CODE" ]; then
        log "lanrage: party create failed (see $TMP/lanrage-cli.log)"; LR_OK=0
    elif ! nsx "$NS_B" timeout 20 "$BIN" party join "$CODE" --state-dir "$TMP/pB" >>"$TMP/lanrage-cli.log" 2>&1; then
        log "lanrage: party join failed (see $TMP/lanrage-cli.log)"; LR_OK=0
    fi
fi
if [ $LR_OK = 1 ]; then
    vip() { lr_status "$1" "$2" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("virtual_ip") or "")'; }
    has_vip() { [ -n "$(vip "$1" "$2")" ]; }
    wait_until "$UP_TIMEOUT" has_vip "$NS_A" "$TMP/pA" || true
    LR_DST=$(vip "$NS_A" "$TMP/pA")
    [ -n "$LR_DST" ] || { log "lanrage: host got no virtual IP"; LR_OK=0; }
fi
lr_path() {   # path B sees towards A
    lr_status "$NS_B" "$TMP/pB" 2>/dev/null | python3 -c 'import json,sys
s = json.load(sys.stdin); p = s.get("party") or {}
print(",".join(m["path"] for m in p.get("members", []) if m.get("virtual_ip") == sys.argv[1]) or "?")' "$LR_DST"
}
if [ $LR_OK = 1 ] && wait_until "$UP_TIMEOUT" can_ping "$NS_B" "$LR_DST"; then
    log "lanrage: B reaches $LR_DST, path $(lr_path)"
    MTU[lanrage]=$(mtu_of "$NS_B" lanrage0)
    measure lanrage "$LR_DST" "${LR_PIDS[@]}"
    NOTE[lanrage]="path=$(lr_path)"
    [ "${NOTE[lanrage]}" = "path=direct" ] || log "lanrage: WARNING: path is not direct: ${NOTE[lanrage]}"
else
    [ $LR_OK = 1 ] && log "lanrage: B cannot ping ${LR_DST:-the host} within ${UP_TIMEOUT}s (logs in $TMP)"
    mark_failed lanrage; NOTE[lanrage]="FAILED"; FAILED+=(lanrage)
fi
stop_pids "${LR_PIDS[@]}" "$CTL_PID"

# ------------------------------------------------------------------ table
ratio() {   # ratio A B : A/B, "-" if not computable
    awk -v a="$1" -v b="$2" 'BEGIN{ if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "-"; exit }
        r = a / b; if (r >= 10) printf "%.1f\n", r; else if (r >= 0.1) printf "%.2f\n", r; else printf "%.3g\n", r }'
}
per_gbit() {   # CPU % per Gbit/s of TCP goodput
    awk -v c="$1" -v t="$2" 'BEGIN{ if (c !~ /^[0-9.]+$/ || t !~ /^[0-9.]+$/ || t + 0 == 0) print "-"; else printf "%.0f\n", c / (t / 1000) }'
}
LR_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
git -C "$ROOT" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || LR_REV="$LR_REV+dirty"
echo
echo "LANrage benchmark  $(date -u '+%Y-%m-%d %H:%M:%SZ')  host: $(nproc) cores, kernel $(uname -r), loadavg $LOAD0 at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
echo "lanrage $LR_REV | wireguard-go ${NOTE[wireguard-go]} | iperf3 -t $DUR, 1 stream | ping -c $PINGS -i 0.01 | UDP 64 B ping-pong 1000 msg/s ${UDP_SECS}s via $UDP_TOOL"
echo "client in B, server in A; ratios: TCP = path/raw (higher is better), latency = path/raw median (lower is better)"
echo
fmt="%-13s %5s %11s %7s  %-28s %7s  %-19s %7s  %8s  %s\n"
printf "$fmt" path MTU "TCP Mbit/s" ratio "ping ms min/median/p99 loss" ratio "UDP64 RTT us med/p99" ratio "CPU %" note
for l in raw wireguard-go lanrage; do
    printf "$fmt" "$l" "${MTU[$l]:-?}" "${TCP[$l]}" "$(ratio "${TCP[$l]}" "${TCP[raw]}")" \
        "${PMIN[$l]}/${PMED[$l]}/${P99[$l]} ${PLOSS[$l]}%" "$(ratio "${PMED[$l]}" "${PMED[raw]}")" \
        "${UMED[$l]}/${U99[$l]}" "$(ratio "${UMED[$l]}" "${UMED[raw]}")" "${CPU[$l]}" "${NOTE[$l]:-}"
done
echo
printf "lanrage vs wireguard-go:  TCP x%s   ping median x%s (p99 x%s)   UDP64 median x%s (p99 x%s)   daemon CPU x%s\n" \
    "$(ratio "${TCP[lanrage]}" "${TCP[wireguard-go]}")" \
    "$(ratio "${PMED[lanrage]}" "${PMED[wireguard-go]}")" "$(ratio "${P99[lanrage]}" "${P99[wireguard-go]}")" \
    "$(ratio "${UMED[lanrage]}" "${UMED[wireguard-go]}")" "$(ratio "${U99[lanrage]}" "${U99[wireguard-go]}")" \
    "$(ratio "${CPU[lanrage]}" "${CPU[wireguard-go]}")"
printf "daemon CPU %% per Gbit/s of TCP:  wireguard-go %s   lanrage %s   (lanrage/wireguard-go x%s)\n" \
    "$(per_gbit "${CPU[wireguard-go]}" "${TCP[wireguard-go]}")" "$(per_gbit "${CPU[lanrage]}" "${TCP[lanrage]}")" \
    "$(ratio "$(per_gbit "${CPU[lanrage]}" "${TCP[lanrage]}")" "$(per_gbit "${CPU[wireguard-go]}" "${TCP[wireguard-go]}")")"
echo "(CPU % = utime+stime of both tunnel daemons during the TCP run, 100 = one core, this host has $(nproc) cores;"
echo " TCP x>1 means LANrage is faster; latency and CPU x>1 mean LANrage is slower / costlier)"

if [ ${#FAILED[@]} -gt 0 ]; then
    log "FAILED: ${FAILED[*]}"
    exit 2
fi
exit 0
