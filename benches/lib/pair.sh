# benches/lib/pair.sh - two LANrage players on one switch, in a party, for the benchmarks.
# Sourced, not run. Before sourcing set: NAME (log tag), PFX (namespace prefix, e.g. lrl),
# NET (first three octets of the underlay, e.g. 10.97.0), ROOT, SKIP_BUILD, KEEP.
#
# Topology (fresh namespaces $PFX-<pid>-*, deleted on exit; nothing in the root namespace):
#   $PFX-<pid>-sw: bridge; -ctl $NET.1 (control plane), -a $NET.2, -b $NET.3
# `pair_up` starts the control plane and `lanrage up` in A and B, A creates a party, B joins,
# and waits for a direct path. Afterwards: NS_A NS_B (namespaces), TMP (logs, state dirs
# $TMP/pA and $TMP/pB), A_IP B_IP (virtual IPs), BIN, and the helpers nsx, wait_until,
# status, log, die.

log() { echo "[$NAME] $*" >&2; }
die() { echo "$NAME: error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, TUN devices)"
for c in ip python3 timeout; do command -v "$c" >/dev/null || die "missing $c"; done
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/lanrage
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p lanrage"
    (cd "$ROOT" && cargo build --release -p lanrage) >&2 || die "build failed"
fi
[ -x "$BIN" ] || die "no LANrage binary at $BIN"

P=$PFX-$$
NS_SW=$P-sw NS_C=$P-ctl NS_A=$P-a NS_B=$P-b
TMP=$(mktemp -d "/tmp/$PFX-$$.XXXXXX") || die "mktemp failed"
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
    if [ "$rc" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$TMP"; else log "logs kept in $TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }
wait_until() {
    local end=$((SECONDS + $1)); shift
    while ! "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.2; done
}
status() { nsx "$1" timeout 5 "$BIN" status --json --state-dir "$2"; }

pair_up() {
    local ns i pair code
    for ns in $NS_SW $NS_C $NS_A $NS_B; do
        ip netns add "$ns" || die "ip netns add $ns"
        CREATED="$ns $CREATED"
        ip -n "$ns" link set lo up
    done
    ip -n "$NS_SW" link add br0 type bridge && ip -n "$NS_SW" link set br0 up
    i=0
    for pair in "$NS_C $NET.1" "$NS_A $NET.2" "$NS_B $NET.3"; do
        set -- $pair
        ip -n "$NS_SW" link add "p$i" type veth peer name eth0 netns "$1"
        ip -n "$NS_SW" link set "p$i" master br0 up
        ip -n "$1" addr add "$2/24" dev eth0
        ip -n "$1" link set eth0 up
        i=$((i + 1))
    done
    nsx "$NS_C" "$BIN" control --listen "$NET.1:8667" --database "sqlite://$TMP/ctl.db" >"$TMP/control.log" 2>&1 &
    wait_until 10 nsx "$NS_C" bash -c "exec 3<>/dev/tcp/$NET.1/8667" || die "control plane did not start"
    nsx "$NS_A" "$BIN" up --control "http://$NET.1:8667" --state-dir "$TMP/pA" --name A >"$TMP/A.log" 2>&1 &
    nsx "$NS_B" "$BIN" up --control "http://$NET.1:8667" --state-dir "$TMP/pB" --name B >"$TMP/B.log" 2>&1 &
    wait_until 15 status "$NS_A" "$TMP/pA" || die "daemon A did not start"
    wait_until 15 status "$NS_B" "$TMP/pB" || die "daemon B did not start"
    code=$(nsx "$NS_A" "$BIN" party create bench --state-dir "$TMP/pA" 2>/dev/null | tail -1)
    nsx "$NS_B" "$BIN" party join "$code" --state-dir "$TMP/pB" >/dev/null || die "join failed"
    A_IP=$(status "$NS_A" "$TMP/pA" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual_ip"])')
    B_IP=$(status "$NS_B" "$TMP/pB" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual_ip"])')
    wait_until 20 pair_direct || die "B has no direct path to A"
    log "A is $A_IP, B is $B_IP; direct path up"
}
pair_direct() { status "$NS_B" "$TMP/pB" | grep -q '"path": "direct"'; }

# summary FILE -> "median p99 lost" of one round trip (us) per line, "lost" lines counted
summary() {
    local lost
    lost=$(grep -c '^lost$' "$1")
    grep -v '^lost$' "$1" | sort -n | awk -v lost="$lost" '{a[NR] = $1} END {
        if (NR == 0) { print "nan nan " lost; exit }
        med = (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)
        i = int(0.99 * NR); if (i < 0.99 * NR) i++
        printf "%d %d %d\n", med, a[i], lost }'
}
