#!/usr/bin/env bash
# Room fan-out (docs/protocol.md, "Rooms"): one room of M joined
# connections, one poster, on one gateway (embedded store), and the
# gateway's CPU per delivery. Each case runs twice: with --rate 0 (connect,
# auth, create and join only) and with the rate; the CPU of the first is
# taken from the second, so the figure is the posting's cost alone.
#
#   bench/scripts/rooms.sh [SECS] [M:RATE ...]     e.g. 10000:30 19000:20
source "$(dirname "$0")/lib.sh"
SECS=${1:-10}; shift || true
CASES=("$@"); [ ${#CASES[@]} -eq 0 ] && CASES=(10000:30)
build
start_tern 27400 27480
TERN_PID=$LAST_PID
printf '%7s %6s %8s %10s %12s %9s %9s %9s %12s\n' M rate sent delivered deliveries/s dlv_p50 dlv_p99 ack_p99 cpu/delivery
for c in "${CASES[@]}"; do
  m=${c%%:*}; r=${c##*:}
  run() {
    "$LOAD" room --target 127.0.0.1:27400 --jwt-secret "$SECRET" --groups 1 --group-size "$((m + 1))" \
      --group-senders 1 --rate "$1" --duration "$SECS" --ramp 10000 --json --quiet
  }
  c0=$(cpu_ms "$TERN_PID"); run 0 >"$OUT/rooms-$m-idle.json"; c1=$(cpu_ms "$TERN_PID")
  run "$r" >"$OUT/rooms-$m.json"; c2=$(cpu_ms "$TERN_PID")
  jq -r '[.sent, .delivered, .deliveries_per_s, .deliver_p50_us, .deliver_p99_us, .ack_p99_us] | @tsv' "$OUT/rooms-$m.json" |
    awk -v m="$m" -v r="$r" -v idle=$((c1 - c0)) -v all=$((c2 - c1)) \
      '{cpu = ($2 > 0) ? (all - idle) * 1000 / $2 : 0;
        printf "%7s %6s %8s %10s %12.0f %9s %9s %9s %9.2f µs\n", m, r, $1, $2, $3, $4, $5, $6, cpu}'
  echo "  gateway CPU: join-only run $((c1 - c0)) ms, posting run $((c2 - c1)) ms"
done
echo "machine: $(machine)"
