#!/usr/bin/env bash
# bench/exit-ratio.sh: full-tunnel throughput through an exit, as a ratio of the overlay's,
# for culvert and for wireguard-go (Debian's package) in the same run and the same topology
# as the gateway e2e test: server 198.18.1.2, client 198.18.2.2 and an "Internet" host
# 198.18.3.2 on one router, which drops client <-> Internet, so the exit path crosses the
# router twice and the server's forwarding and masquerade. iperf3, one stream, T seconds,
# overlay and exit alternating, PAIRS pairs per tunnel.
#
# It builds its own namespaces (not the lab's), but takes the lab's helpers through
# bench/lib.sh like the other benches.
# Env: LAB (default ../shared/lab), CULVERT_BIN (default target/release/culvert, built if
#      missing), PAIRS=4, T=8, ONLY=culvert|wireguard-go to run one of the two.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
need_apt jq jq; need_apt wireguard-go wireguard-go; need_apt wg wireguard-tools
PAIRS=${PAIRS:-4} T=${T:-8} ONLY=${ONLY:-}
NS="xr-s xr-c xr-i xr-r"
KEY=$(head -c 24 /dev/urandom | base64)
TMP=$(mktemp -d)
cleanup() {
  for n in $NS; do ip netns pids $n 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  sleep 0.5
  for n in $NS; do ip netns del $n 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
nsx() { ip netns exec "$@"; }

for n in $NS; do ip netns add $n; ip -n $n link set lo up; done
k=1
for n in xr-s xr-c xr-i; do
  ip link add r$k netns xr-r type veth peer name eth0 netns $n
  ip -n xr-r addr add 198.18.$k.1/24 dev r$k; ip -n xr-r link set r$k up
  ip -n $n addr add 198.18.$k.2/24 dev eth0; ip -n $n link set eth0 up
  ip -n $n route add default via 198.18.$k.1
  k=$((k + 1))
done
nsx xr-r sysctl -qw net.ipv4.ip_forward=1
nsx xr-r nft -f - <<'EOF'
table inet exit_ratio {
  chain forward_filter {
    type filter hook forward priority 0;
    ip saddr 198.18.2.2 ip daddr 198.18.3.2 drop
    ip saddr 198.18.3.2 ip daddr 198.18.2.2 drop
  }
}
EOF
nsx xr-i iperf3 -s -D -B 198.18.3.2

mbps() { nsx xr-c iperf3 -c "$1" -t "$T" -J --connect-timeout 3000 | jq '.end.sum_received.bits_per_second / 1e6'; }
measure() { # LABEL OVERLAY_ADDR
  nsx xr-c ping -c 2 -W 2 "$2" >/dev/null || { echo "$1: overlay down" >&2; return 1; }
  nsx xr-c ping -c 2 -W 2 198.18.3.2 >/dev/null || { echo "$1: exit down" >&2; return 1; }
  for p in $(seq "$PAIRS"); do
    o=$(mbps "$2"); e=$(mbps 198.18.3.2)
    printf '%s pair %d: overlay %.0f Mbit/s, exit %.0f Mbit/s, ratio %.3f\n' \
      "$1" "$p" "$o" "$e" "$(jq -n "$e / $o")"
  done
}

if [ "$ONLY" != culvert ]; then
  # Each wireguard-go has its own name: the UAPI socket directory is not per namespace.
  for n in s c; do nsx xr-$n env WG_PROCESS_FOREGROUND=1 wireguard-go wg$n >/dev/null 2>&1 & done
  for _ in $(seq 50); do
    ip -n xr-s link show wgs >/dev/null 2>&1 && ip -n xr-c link show wgc >/dev/null 2>&1 && break
    sleep 0.2
  done
  (umask 077; wg genkey > "$TMP/s"; wg genkey > "$TMP/c")
  nsx xr-s wg set wgs listen-port 51820 private-key "$TMP/s" \
    peer "$(wg pubkey < "$TMP/c")" allowed-ips 10.99.0.2/32
  nsx xr-c wg set wgc private-key "$TMP/c" peer "$(wg pubkey < "$TMP/s")" \
    allowed-ips 10.99.0.0/24,198.18.3.0/24 endpoint 198.18.1.2:51820
  ip -n xr-s addr add 10.99.0.1/24 dev wgs; ip -n xr-s link set wgs up
  ip -n xr-c addr add 10.99.0.2/24 dev wgc; ip -n xr-c link set wgc up
  ip -n xr-c route add 198.18.3.0/24 dev wgc
  nsx xr-s sysctl -qw net.ipv4.ip_forward=1
  nsx xr-s nft -f - <<'EOF'
table ip exit_ratio_nat {
  chain postrouting {
    type nat hook postrouting priority 100;
    ip saddr 10.99.0.0/24 oifname "eth0" masquerade
  }
}
EOF
  nsx xr-s iperf3 -s -D -B 10.99.0.1
  measure wireguard-go 10.99.0.1
  ip netns pids xr-s | xargs -r kill; ip netns pids xr-c | xargs -r kill; sleep 1
  nsx xr-s nft delete table ip exit_ratio_nat; nsx xr-s sysctl -qw net.ipv4.ip_forward=0
  ip netns pids xr-i | xargs -r kill; sleep 0.5; nsx xr-i iperf3 -s -D -B 198.18.3.2
fi

if [ "$ONLY" != wireguard-go ]; then
  nsx xr-s "$CULVERT_BIN" server -l 0.0.0.0:9000 -t 10.0.0.1/24 -k "$KEY" --nat \
    --state-dir "$TMP/ss" >"$TMP/server.log" 2>&1 &
  sleep 1
  nsx xr-c "$CULVERT_BIN" client -r 198.18.1.2:9000 -t 10.0.0.2/24 -k "$KEY" --full-tunnel \
    --state-dir "$TMP/sc" >"$TMP/client.log" 2>&1 &
  for _ in $(seq 40); do nsx xr-c ping -c 1 -W 1 10.0.0.1 >/dev/null 2>&1 && break; sleep 0.5; done
  nsx xr-s iperf3 -s -D -B 10.0.0.1
  measure culvert 10.0.0.1 || tail -n 8 "$TMP/server.log" "$TMP/client.log"
  # A clean exit, so that culvert removes what it set up.
  ip netns pids xr-c | xargs -r kill; ip netns pids xr-s | xargs -r kill; sleep 1
fi
