#!/usr/bin/env bash
# Group fan-out: deliveries/s for groups of G members, one sender per group.
#
#   bench/scripts/fanout.sh [SECS] [G:RATE ...]     e.g. 100:500 1000:100 10000:10
source "$(dirname "$0")/lib.sh"
SECS=${1:-10}; shift || true
CASES=("$@"); [ ${#CASES[@]} -eq 0 ] && CASES=(100:1000 1000:200 10000:20)
build
start_tern 27400 27480
printf '%7s %6s %8s %10s %9s %12s %9s %9s %9s\n' G rate sent delivered repeated deliveries/s dlv_p50 dlv_p99 dlv_max
for c in "${CASES[@]}"; do
  g=${c%%:*}; r=${c##*:}
  "$LOAD" group --target 127.0.0.1:27400 --jwt-secret "$SECRET" --groups 1 --group-size "$g" \
    --rate "$r" --duration "$SECS" --ramp 10000 --metrics http://127.0.0.1:27480/metrics --json --quiet >"$OUT/fanout-$g.json"
  jq -r '[.sent, .delivered, .pushes_repeated, .deliveries_per_s, .deliver_p50_us, .deliver_p99_us, .deliver_max_us] | @tsv' "$OUT/fanout-$g.json" |
    awk -v g="$g" -v r="$r" '{printf "%7s %6s %8s %10s %9s %12.0f %9s %9s %9s\n", g, r, $1, $2, $3, $4, $5, $6, $7}'
done
echo "machine: $(machine)"
