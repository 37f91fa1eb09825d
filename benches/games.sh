#!/usr/bin/env bash
# benches/games.sh - what game detection costs: loading the shipped profiles, and one scan
# of the machine with PROCS (default 500) extra processes running, as CPU time and as a
# share of one core at the default 5 s interval. No network, no root needed.
# Usage: benches/games.sh        Env: PROCS=500 ROUNDS=20
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo run --release -q -p lanrage-daemon --example games_bench
