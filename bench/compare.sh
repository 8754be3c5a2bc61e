#!/usr/bin/env bash
# bench/compare.sh [peer...]: culvert against userspace tunnels in one run, on the shared
# namespace lab (../shared/lab). A peer `culvert:T` runs culvert with `--transport T`
# (udp, faketcp, auto) and is labelled culvert-T; `culvert@F` runs it with `--fec F`
# (auto, off, D:P) and is labelled culvert-fecF. Default peers: culvert boringtun
# wireguard-go openvpn. With SKIP_LOSS=0 the table adds the loss tests (5% and 10% each way):
# residual UDP loss and one TCP stream, CUBIC and BBR.
#
# namespace lab (../shared/lab). For each tunnel: a fresh routed lab, the tunnel up, the lab's
# bench.sh (TCP 1 and 4 streams, ping RTT, CPU seconds per GB, RSS), the tunnel down. Then a
# table of medians and the ratios culvert / best peer.
#
# Env: LAB=path to the lab (default ../shared/lab next to the repository)
#      CULVERT_BIN=binary (default: target/release/culvert, built if missing)
#      REPS=3 DUR=10 (passed to bench.sh), OUT=results directory (default /tmp/culvert-bench)
#      SKIP_LOSS=1 by default (the loss tests belong to the FEC bench); set 0 to run them
#      CULVERT_TRANSPORT / CULVERT_FEC / CULVERT_ARGS pass through to the culvert peer
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
OUT=${OUT:-/tmp/culvert-bench}; mkdir -p "$OUT"
export LAB_RESULTS=$OUT SKIP_LOSS=${SKIP_LOSS:-1} REPS=${REPS:-3}
PEERS=("$@"); [ ${#PEERS[@]} -gt 0 ] || PEERS=(culvert boringtun wireguard-go openvpn)
STAMP=$(date +%H%M%S)

rss_idle() {   # rss_idle <peer>: VmRSS (MB) of the first client-side tunnel process after 5 s idle
  sleep 5
  local p kb=0
  for p in $(cat "/run/vpnlab/$1.pids" 2>/dev/null); do
    [ "$(ip netns identify "$p" 2>/dev/null)" = lab-cli ] || continue
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"); break
  done
  awk -v k="$kb" 'BEGIN {printf "%.1f", k / 1024}'
}

LABELS=()
for spec in "${PEERS[@]}"; do
  parse_spec "$spec"; peer=$PEER_NAME label=$LABEL
  LABELS+=("$label")
  "$LAB/netlab.sh" up routed >/dev/null
  if ! "$LAB/peers/$peer.sh" up >/dev/null 2>"$OUT/$label-$STAMP.up.log"; then
    echo "$label: could not start (see $OUT/$label-$STAMP.up.log)" >&2
    "$LAB/netlab.sh" down >/dev/null; continue
  fi
  echo "{\"peer\":\"$label\",\"test\":\"idle\",\"rss_idle_mb\":$(rss_idle "$peer")}" > "$OUT/$label-$STAMP.idle.json"
  "$LAB/bench.sh" "$peer" "$label-$STAMP" > "$OUT/$label-$STAMP.bench.log" 2>&1 || echo "$label: bench failed (see log)" >&2
  "$LAB/peers/$peer.sh" down >/dev/null 2>&1 || true
  "$LAB/netlab.sh" down >/dev/null
done

# One row per tunnel: medians from this run's result files.
python3 - "$OUT" "$STAMP" "${LABELS[@]}" <<'PY'
import json, sys, glob, datetime
out, stamp, peers = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for p in peers:
    r = {}
    for f in glob.glob(f"{out}/*-{p}-{stamp}.jsonl"):
        for line in open(f):
            d = json.loads(line)
            if d.get("rep") != "median": continue
            loss = d.get("loss_pct", 0)
            if d["test"] == "tcp" and loss == 0:
                k = f"tcp{d['streams']}"
                r[k] = d.get("mbps")
                if d["streams"] == 1: r["cpu"] = d.get("cpu_s_per_gb")
            elif d["test"] == "tcp":
                r[f"tcp{loss}{d['cc']}"] = d.get("mbps")
            if d["test"] == "udp": r[f"udp{loss}"] = d.get("rx_loss_pct")
            if d["test"] == "ping": r["rtt"] = d.get("rtt_avg_ms")
    try: r["rss"] = json.load(open(f"{out}/{p}-{stamp}.idle.json"))["rss_idle_mb"]
    except Exception: pass
    rows[p] = r
cols = [("tcp1", "TCP 1 stream Mbit/s", max), ("tcp4", "TCP 4 streams Mbit/s", max),
        ("rtt", "RTT ms", min), ("cpu", "CPU s/GB", min), ("rss", "idle RSS MB", min)]
if any("udp5" in r for r in rows.values()):
    for l in (5, 10):
        cols += [(f"udp{l}", f"UDP loss % at {l}%", min), (f"tcp{l}cubic", f"TCP at {l}% cubic Mbit/s", max),
                 (f"tcp{l}bbr", f"TCP at {l}% bbr Mbit/s", max)]
print("| tunnel | " + " | ".join(c[1] for c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
fmt = lambda v: "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
for p in peers:
    print(f"| {p} | " + " | ".join(fmt(rows[p].get(k)) for k, _, _ in cols) + " |")
ours = [p for p in peers if p.startswith("culvert")]
others = [p for p in peers if not p.startswith("culvert")]
for mine in ours:
    print()
    for k, name, best in cols:
        vals = [(rows[p].get(k), p) for p in others if rows[p].get(k) is not None]
        c = rows[mine].get(k)
        if not vals or c is None: continue
        b, who = best(vals)
        better = "higher" if best is max else "lower"
        ratio = f"ratio {c / b:.2f}" if b else "ratio n/a"
        print(f"{name}: {mine} {fmt(c)} vs best peer {who} {fmt(b)} -> {ratio} ({better} is better)")
if "culvert-udp" in rows and "culvert-faketcp" in rows:
    u, f = rows["culvert-udp"], rows["culvert-faketcp"]
    print()
    for k in ("tcp1", "tcp4"):
        if u.get(k) and f.get(k):
            print(f"{k}: culvert-faketcp / culvert-udp = {f[k] / u[k]:.2f}")
PY
