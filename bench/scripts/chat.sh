#!/usr/bin/env bash
# Chat latency at several send rates against one gateway: send→ack and
# send→deliver percentiles, with the history checker on, and the gateway's
# CPU per delivered message. The embedded store by default; STORE=redis runs
# the gateway on a local redis-server (AOF, appendfsync always — what the
# store requires) that the script starts.
#
#   bench/scripts/chat.sh [PAIRS] [SECS] [RATES...]
#   STORE=redis bench/scripts/chat.sh 1000 15 500 1000 2000 5000
#
# cpu_us/msg: user + system CPU of the `tern` process (from /proc/PID/stat)
# over the whole tern-load run — its logins, the sends and the final
# verifying sync of every device — divided by the deliveries the load client
# counted (one per recipient device: a 1:1 message is one delivery). The load
# client's own CPU is not in it. Extra `tern serve` arguments can be given
# in TERN_ARGS (e.g. TERN_ARGS="--shards 2").
#
# PEER=redis adds, after the sweep, the same rates on Redis pub/sub (a plain
# redis-server, nothing stored): PAIRS channels of two subscribers, one of
# which publishes — the network shape of a 1:1 message (a frame in, a reply
# to the sender, one delivery out) without storage, acks of deliveries or a
# history check. Its cpu_us/msg is redis-server's CPU per delivery: what
# moving a 1:1 message costs on this machine with no durability at all.
source "$(dirname "$0")/lib.sh"
PAIRS=${1:-1000}; SECS=${2:-20}; shift 2 || true
RATES=("${@:-100 1000 5000 10000 20000}")
[ $# -eq 0 ] && RATES=(100 1000 5000 10000 20000)
build
if [ "${STORE:-embedded}" = redis ]; then
  start_redis 27379
  TERN_EXTRA=(--store redis --redis-url redis://127.0.0.1:27379)
fi
# shellcheck disable=SC2206 # word splitting of the extra arguments is meant
TERN_EXTRA+=(${TERN_ARGS:-})
echo "store: ${STORE:-embedded}"
start_tern 27400 27480
TERN_PID=$LAST_PID
printf '%8s %8s %8s %8s %9s %9s %9s %9s %9s %9s %6s %5s %9s %11s\n' rate planned sent acked ack_p50 ack_p99 ack_p999 dlv_p50 dlv_p99 dlv_p999 lost dup delivered cpu_us/msg
for r in "${RATES[@]}"; do
  cpu0=$(cpu_ms "$TERN_PID")
  "$LOAD" chat --target 127.0.0.1:27400 --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "$r" \
    --duration "$SECS" --verify --json --quiet >"$OUT/chat-${STORE:-embedded}-$r.json" || true
  cpu1=$(cpu_ms "$TERN_PID")
  jq -r '[.planned_sends, .sent, .acked, .ack_p50_us, .ack_p99_us, .ack_p999_us, .deliver_p50_us, .deliver_p99_us, .deliver_p999_us, .lost, .duplicated, .delivered] | @tsv' \
    "$OUT/chat-${STORE:-embedded}-$r.json" | awk -v r="$r" -v cpu="$((cpu1 - cpu0))" \
    '{printf "%8s %8s %8s %8s %9s %9s %9s %9s %9s %9s %6s %5s %9s %11.1f\n", r,$1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12, ($12 > 0 ? cpu * 1000 / $12 : 0)}'
done
if [ "${PEER:-}" = redis ]; then
  kill "$TERN_PID"; wait "$TERN_PID" 2>/dev/null || true
  start_redis_pubsub 24379
  RPID=$LAST_PID
  for r in "${RATES[@]}"; do
    cpu0=$(cpu_ms "$RPID")
    "$LOAD" group --proto redis --target 127.0.0.1:24379 --groups "$PAIRS" --group-size 2 \
      --rate "$r" --duration "$SECS" --ramp 10000 --json --quiet >"$OUT/chat-redis-pubsub-$r.json" || true
    cpu1=$(cpu_ms "$RPID")
    jq -r '[.planned_sends, .sent, .deliver_p50_us, .deliver_p99_us, .deliver_p999_us, .delivered] | @tsv' \
      "$OUT/chat-redis-pubsub-$r.json" | awk -v r="$r" -v cpu="$((cpu1 - cpu0))" \
      '{printf "%8s %8s %8s %8s %9s %9s %9s %9s %9s %9s %6s %5s %9s %11.1f  (redis pub/sub)\n", r,$1,$2,"-","-","-","-",$3,$4,$5,"-","-",$6, ($6 > 0 ? cpu * 1000 / $6 : 0)}'
  done
fi
echo "machine: $(machine)"
