#!/usr/bin/env bash
# The largest idle total this machine holds: GATEWAYS gateway processes (one
# shard each, each under the 20,000-fd cap) and as many load workers, with
# source addresses rotated so no (source, target) pair runs out of ports.
#
#   bench/scripts/c1m.sh [TOTAL_CONNS] [PER_GATEWAY] [RAMP] [HOLD]
#
# tern-load refuses (with the fix) before connecting if a limit will be hit.
source "$(dirname "$0")/lib.sh"
TOTAL=${1:-1000000}; PER=${2:-19000}; RAMP=${3:-20000}; HOLD=${4:-30}
GW=$(( (TOTAL + PER - 1) / PER ))
build
targets=(); pids=()
for k in $(seq 0 $((GW - 1))); do
  start_tern $((27400 + 2 * k)) $((29400 + k)) 1
  targets+=("127.0.0.1:$((27400 + 2 * k))"); pids+=("$LAST_PID")
done
free -m | awk '/Mem:/{print "before: used " $3 " MiB, available " $7 " MiB"}'
IFS=,; T="${targets[*]}"; P="${pids[*]}"; unset IFS
"$LOAD" idle --target "$T" --jwt-secret "$SECRET" --conns "$TOTAL" --ramp "$RAMP" --hold "$HOLD" \
  --gateway-pid "$P" --connect-timeout-ms 30000 --json >"$OUT/c1m-$TOTAL.json"
jq -c '{conns, workers, sources, established, held, failed, fail_reasons, close_reasons, ramp_ms, connect_rate_per_s, gateway_bytes_per_conn, connect_p99_us}' "$OUT/c1m-$TOTAL.json"
echo "machine: $(machine)"
