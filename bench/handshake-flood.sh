#!/usr/bin/env bash
# bench/handshake-flood.sh [RATE] [SECONDS]: a server with one client streaming 1000 UDP
# datagrams a second through the tunnel, while the router floods the server with RATE
# forged handshake message 1 per second (default 20000) for SECONDS (default 10) of each
# kind: none, valid under the passphrase from spoofed sources (psk), under a wrong one
# (stranger), valid from one address (one-source). Prints the client's loss and the
# server's CPU and RSS per kind, as a Markdown table. Needs root; builds the release binary.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "the bench needs root (network namespaces)" >&2; exit 2; }
cd "$ROOT"
cargo build --release -q -p culvert --bin culvert --example handshake_flood
CULVERT_BIN="$ROOT/target/release/culvert" exec "$ROOT/target/release/examples/handshake_flood" "${1:-20000}" "${2:-10}"
