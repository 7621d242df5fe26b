#!/usr/bin/env bash
# Chat send→ack latency with webhooks configured vs without, in one run: each
# round starts a fresh gateway per mode (none; after-events; after-events +
# before-send) against the same local receiver (webhook_receiver.py, which
# checks every signature) and runs the same tern-load chat on it.
#
#   bench/scripts/webhooks.sh [PAIRS] [SECS] [RATE] [ROUNDS]
#   bench/scripts/webhooks.sh 200 5 1000 3      # 5,000 messages per run
source "$(dirname "$0")/lib.sh"
PAIRS=${1:-200}; SECS=${2:-5}; RATE=${3:-1000}; ROUNDS=${4:-3}
HOOK_SECRET=bench-hook-secret
build
port_free 27590
python3 "$ROOT/bench/scripts/webhook_receiver.py" 27590 "$HOOK_SECRET" >"$OUT/webhook-receiver.log" 2>&1 &
RECEIVER=$!; PIDS+=("$RECEIVER")
wait_port 127.0.0.1 27590
conf() { # mode -> path of a config file
  local f="$OUT/webhooks-$1.toml"
  case $1 in
    none) : >"$f" ;;
    events) printf '[webhooks]\nsecret = "%s"\nevents_url = "http://127.0.0.1:27590/events"\n' "$HOOK_SECRET" >"$f" ;;
    both) printf '[webhooks]\nsecret = "%s"\nevents_url = "http://127.0.0.1:27590/events"\nbefore_send_url = "http://127.0.0.1:27590/before-send"\n' "$HOOK_SECRET" >"$f" ;;
  esac
  echo "$f"
}
printf '%5s %7s %7s %7s %8s %8s %9s %9s %10s %8s\n' round mode sent acked ack_p50 ack_p99 ack_p999 dlv_p99 delivered dropped
for round in $(seq 1 "$ROUNDS"); do
  for mode in none events both; do
    TERN_EXTRA=(--config "$(conf $mode)")
    start_tern 27500 27580
    pid=$LAST_PID
    "$LOAD" chat --target 127.0.0.1:27500 --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "$RATE" \
      --duration "$SECS" --json --quiet >"$OUT/webhooks-$mode-$round.json" || true
    sleep 1 # let the feed catch up before reading its counters
    metrics=$(curl -s http://127.0.0.1:27580/metrics)
    delivered=$(echo "$metrics" | awk '/^tern_webhook_events_delivered_total /{print $2}')
    dropped=$(echo "$metrics" | awk '/^tern_webhook_events_dropped_total /{print $2}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    jq -r '[.sent, .acked, .ack_p50_us, .ack_p99_us, .ack_p999_us, .deliver_p99_us] | @tsv' \
      "$OUT/webhooks-$mode-$round.json" |
      awk -v r="$round" -v m="$mode" -v d="$delivered" -v x="$dropped" \
        '{printf "%5s %7s %7s %7s %8s %8s %9s %9s %10s %8s\n", r,m,$1,$2,$3,$4,$5,$6,d,x}'
  done
done
kill "$RECEIVER"; wait "$RECEIVER" 2>/dev/null || true
echo "receiver: $(tail -1 "$OUT/webhook-receiver.log")"
echo "machine: $(machine)"
