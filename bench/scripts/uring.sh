#!/usr/bin/env bash
# The two data paths side by side (issue 14; docs/benchmarks.md, "io_uring
# data path"): the same load against a fresh gateway on each path, epoll
# then io_uring, scenario by scenario, with the same load client.
#
#   bench/scripts/uring.sh [SCENARIO...]   # idle heartbeat chat fanout (default: all)
#
# - idle:      CONNS (19,000) idle connections at the 30 s heartbeat:
#              user-space bytes per connection (RSS with them held minus
#              before, from tern-load --gateway-pid).
# - heartbeat: the same connections at a 1 s heartbeat: gateway CPU per
#              ping round trip over a HB_SECS window once all are held.
# - chat:      1:1 chat, PAIRS pairs, CHAT_SECS per rate (CHAT_RATES):
#              ack/deliver percentiles and gateway CPU per message.
# - fanout:    one group at a moderate rate (FANOUT: G:RATE, default
#              1000:50 10000:5) on both paths, on nats-server and on
#              Redis pub/sub (same client, --proto nats / --proto redis):
#              deliver p50/p99 and server CPU per delivery.
# CPU is utime + stime of the server process over the load run
# (/proc/PID/stat), the load client excluded.
source "$(dirname "$0")/lib.sh"
SCENARIOS=("$@"); [ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(idle heartbeat chat fanout)
CONNS=${CONNS:-19000}; HB_SECS=${HB_SECS:-10}
PAIRS=${PAIRS:-1000}; CHAT_SECS=${CHAT_SECS:-10}
read -r -a CHAT_RATES <<<"${CHAT_RATES:-1000 5000 10000}"
read -r -a FANOUT <<<"${FANOUT:-1000:50 10000:5}"
FAN_SECS=${FAN_SECS:-10}
build

# fresh PATH_NAME: a fresh gateway on that data path -> TERN_PID
fresh() {
  { [ -n "${TERN_PID:-}" ] && kill "$TERN_PID" 2>/dev/null && wait "$TERN_PID" 2>/dev/null; } || true
  TERN_SHARDS_DRIVER=$1 start_tern 27400 27480; TERN_PID=$LAST_PID
}

for sc in "${SCENARIOS[@]}"; do
  case $sc in
  idle)
    printf '%-9s %8s %8s %12s %12s\n' path held failed bytes/conn connects/s
    for p in epoll uring; do
      fresh "$p"
      # The gateway is listening before it has finished starting (threads,
      # rings, the store's first flush): without this pause that growth was
      # counted as the connections' (~910 B per connection instead of ~500).
      sleep 2
      "$LOAD" idle --target 127.0.0.1:27400 --jwt-secret "$SECRET" --conns "$CONNS" --ramp 5000 \
        --hold 10 --gateway-pid "$TERN_PID" --json --quiet >"$OUT/uring-idle-$p.json"
      jq -r '[.held, .failed, .gateway_bytes_per_conn, .connect_rate_per_s] | @tsv' "$OUT/uring-idle-$p.json" |
        awk -v p="$p" '{printf "%-9s %8s %8s %12.0f %12.0f\n", p, $1, $2, $3, $4}'
    done ;;
  heartbeat)
    printf '%-9s %8s %14s %18s\n' path held cpu_ms/window cpu_us/round_trip
    for p in epoll uring; do
      TERN_SESSION_HEARTBEAT_INTERVAL_MS=1000 fresh "$p"
      ramp_secs=$(( CONNS / 5000 + 3 ))
      "$LOAD" idle --target 127.0.0.1:27400 --jwt-secret "$SECRET" --conns "$CONNS" --ramp 5000 \
        --hold $(( HB_SECS + 6 )) --json --quiet >"$OUT/uring-hb-$p.json" &
      load=$!
      sleep "$ramp_secs"; c0=$(cpu_ms "$TERN_PID"); sleep "$HB_SECS"; c1=$(cpu_ms "$TERN_PID")
      wait "$load" || true
      held=$(jq -r .held "$OUT/uring-hb-$p.json")
      awk -v p="$p" -v h="$held" -v c=$(( c1 - c0 )) -v s="$HB_SECS" \
        'BEGIN {printf "%-9s %8s %14s %18.2f\n", p, h, c, (h > 0 ? c * 1000 / (h * s) : 0)}'
    done ;;
  chat)
    printf '%-9s %7s %8s %9s %9s %9s %9s %6s %5s %11s\n' path rate acked ack_p50 ack_p99 dlv_p50 dlv_p99 lost dup cpu_us/msg
    for r in "${CHAT_RATES[@]}"; do
      for p in epoll uring; do
        fresh "$p"
        c0=$(cpu_ms "$TERN_PID")
        "$LOAD" chat --target 127.0.0.1:27400 --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "$r" \
          --duration "$CHAT_SECS" --verify --json --quiet >"$OUT/uring-chat-$p-$r.json" || true
        c1=$(cpu_ms "$TERN_PID")
        jq -r '[.acked, .ack_p50_us, .ack_p99_us, .deliver_p50_us, .deliver_p99_us, .lost, .duplicated, .delivered] | @tsv' \
          "$OUT/uring-chat-$p-$r.json" | awk -v p="$p" -v r="$r" -v c=$(( c1 - c0 )) \
          '{printf "%-9s %7s %8s %9s %9s %9s %9s %6s %5s %11.1f\n", p, r, $1, $2, $3, $4, $5, $6, $7, ($8 > 0 ? c * 1000 / $8 : 0)}'
      done
    done ;;
  fanout)
    printf '%-9s %6s %5s %10s %12s %9s %9s %13s\n' server G rate delivered deliveries/s dlv_p50 dlv_p99 cpu_us/dlv
    for c in "${FANOUT[@]}"; do
      g=${c%%:*}; r=${c##*:}
      for s in epoll uring nats redis; do
        if [ "$s" = nats ] || [ "$s" = redis ]; then
          { [ -n "${TERN_PID:-}" ] && kill "$TERN_PID" 2>/dev/null && wait "$TERN_PID" 2>/dev/null; } || true
          TERN_PID=
          # redis: pub/sub on a plain redis-server (no persistence), --proto redis
          if [ "$s" = nats ]; then port=24222; start_nats "$port"; else port=24379; start_redis_pubsub "$port"; fi
          pid=$LAST_PID; target=127.0.0.1:$port; proto=$s
        else
          fresh "$s"; pid=$TERN_PID; target=127.0.0.1:27400; proto=tern
        fi
        c0=$(cpu_ms "$pid")
        "$LOAD" group --proto "$proto" --target "$target" --jwt-secret "$SECRET" --groups 1 --group-size "$g" \
          --rate "$r" --duration "$FAN_SECS" --ramp 10000 --json --quiet >"$OUT/uring-fan-$s-$g.json" || true
        c1=$(cpu_ms "$pid")
        if [ "$s" = nats ] || [ "$s" = redis ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
        jq -r '[.delivered, .deliveries_per_s, .deliver_p50_us, .deliver_p99_us] | @tsv' "$OUT/uring-fan-$s-$g.json" |
          awk -v s="$s" -v g="$g" -v r="$r" -v c=$(( c1 - c0 )) \
          '{printf "%-9s %6s %5s %10s %12.0f %9s %9s %13.2f\n", s, g, r, $1, $2, $3, $4, ($1 > 0 ? c * 1000 / $1 : 0)}'
      done
    done ;;
  *) echo "unknown scenario $sc (idle heartbeat chat fanout)" >&2; exit 2 ;;
  esac
done
echo "machine: $(machine); commit $(git -C "$ROOT" rev-parse --short HEAD)"
