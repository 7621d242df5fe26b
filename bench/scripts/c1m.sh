#!/usr/bin/env bash
# The largest idle total this machine holds: GATEWAYS gateway processes (one
# shard each, each under the 20,000-fd cap) and as many load workers, with
# source addresses rotated so no (source, target) pair runs out of ports.
#
#   bench/scripts/c1m.sh [TOTAL_CONNS] [PER_GATEWAY] [RAMP] [HOLD]
#
# tern-load refuses (with the fix) before connecting if a limit will be hit.
#
# HEARTBEAT_MS (default 300000) is the gateways' ping interval: at 30 s,
# 1M connections ping 33,000 times a second, and one ping round trip costs
# the pair (gateway + load worker) ~80 µs of CPU here — more than 2 cores.
source "$(dirname "$0")/lib.sh"
TOTAL=${1:-1000000}; PER=${2:-19000}; RAMP=${3:-20000}; HOLD=${4:-30}
HEARTBEAT_MS=${HEARTBEAT_MS:-300000}
printf '[session]\nheartbeat_interval_ms = %s\n' "$HEARTBEAT_MS" >"$OUT/c1m.toml"
export TERN_CONFIG="$OUT/c1m.toml"
GW=$(( (TOTAL + PER - 1) / PER ))
build
targets=(); pids=()
for k in $(seq 0 $((GW - 1))); do
  start_tern $((27400 + 2 * k)) $((29400 + k)) 1
  targets+=("127.0.0.1:$((27400 + 2 * k))"); pids+=("$LAST_PID")
done
free -m | awk '/Mem:/{print "before: used " $3 " MiB, available " $7 " MiB"}'
IFS=,; T="${targets[*]}"; P="${pids[*]}"; unset IFS
# Peak memory while the run holds its connections (kernel socket memory is
# not in any process's RSS, so watch the machine's "used").
( peak=0; while sleep 2; do u=$(free -m | awk '/Mem:/{print $3}'); [ "$u" -gt "$peak" ] && peak=$u && echo "$peak" >"$OUT/c1m-peak-used-mib"; done ) &
SAMPLER=$!; PIDS+=("$SAMPLER")
"$LOAD" idle --target "$T" --jwt-secret "$SECRET" --conns "$TOTAL" --ramp "$RAMP" --hold "$HOLD" \
  --gateway-pid "$P" --connect-timeout-ms 30000 --json >"$OUT/c1m-$TOTAL.json" 2>"$OUT/c1m-$TOTAL.progress" || { tail -5 "$OUT/c1m-$TOTAL.progress"; exit 2; }
echo "peak used: $(cat "$OUT/c1m-peak-used-mib") MiB"
jq -c '{conns, workers, sources, established, held, failed, fail_reasons, close_reasons, ramp_ms, connect_rate_per_s, gateway_bytes_per_conn, connect_p99_us}' "$OUT/c1m-$TOTAL.json"
echo "machine: $(machine)"
