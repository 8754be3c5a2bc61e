#!/usr/bin/env bash
# bench/alternate.sh A B [pairs]: alternates two tunnels on a fresh routed lab (A B A B ...),
# one TCP stream (iperf3, CUBIC, DUR s) and a ping run (-i 0.01, 200 pings) each time, and
# prints the median A/B ratios. On a shared machine, alternation cancels most of the drift
# that separate runs suffer. A tunnel is a lab peer name, `culvert:T` for culvert with
# `--transport T`, or `culvert@F` for culvert with `--fec F` (CULVERT_ARGS from the environment).
# Env: LAB (default ../shared/lab), CULVERT_BIN (default target/release/culvert), DUR=8,
#      STREAMS=1, IMPAIR (e.g. "loss 5", applied after the tunnel is up).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
A=${1:?A} B=${2:?B} N=${3:-5} DUR=${DUR:-8} STREAMS=${STREAMS:-1}

run() {   # run <spec>: prints "mbps rtt_ms"
  local m=0 r=0 peer
  parse_spec "$1"; peer=$PEER_NAME
  "$LAB/netlab.sh" up routed >/dev/null
  if "$LAB/peers/$peer.sh" up >/dev/null 2>&1; then
    [ -n "${IMPAIR:-}" ] && "$LAB/impair.sh" $IMPAIR 2>/dev/null
    PIDS=alt spawn "$SRV_NS" iperf3-server iperf3 -s -1
    m=$(cli timeout $((DUR + 20)) iperf3 -c "$OVL_SRV" -t "$DUR" -P "$STREAMS" -C cubic -J 2>/dev/null | jq '(.end.sum_received.bits_per_second // 0) / 1e6' 2>/dev/null || echo 0)
    stop_pids alt
    r=$(cli ping -i 0.01 -c 200 -q "$OVL_SRV" 2>/dev/null | awk -F/ '/^rtt/ {print $5}')
  fi
  "$LAB/peers/$peer.sh" down >/dev/null 2>&1 || true
  "$LAB/netlab.sh" down >/dev/null
  echo "${m:-0} ${r:-0}"
}
ra=() rb=() ta=() tb=()
for i in $(seq "$N"); do
  read -r ma pa < <(run "$A"); read -r mb pb < <(run "$B")
  printf 'pair %d: %s %.0f Mbit/s %.3f ms | %s %.0f Mbit/s %.3f ms\n' "$i" "$A" "$ma" "$pa" "$B" "$mb" "$pb"
  ra+=("$(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')")
  rb+=("$(awk -v a="$pa" -v b="$pb" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')")
  ta+=("$ma"); tb+=("$mb")
done
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }
printf '%s/%s: throughput ratio median %s (%s %.0f, %s %.0f Mbit/s, %d stream(s)); RTT ratio median %s\n' \
  "$A" "$B" "$(med "${ra[@]}")" "$A" "$(med "${ta[@]}")" "$B" "$(med "${tb[@]}")" "$STREAMS" "$(med "${rb[@]}")"
