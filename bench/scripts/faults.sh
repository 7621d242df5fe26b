#!/usr/bin/env bash
# Faults under chat load (issue 15; the table in docs/reliability.md). One
# gateway (embedded store by default; STORE=redis runs it on a local
# redis-server, AOF appendfsync always, that the script starts), a bounded
# `tern-load chat --verify --reconnect` at RATE msg/s, and one fault per row;
# each row starts a fresh gateway and prints one result line: the fault, the
# rate, sent / acked, lost / duplicated / divergent, and the row's figure.
#
#   bench/scripts/faults.sh [RATE] [ROW...]     rows: kill9 disk stop slow storm (default: all)
#   bench/scripts/faults.sh 5000 kill9 stop
#
# Environment: PAIRS (1000 pairs of users, one device each),
# SECS of chat per row (20; the stop row adds STOP_SECS), STOP_SECS (30),
# HB_MS (5000: the gateway's heartbeat interval, so "1.5 heartbeats" is
# 7.5 s), DISK_MB (the disk row's tmpfs, 1024: at 20,000 msg/s the store's
# own journal and flushed tables outgrow 256 MiB within the row, and then
# the disk is rightly still below its reserve after the filler is gone),
# FULL_SECS (how long the disk stays full, 5), KEEP_RUN (keep the run's
# directory: the gateway's tern.log and each row's report), STALL (slow consumers of the slow row, 10), BIN (a
# directory holding tern and tern-load; default: the release build, built
# if missing). Needs root for the disk row (mount -t tmpfs); it is skipped
# with a message otherwise. Stops every process it started, by PID, and
# unmounts what it mounted.
source "$(dirname "$0")/lib.sh"
if [ -n "${BIN:-}" ]; then TERN=$BIN/tern; LOAD=$BIN/tern-load; fi
RATE=${1:-20000}; shift || true
ROWS=("$@"); [ ${#ROWS[@]} -eq 0 ] && ROWS=(kill9 disk stop slow storm)
PAIRS=${PAIRS:-1000}; SECS=${SECS:-20}; STOP_SECS=${STOP_SECS:-30}; HB_MS=${HB_MS:-5000}
DISK_MB=${DISK_MB:-1024}; FULL_SECS=${FULL_SECS:-5}; STALL=${STALL:-10}
DEVICES=$((PAIRS * 2))
TCP=27600; HTTP=27680; REDIS_PORT=27679
RUN="$(mktemp -d "${TMPDIR:-/tmp}/tern-faults.XXXXXX")"
MOUNTED=""
on_exit() {
  [ -n "$GW_PID" ] && kill -CONT "$GW_PID" 2>/dev/null
  cleanup
  if [ -n "$MOUNTED" ]; then umount "$MOUNTED" 2>/dev/null || umount -l "$MOUNTED" 2>/dev/null || true; fi
  # KEEP_RUN=1 keeps the run's logs and reports (the gateway's tern.log).
  if [ -n "${KEEP_RUN:-}" ]; then echo "run kept in $RUN" >&2; else rm -rf "$RUN"; fi
}
GW_PID=""
trap on_exit EXIT
build

if [ "${STORE:-embedded}" = redis ]; then
  start_redis "$REDIS_PORT"
  TERN_EXTRA=(--store redis --redis-url "redis://127.0.0.1:$REDIS_PORT")
fi
# The stop row's figure is in heartbeats: a short interval keeps it in
# seconds. Every row runs with it.
export TERN_SESSION_HEARTBEAT_INTERVAL_MS=$HB_MS

# gw_start DIR: a gateway on $TCP / $HTTP with its data in DIR -> GW_PID,
# GW_START_MS (exec -> listening).
gw_start() {
  local dir=$1 t0
  mkdir -p "$dir"
  t0=$(date +%s%N)
  TERN_LOG=warn "$TERN" serve --jwt-secret "$SECRET" --listen "127.0.0.1:$TCP" \
    --ws-listen "127.0.0.1:$((TCP + 1))" --http "127.0.0.1:$HTTP" \
    --data-dir "$dir" "${TERN_EXTRA[@]}" >>"$RUN/tern.log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_port 127.0.0.1 "$TCP" && wait_port 127.0.0.1 "$HTTP" || { tail -5 "$RUN/tern.log" >&2; exit 1; }
  GW_START_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}
gw_stop() {
  [ -n "$GW_PID" ] || return 0
  kill -CONT "$GW_PID" 2>/dev/null; kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
}
metric() { # NAME[{labels}]: the gateway's sample (0 if absent)
  { curl -s --max-time 2 "http://127.0.0.1:$HTTP/metrics" || true; } | awk -v n="$1" '$1 == n { v = $2 } END { print v + 0 }'
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# load OUT ARGS...: the row's chat load in the background -> LOAD_PID
load_bg() {
  local out=$1; shift
  "$LOAD" chat --target "127.0.0.1:$TCP" --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "$RATE" \
    --verify --reconnect --jitter-ms "${JITTER_MS:-500}" --connect-timeout-ms 2000 --drain-ms 30000 \
    --json --quiet "$@" >"$out" 2>"$out.err" &
  LOAD_PID=$!; PIDS+=("$LOAD_PID")
}
# Seconds from the load's start until it is sending (its ramp: 5000/s by default).
ramp_s() { echo $(( DEVICES / 5000 + 2 )); }

printf '%-6s %6s %8s %8s %5s %4s %4s  %s\n' row rate sent acked lost dup div figure
result() { # ROW JSON FIGURE
  jq -r --arg row "$1" --arg rate "$RATE" --arg fig "$3" \
    '[$row, $rate, .sent, .acked, (.lost // "-"), (.duplicated // "-"), (.divergent // "-"), $fig] | @tsv' "$2" |
    awk -F'\t' '{ printf "%-6s %6s %8s %8s %5s %4s %4s  %s\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
}

row_kill9() {
  local dir="$RUN/kill9" j="$RUN/kill9.json" fig
  gw_start "$dir"
  load_bg "$j" --duration "$SECS"
  sleep $(( $(ramp_s) + SECS / 3 ))
  kill -9 "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  gw_start "$dir"
  wait "$LOAD_PID" || true
  fig=$(jq -r --arg st "$GW_START_MS" '"restart \($st) ms; devices dropped \(.dropped), back \(.reconnected), all back \(.reconnect_all_ms // "never") ms; resent \(.resent); send failures \(.send_failed), timeouts \(.send_timeouts); unsynced \(.devices_unsynced // "-")"' "$j")
  result kill9 "$j" "$fig"
  gw_stop
}

row_disk() {
  if [ "$(id -u)" != 0 ]; then echo "disk   skipped: mounting a tmpfs needs root"; return; fi
  if [ "${STORE:-embedded}" = redis ]; then echo "disk   skipped: the Redis store keeps no data in the gateway's data dir"; return; fi
  local mnt="$RUN/disk" j="$RUN/disk.json" j2="$RUN/disk-after.json" fig full_at filled
  mkdir -p "$mnt"
  mount -t tmpfs -o "size=${DISK_MB}m" tern-faults "$mnt"; MOUNTED=$mnt
  gw_start "$mnt/data"
  load_bg "$j" --duration "$SECS"
  sleep $(( $(ramp_s) + SECS / 3 ))
  # Fill what is left (dd stops at ENOSPC), hold it full, then free it.
  dd if=/dev/zero of="$mnt/filler" bs=1M status=none 2>/dev/null || true
  filled=$(du -m "$mnt/filler" | cut -f1)
  sleep "$FULL_SECS"
  rm -f "$mnt/filler"
  wait "$LOAD_PID" || true
  local alive=yes
  kill -0 "$GW_PID" 2>/dev/null || alive="NO (exited: see $RUN/tern.log)"
  # Service after space returned: a short second load on the same gateway.
  if [ "$alive" = yes ]; then
    "$LOAD" chat --target "127.0.0.1:$TCP" --jwt-secret "$SECRET" --pairs 50 --rate 200 --duration 3 \
      --verify --json --quiet >"$j2" 2>/dev/null || true
  else
    echo '{}' >"$j2"
  fi
  fig=$(jq -r --arg filled "$filled" --arg alive "$alive" --slurpfile after "$j2" \
    '"filled \($filled) MiB; send failures \(.send_failed) \(.send_fail_codes | tostring), timeouts \(.send_timeouts); gateway alive: \($alive); after: \($after[0].acked // 0)/\($after[0].sent // 0) acked, lost \($after[0].lost // "-")"' "$j")
  result disk "$j" "$fig"
  gw_stop
  umount "$mnt" && MOUNTED=""
}

row_stop() {
  local dir="$RUN/stop" j="$RUN/stop.json" fig t_cont back_ms="never" max_conns=0 c i
  gw_start "$dir"
  local disp0 disp1
  disp0=$(metric 'tern_connections_closed_total{reason="displaced"}')
  load_bg "$j" --duration $(( SECS + STOP_SECS ))
  sleep $(( $(ramp_s) + SECS / 3 ))
  kill -STOP "$GW_PID"
  sleep "$STOP_SECS"
  kill -CONT "$GW_PID"; t_cont=$(date +%s%N)
  # Until every device holds a session again (bounded: 60 s), the most
  # sessions seen: more than the devices would be a double session.
  for i in $(seq 1 600); do
    c=$(metric tern_connections); c=${c%.*}
    [ "$c" -gt "$max_conns" ] && max_conns=$c
    if [ "$c" -eq "$DEVICES" ]; then back_ms=$(( ($(date +%s%N) - t_cont) / 1000000 )); break; fi
    sleep 0.1
  done
  local final; final=$(metric tern_connections); final=${final%.*}
  disp1=$(metric 'tern_connections_closed_total{reason="displaced"}')
  wait "$LOAD_PID" || true
  fig=$(jq -r --arg hb "$HB_MS" --arg back "$back_ms" --arg max "$max_conns" --arg fin "$final" --arg d "$DEVICES" \
    --arg disp "$(( ${disp1%.*} - ${disp0%.*} ))" \
    '"stopped '"$STOP_SECS"' s; closed as dead \(.silent_closes)/\($d) \(.close_reasons | tostring), noticed <= \(.silent_detect_max_ms) ms after the last word (1.5 hb = \(($hb | tonumber) * 3 / 2) ms); all sessions back \($back) ms after SIGCONT, sessions seen max \($max), then \($fin) for \($d) devices (old ones displaced \($disp)); resent \(.resent)"' "$j")
  result stop "$j" "$fig"
  gw_stop
}

row_slow() {
  local jb="$RUN/slow-base.json" js="$RUN/slow.json" fig sc0 sc1
  # The control: the same devices send the same requests from the same
  # second, but keep reading.
  gw_start "$RUN/slow-base"
  load_bg "$jb" --duration "$SECS" --stall "$STALL" --stall-at $(( SECS / 3 )) --stall-reads
  wait "$LOAD_PID" || true
  gw_stop
  gw_start "$RUN/slow"
  sc0=$(metric tern_slow_consumer_closes_total)
  load_bg "$js" --duration "$SECS" --stall "$STALL" --stall-at $(( SECS / 3 ))
  wait "$LOAD_PID" || true
  sc1=$(metric tern_slow_consumer_closes_total)
  fig=$(jq -r -n --slurpfile b "$jb" --slurpfile s "$js" --arg sc "$(( ${sc1%.*} - ${sc0%.*} ))" \
    '$b[0] as $b | $s[0] as $s |
     "stalled \($s.stalled), closed by the server \($s.stall_closed) (slow_consumer closes \($sc)) <= \($s.stall_close_max_ms) ms after; others deliver p99 control (reading) \($b.deliver_p99_us) -> stalled \($s.deliver_p99_us) us (\(if $b.deliver_p99_us > 0 then (($s.deliver_p99_us - $b.deliver_p99_us) * 1000 / $b.deliver_p99_us | round / 10) else "-" end) %), ack p99 \($b.ack_p99_us) -> \($s.ack_p99_us) us; control lost/dup/div \($b.lost)/\($b.duplicated)/\($b.divergent)"')
  result slow "$js" "$fig"
  gw_stop
}

row_storm() {
  local j="$RUN/storm.json" fig rss0 hwm ref0 ref1 rl0 rl1
  gw_start "$RUN/storm"
  rss0=$(rss_kb "$GW_PID")
  ref0=$(metric 'tern_connections_closed_total{reason="refused"}'); rl0=$(metric 'tern_connections_closed_total{reason="rate_limited"}')
  JITTER_MS=0 load_bg "$j" --duration "$SECS" --storm-at $(( SECS / 3 )) --fraction 1
  wait "$LOAD_PID" || true
  hwm=$(hwm_kb "$GW_PID")
  ref1=$(metric 'tern_connections_closed_total{reason="refused"}'); rl1=$(metric 'tern_connections_closed_total{reason="rate_limited"}')
  fig=$(jq -r --arg rss0 "$rss0" --arg hwm "$hwm" --arg now "$(rss_kb "$GW_PID")" --arg ref "$(( ${ref1%.*} - ${ref0%.*} ))" --arg rl "$(( ${rl1%.*} - ${rl0%.*} ))" \
    '"dropped \(.dropped) at once, back \(.reconnected) in \(.reconnect_all_ms // "never") ms (p99 \(.reconnect_p99_us) us), failed attempts \(.reconnect_failures); gateway RSS \($rss0 | tonumber / 1024 | floor) MiB idle, peak \($hwm | tonumber / 1024 | floor) MiB, \($now | tonumber / 1024 | floor) MiB after; refused \($ref), rate-limited \($rl)"' "$j")
  result storm "$j" "$fig"
  gw_stop
}

for r in "${ROWS[@]}"; do
  case "$r" in
    kill9 | disk | stop | slow | storm) "row_$r" ;;
    *) echo "unknown row $r (kill9 disk stop slow storm)" >&2; exit 2 ;;
  esac
done
echo "store: ${STORE:-embedded}, pairs: $PAIRS, secs: $SECS, heartbeat: $HB_MS ms, binaries: $(dirname "$TERN"), commit: $(git -C "$ROOT" rev-parse --short HEAD)"
echo "machine: $(machine) (shared)"
