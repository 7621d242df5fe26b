#!/usr/bin/env bash
# 1:1 chat latency and group fan-out over TLS vs plain TCP, in one run and on
# one gateway (2 shards, embedded store) that has both listeners: each load
# runs first on the plain port, then on the TLS port (a throwaway self-signed
# P-256 certificate; tern-load --tls --insecure), and the gateway's CPU
# (utime + stime) is taken around each, per message or delivery.
#
#   bench/scripts/tls-load.sh [PAIRS] [SECS] [RATE] [G] [GRATE]
#   bench/scripts/tls-load.sh 1000 10 1000 1000 300
source "$(dirname "$0")/lib.sh"
PAIRS=${1:-1000}; SECS=${2:-10}; RATE=${3:-1000}; G=${4:-1000}; GRATE=${5:-300}
build
tls_cert
PORT=27700
TERN_EXTRA=(--tls-listen "127.0.0.1:$((PORT + 2))")
start_tern "$PORT" "$((PORT + 80))" 2
GW=$LAST_PID
wait_port 127.0.0.1 "$((PORT + 2))"
run() { # label scenario args...: one tern-load run on the plain or TLS port
  local label=$1 scenario=$2; shift 2
  local target="127.0.0.1:$PORT" tls=()
  case $label in *tls*) target="127.0.0.1:$((PORT + 2))"; tls=(--tls --insecure) ;; esac
  local c0 c1; c0=$(cpu_ms "$GW")
  "$LOAD" "$scenario" --target "$target" "${tls[@]}" --jwt-secret "$SECRET" --connect-timeout-ms 30000 \
    "$@" --json --quiet >"$OUT/tls-load-$label.json" || true
  c1=$(cpu_ms "$GW")
  echo "$((c1 - c0))" >"$OUT/tls-load-$label.cpu"
}
run chat-plain chat --pairs "$PAIRS" --rate "$RATE" --duration "$SECS" --verify
run chat-tls chat --pairs "$PAIRS" --rate "$RATE" --duration "$SECS" --verify
run fanout-plain group --groups 1 --group-size "$G" --rate "$GRATE" --duration "$SECS"
run fanout-tls group --groups 1 --group-size "$G" --rate "$GRATE" --duration "$SECS"
printf '%-13s %8s %8s %9s %9s %9s %9s %5s %5s %14s\n' run sent acked ack_p50 ack_p99 dlv_p50 dlv_p99 lost dup "cpu/message"
for l in chat-plain chat-tls; do
  jq -r --arg l "$l" --arg c "$(cat "$OUT/tls-load-$l.cpu")" \
    '[$l, .sent, .acked, .ack_p50_us, .ack_p99_us, .deliver_p50_us, .deliver_p99_us, (.lost // "-"), (.duplicated // "-"), (if .sent > 0 then ($c | tonumber) * 1000 / .sent | floor else 0 end)] | @tsv' \
    "$OUT/tls-load-$l.json" | awk '{ printf "%-13s %8s %8s %9s %9s %9s %9s %5s %5s %11s us\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
done
printf '%-13s %8s %10s %12s %9s %9s %14s\n' run sent delivered deliveries/s dlv_p50 dlv_p99 "cpu/delivery"
for l in fanout-plain fanout-tls; do
  jq -r --arg l "$l" --arg c "$(cat "$OUT/tls-load-$l.cpu")" \
    '[$l, .sent, .delivered, .deliveries_per_s, .deliver_p50_us, .deliver_p99_us, (if .delivered > 0 then ($c | tonumber) * 1000 / .delivered else 0 end)] | @tsv' \
    "$OUT/tls-load-$l.json" | awk '{ printf "%-13s %8s %10s %12.0f %9s %9s %11.2f us\n", $1, $2, $3, $4, $5, $6, $7 }'
done
echo "gateway: 2 shards, embedded store, plain and TLS listeners; pairs $PAIRS at $RATE msg/s, G $G at $GRATE msg/s, $SECS s each"
echo "machine: $(machine)"
