#!/usr/bin/env bash
# bench/p2p-matrix.sh [TRIES]: for each NAT combination (cone/cone, same LAN, cone/symmetric,
# symmetric/symmetric, public/cone, public/symmetric), TRIES fresh namespace labs (default 5): how many ended
# on a direct path, and the median time from the first client-to-client packet. Prints a
# Markdown table. Needs root; builds the release binary.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "the bench needs root (network namespaces)" >&2; exit 2; }
cd "$ROOT"
cargo build --release -q -p culvert --bin culvert --example p2p_matrix
CULVERT_BIN="$ROOT/target/release/culvert" exec "$ROOT/target/release/examples/p2p_matrix" "${1:-5}"
