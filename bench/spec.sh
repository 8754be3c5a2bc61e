# bench/spec.sh: sourced by the bench scripts. `parse_spec SPEC` reads a tunnel spec —
# a lab peer name, `culvert:T` (culvert with --transport T) or `culvert@F` (culvert with
# --fec F) — and sets PEER_NAME and LABEL and exports CULVERT_TRANSPORT / CULVERT_FEC.
parse_spec() {
  PEER_NAME=${1%%[:@]*} LABEL=${1%%[:@]*}
  unset CULVERT_TRANSPORT CULVERT_FEC
  case $1 in
    *@*) export CULVERT_FEC=${1#*@}; LABEL=$PEER_NAME-fec${CULVERT_FEC/:/.} ;;
    *:*) export CULVERT_TRANSPORT=${1#*:}; LABEL=$PEER_NAME-${1#*:} ;;
  esac
}
