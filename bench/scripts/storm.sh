#!/usr/bin/env bash
# Reconnect storm: CONNS clients, drop them all at once, reconnect without
# and with jittered backoff; time until every one is back, and what the
# gateway's counters (accepts, auth failures) did.
#
#   bench/scripts/storm.sh [CONNS] [JITTER_MS]
source "$(dirname "$0")/lib.sh"
CONNS=${1:-19000}; JITTER=${2:-5000}
build
start_tern 27400 27480; PID=$LAST_PID
for j in 0 "$JITTER"; do
  "$LOAD" storm --target 127.0.0.1:27400 --jwt-secret "$SECRET" --conns "$CONNS" --ramp 10000 \
    --hold 20 --storm-at 3 --fraction 1 --jitter-ms "$j" --gateway-pid "$PID" \
    --metrics http://127.0.0.1:27480/metrics --json --quiet >"$OUT/storm-j$j.json"
  jq -c '{jitter_ms: '"$j"', dropped, reconnected, reconnect_all_ms, reconnect_failures, reconnect_p50_us, reconnect_p99_us, fail_reasons, metrics_delta}' "$OUT/storm-j$j.json"
done
echo "machine: $(machine)"
