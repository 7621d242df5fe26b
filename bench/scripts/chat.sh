#!/usr/bin/env bash
# Chat latency at several send rates against one gateway: send→ack and
# send→deliver percentiles, with the history checker on. The embedded store
# by default; STORE=redis runs the gateway on a local redis-server (AOF,
# appendfsync always — what the store requires) that the script starts.
#
#   bench/scripts/chat.sh [PAIRS] [SECS] [RATES...]
#   STORE=redis bench/scripts/chat.sh 1000 15 500 1000 2000 5000
source "$(dirname "$0")/lib.sh"
PAIRS=${1:-1000}; SECS=${2:-20}; shift 2 || true
RATES=("${@:-100 1000 5000 10000 20000}")
[ $# -eq 0 ] && RATES=(100 1000 5000 10000 20000)
build
if [ "${STORE:-embedded}" = redis ]; then
  start_redis 27379
  TERN_EXTRA=(--store redis --redis-url redis://127.0.0.1:27379)
fi
echo "store: ${STORE:-embedded}"
start_tern 27400 27480
printf '%8s %8s %8s %8s %9s %9s %9s %9s %9s %9s %6s %5s\n' rate planned sent acked ack_p50 ack_p99 ack_p999 dlv_p50 dlv_p99 dlv_p999 lost dup
for r in "${RATES[@]}"; do
  "$LOAD" chat --target 127.0.0.1:27400 --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "$r" \
    --duration "$SECS" --verify --json --quiet >"$OUT/chat-${STORE:-embedded}-$r.json" || true
  jq -r '[.planned_sends, .sent, .acked, .ack_p50_us, .ack_p99_us, .ack_p999_us, .deliver_p50_us, .deliver_p99_us, .deliver_p999_us, .lost, .duplicated] | @tsv' \
    "$OUT/chat-${STORE:-embedded}-$r.json" | awk -v r="$r" '{printf "%8s %8s %8s %8s %9s %9s %9s %9s %9s %9s %6s %5s\n", r,$1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11}'
done
echo "machine: $(machine)"
