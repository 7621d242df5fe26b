#!/usr/bin/env bash
# Encryption at rest on vs off, in one run: each round starts a fresh
# gateway per mode (off; on, with a one-key file) and runs the same 1:1 chat
# (send→ack and send→deliver percentiles) and the same group fan-out
# (deliveries/s) on it. The embedded store by default; STORE=redis runs the
# gateways on a local redis-server (AOF, appendfsync always) the script
# starts.
#
#   bench/scripts/encryption.sh [PAIRS] [SECS] [RATE] [G:GRATE] [ROUNDS]
#   bench/scripts/encryption.sh 200 5 1000 1000:30 3
source "$(dirname "$0")/lib.sh"
PAIRS=${1:-200}; SECS=${2:-5}; RATE=${3:-1000}; GROUP=${4:-1000:30}; ROUNDS=${5:-3}
G=${GROUP%%:*}; GRATE=${GROUP##*:}
build
BASE_EXTRA=()
if [ "${STORE:-embedded}" = redis ]; then
  start_redis 27379
  BASE_EXTRA=(--store redis --redis-url redis://127.0.0.1:27379)
fi
KEYS="$OUT/encryption-keys"
printf 'k1 = %s\n' "$(head -c 32 /dev/urandom | base64)" >"$KEYS"
conf() { # mode -> path of a config file
  local f="$OUT/encryption-$1.toml"
  case $1 in
    off) : >"$f" ;;
    on) printf '[encryption]\nkeys_file = "%s"\n' "$KEYS" >"$f" ;;
  esac
  echo "$f"
}
echo "store: ${STORE:-embedded}"
printf '%5s %4s %7s %7s %8s %8s %9s %9s %7s %12s %9s\n' round mode sent acked ack_p50 ack_p99 ack_p999 dlv_p99 G deliveries/s gdlv_p99
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    TERN_EXTRA=("${BASE_EXTRA[@]}" --config "$(conf $mode)")
    start_tern 27600 27680
    pid=$LAST_PID
    "$LOAD" chat --target 127.0.0.1:27600 --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "$RATE" \
      --duration "$SECS" --json --quiet >"$OUT/encryption-chat-$mode-$round.json" || true
    "$LOAD" group --target 127.0.0.1:27600 --jwt-secret "$SECRET" --groups 1 --group-size "$G" \
      --rate "$GRATE" --duration "$SECS" --ramp 10000 --json --quiet >"$OUT/encryption-group-$mode-$round.json" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    chat=$(jq -r '[.sent, .acked, .ack_p50_us, .ack_p99_us, .ack_p999_us, .deliver_p99_us] | @tsv' "$OUT/encryption-chat-$mode-$round.json")
    group=$(jq -r '[.deliveries_per_s, .deliver_p99_us] | @tsv' "$OUT/encryption-group-$mode-$round.json")
    echo "$chat	$group" | awk -v r="$round" -v m="$mode" -v g="$G" \
      '{printf "%5s %4s %7s %7s %8s %8s %9s %9s %7s %12.0f %9s\n", r,m,$1,$2,$3,$4,$5,$6,g,$7,$8}'
  done
done
echo "machine: $(machine)"
