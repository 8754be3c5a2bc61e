# bench/lib.sh: sourced by the bench scripts once they have set ROOT (the repository). Finds
# the shared namespace lab (LAB, default ../shared/lab), checks for root, builds culvert when
# CULVERT_BIN (default target/release/culvert) is missing, sources the lab's helpers and
# installs the tools a peer's `up` already needs (it pings before bench.sh would install
# ping). Then `parse_spec SPEC` reads a tunnel spec —
# a lab peer name, `culvert:T` (culvert with --transport T) or `culvert@F` (culvert with
# --fec F) — and sets PEER_NAME and LABEL and exports CULVERT_TRANSPORT / CULVERT_FEC.
LAB=${LAB:-$(cd "$ROOT/../shared/lab" 2>/dev/null && pwd || true)}
[ -n "$LAB" ] && [ -x "$LAB/bench.sh" ] || { echo "set LAB to the shared lab directory" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "the bench needs root (network namespaces)" >&2; exit 2; }
export CULVERT_BIN=${CULVERT_BIN:-$ROOT/target/release/culvert}
[ -x "$CULVERT_BIN" ] || (cd "$ROOT" && cargo build --release -p culvert)
. "$LAB/common.sh"
need_apt iperf3 iperf3; need_apt ping iputils-ping

parse_spec() {
  PEER_NAME=${1%%[:@]*} LABEL=${1%%[:@]*}
  unset CULVERT_TRANSPORT CULVERT_FEC
  case $1 in
    *@*) export CULVERT_FEC=${1#*@}; LABEL=$PEER_NAME-fec${CULVERT_FEC/:/.} ;;
    *:*) export CULVERT_TRANSPORT=${1#*:}; LABEL=$PEER_NAME-${1#*:} ;;
  esac
}
