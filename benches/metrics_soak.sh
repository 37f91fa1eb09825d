#!/usr/bin/env bash
# benches/metrics_soak.sh - does per-peer metric history stay inside its fixed memory bound?
# PEERS (default 64) peers x 6 series (latency, jitter, loss, quality, rx/tx bytes), one
# sample per series per simulated second on a virtual clock, HOURS (default 48) simulated
# hours in a few seconds of wall time. At 30 min, 1 h, 6 h, 24 h and 48 h it prints the
# store's memory against series x Series::MAX_BYTES, the process RSS, and median/max
# latency of 1 h and 24 h window queries; then half the peers leave and expire.
# Exits non-zero if the bound is exceeded. No network, no root needed.
# Usage: benches/metrics_soak.sh        Env: PEERS=64 HOURS=48 QUERIES=1000 POINTS=300
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for v in PEERS HOURS QUERIES POINTS; do
    val=${!v:-1}
    [[ $val =~ ^[1-9][0-9]*$ ]] || { echo "metrics_soak.sh: error: $v must be a positive integer (got '$val')" >&2; exit 1; }
done
cargo run --release -q -p lanrage-sim --example metrics_soak
