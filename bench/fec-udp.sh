#!/usr/bin/env bash
# bench/fec-udp.sh TUNNEL [runs]: residual loss of a UDP stream and its cost on the wire, at
# 5% and 10% random loss each way, on the shared namespace lab. TUNNEL is a lab peer name or
# `culvert@F` (see bench/lib.sh). Each run: iperf3 -u -b 20M -l 1200 -t 10 from the client;
# prints the packets lost and the bytes the client put on the wire per payload byte (read
# from the router's counters), so FEC shapes can be compared on what they cost, not only on
# what they recover.
# Env: LAB (default ../shared/lab), CULVERT_BIN (default target/release/culvert), TINYVPN_BIN.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
parse_spec "${1:?usage: bench/fec-udp.sh TUNNEL [runs]}"; RUNS=${2:-5}
"$LAB/netlab.sh" up routed >/dev/null
trap '"$LAB/impair.sh" clear >/dev/null 2>&1; "$LAB/peers/$PEER_NAME.sh" down >/dev/null 2>&1; "$LAB/netlab.sh" down >/dev/null' EXIT
"$LAB/peers/$PEER_NAME.sh" up >/dev/null
wire() { rtr cat /sys/class/net/eth-cli/statistics/rx_bytes; }
for loss in 5 10; do
  "$LAB/impair.sh" loss "$loss" >/dev/null
  for i in $(seq "$RUNS"); do
    PIDS=fecudp spawn "$SRV_NS" iperf3-server iperf3 -s -1
    sleep 0.3
    b0=$(wire)
    read -r lost packets < <(cli iperf3 -c "$OVL_SRV" -u -b 20M -l 1200 -t 10 -J 2>/dev/null |
      jq -r '.end.sum_received | "\(.lost_packets // 0) \(.packets // 0)"')
    b1=$(wire)
    stop_pids fecudp
    awk -v t="$LABEL" -v l="$loss" -v i="$i" -v lo="$lost" -v p="$packets" -v b=$((b1 - b0)) 'BEGIN {
      printf "%s at %s%% run %s: lost %s of %s (%.4f%%), wire bytes per payload byte %.2f\n",
        t, l, i, lo, p, (p > 0 ? 100 * lo / p : 100), (p > 0 ? b / (p * 1200) : 0) }'
    sleep 1
  done
done
