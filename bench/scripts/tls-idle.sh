#!/usr/bin/env bash
# User-space bytes per idle authenticated connection, plain vs TLS, in one
# run: a fresh gateway (2 shards) per row, N idle connections from one
# tern-load worker held HOLD s with heartbeats, RSS with them held minus
# RSS before (tern-load --gateway-pid), divided by N. The TLS rows connect
# to --tls-listen with a throwaway self-signed P-256 certificate (openssl).
#
#   bench/scripts/tls-idle.sh [N] [HOLD] [RAMP]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}; HOLD=${2:-15}; RAMP=${3:-2000}
build
tls_cert
row() { # label port tls_flag
  local label=$1 port=$2
  local http=$((port + 80))
  TERN_EXTRA=(--tls-listen "127.0.0.1:$((port + 2))")
  start_tern "$port" "$http" 2
  local gw=$LAST_PID target="127.0.0.1:$port" tls=()
  if [ "$3" = tls ]; then target="127.0.0.1:$((port + 2))"; tls=(--tls --insecure); fi
  wait_port 127.0.0.1 "$((port + 2))"
  "$LOAD" idle --target "$target" "${tls[@]}" --jwt-secret "$SECRET" --conns "$N" \
    --ramp "$RAMP" --connect-timeout-ms 30000 --hold "$HOLD" --gateway-pid "$gw" --json --quiet >"$OUT/tls-idle-$label.json"
  jq -c --arg l "$label" '{row: $l, conns, held, failed, gateway_rss_before_bytes, gateway_rss_held_bytes, gateway_bytes_per_conn}' \
    "$OUT/tls-idle-$label.json"
  kill "$gw"; wait "$gw" 2>/dev/null || true
}
row plain 27400 plain
row tls 27500 tls
echo "machine: $(machine)"
