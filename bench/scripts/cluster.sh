#!/usr/bin/env bash
# Many gateway nodes on one Redis (docs/cluster.md, docs/benchmarks.md):
# starts NODES `tern serve --store redis` processes and either one
# redis-server (AOF, appendfsync always) or a 3-master Redis Cluster, all on
# free loopback ports with every data dir under one temp dir, runs one
# scenario with tern-load spread over the nodes' addresses (slot i on node
# i mod N), prints the figures and each process's CPU time (utime + stime
# from /proc/PID/stat), and stops every process it started, by PID.
#
#   bench/scripts/cluster.sh chat RATE        1:1 send→deliver on one node, then across NODES
#   bench/scripts/cluster.sh fanout G RATE    group fan-out, members on one node, then spread
#   bench/scripts/cluster.sh storm N          login storm of N devices onto NODES
#   bench/scripts/cluster.sh kill             kill -9 one node under chat load
#   bench/scripts/cluster.sh routecost G RATE route read per G-member message, cache off vs on
#   bench/scripts/cluster.sh room M RATE      one room of M joined connections spread over NODES,
#                                             one poster at RATE (SOURCES: how many loopback
#                                             source addresses; default: as many as needed)
#
# Environment: NODES (3), REDIS=single|cluster (single), SHARDS per node (1),
# SECS of sending (10), PAIRS for chat/kill (1000), RAMP connects/s (5000),
# HOLD seconds for storm (5), CLUSTER_TOML (more [cluster] lines for every
# node), BIN (a directory holding tern and tern-load; default: the release
# build, built if missing), PORT_BASE (27500).
source "$(dirname "$0")/lib.sh"
if [ -n "${BIN:-}" ]; then TERN=$BIN/tern; LOAD=$BIN/tern-load; fi
NODES=${NODES:-3}; REDIS=${REDIS:-single}; SHARDS=${SHARDS:-1}; SECS=${SECS:-10}
PAIRS=${PAIRS:-1000}; RAMP=${RAMP:-5000}; HOLD=${HOLD:-5}
SCENARIO=${1:-}; shift || true
# On exit: stop what was started in reverse order (the load, then the nodes,
# which leave the cluster cleanly, then Redis), each by PID, then the
# shared cleanup (lib.sh) removes the temp dir.
stop_reverse() {
  local k p
  for ((k = ${#PIDS[@]} - 1; k >= 0; k--)); do
    p=${PIDS[$k]}
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  true
}
trap 'stop_reverse; cleanup' EXIT
RUN="$(mktemp -d "${TMPDIR:-/tmp}/tern-cluster.XXXXXX")"
if [ -n "${KEEP:-}" ]; then echo "keeping $RUN" >&2; else DIRS+=("$RUN"); fi
build

# ---- processes ----

REDIS_PORTS=(); REDIS_PIDS=(); REDIS_URLS=""; REDIS_ARGS=()
start_redis_any() {
  if [ "$REDIS" = cluster ]; then
    start_redis_cluster "$RUN/redis" 3
    REDIS_ARGS=(--redis-cluster)
  else
    local p; alloc_port p
    start_redis_at "$RUN/redis" "$p"
    REDIS_PORTS=("$p"); REDIS_PIDS=("$LAST_PID")
  fi
  REDIS_URLS=$(printf 'redis://127.0.0.1:%s,' "${REDIS_PORTS[@]}"); REDIS_URLS=${REDIS_URLS%,}
}

NODE_PIDS=(); NODE_TCP=(); NODE_HTTP=()
start_node() { # I: node nI, its config and data under $RUN/nI
  local i=$1 dir="$RUN/n$1" tcp ws http attempt
  mkdir -p "$dir"
  printf '[cluster]\n%s\n' "${CLUSTER_TOML:-}" >"$dir/tern.toml"
  for attempt in 1 2; do
    alloc_port tcp; alloc_port ws; alloc_port http
    TERN_LOG=warn "$TERN" serve --config "$dir/tern.toml" --store redis --redis-url "$REDIS_URLS" \
      "${REDIS_ARGS[@]}" --node-id "n$i" --data-dir "$dir" --jwt-secret "$SECRET" --shards "$SHARDS" \
      --listen "127.0.0.1:$tcp" --ws-listen "127.0.0.1:$ws" --http "127.0.0.1:$http" >>"$dir/tern.log" 2>&1 &
    LAST_PID=$!; PIDS+=("$LAST_PID")
    NODE_PIDS[$i]=$LAST_PID; NODE_TCP[$i]=127.0.0.1:$tcp; NODE_HTTP[$i]=127.0.0.1:$http
    # Up once it listens and is still alive (bounded: 10 s).
    for _ in $(seq 1 200); do
      kill -0 "$LAST_PID" 2>/dev/null || break
      (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && kill -0 "$LAST_PID" 2>/dev/null && return 0
      sleep 0.05
    done
    # Said out loud, not hidden by the retry: a start that failed is a finding.
    echo "node n$i did not start (attempt $attempt); its log says:" >&2
    tail -3 "$dir/tern.log" >&2
    kill "$LAST_PID" 2>/dev/null || true
  done
  exit 1
}

metric() { # HTTP NAME: an unlabelled sample of one node's /metrics (0 if absent)
  curl -s --max-time 2 "http://$1/metrics" | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}
metric_sum() { # NAME [NODE...]: summed over the given nodes (default: all started)
  local name=$1 s=0 i v; shift
  for i in "${@:-${!NODE_HTTP[@]}}"; do v=$(metric "${NODE_HTTP[$i]}" "$name"); s=$(awk -v a="$s" -v b="$v" 'BEGIN { print a + b }'); done
  echo "$s"
}
wait_live() { # N: until every started node sees N live nodes (bounded: 15 s)
  local i ok
  for i in "${!NODE_HTTP[@]}"; do
    ok=""
    for _ in $(seq 1 150); do
      [ "$(metric "${NODE_HTTP[$i]}" tern_cluster_live_nodes)" = "$1" ] && { ok=1; break; }
      sleep 0.1
    done
    [ -n "$ok" ] && kill -0 "${NODE_PIDS[$i]}" 2>/dev/null ||
      { echo "node n$i is gone or never saw $1 live nodes (log: $RUN/n$i/tern.log)" >&2; exit 1; }
  done
}
targets() { # [NODE...]: their client addresses, comma-separated (default: all)
  local i t=""
  for i in "${@:-${!NODE_TCP[@]}}"; do t+="${NODE_TCP[$i]},"; done
  echo "${t%,}"
}
metrics_urls() {
  local i t=""
  for i in "${!NODE_HTTP[@]}"; do t+="http://${NODE_HTTP[$i]}/metrics,"; done
  echo "${t%,}"
}
redis_mem() { # used_memory summed over the Redis primaries, bytes
  local p s=0 v
  for p in "${REDIS_PORTS[@]}"; do
    v=$(redis-cli -p "$p" INFO memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r'); s=$((s + v))
  done
  echo "$s"
}

# ---- CPU ----

declare -A CPU0 CPU_LAST # CPU_LAST: taken just before a process was killed
cpu_mark() { # remember every process's CPU time now
  local i p
  for i in "${!NODE_PIDS[@]}"; do CPU0[n$i]=$(cpu_ms "${NODE_PIDS[$i]}"); done
  for p in "${!REDIS_PIDS[@]}"; do CPU0[r$p]=$(cpu_ms "${REDIS_PIDS[$p]}"); done
}
cpu_report() { # LABEL UNITS UNIT_NAME: CPU ms of each process since cpu_mark, and per unit
  local label=$1 units=$2 what=$3 i p d nodes=0 redis=0 line=""
  for i in "${!NODE_PIDS[@]}"; do
    d=$(cpu_ms "${NODE_PIDS[$i]}"); [ "$d" = 0 ] && d=${CPU_LAST[n$i]:-0}
    d=$((d - ${CPU0[n$i]:-0})); nodes=$((nodes + d)); line+=" n$i=${d}ms"
  done
  for p in "${!REDIS_PIDS[@]}"; do
    d=$(( $(cpu_ms "${REDIS_PIDS[$p]}") - ${CPU0[r$p]:-0} )); redis=$((redis + d)); line+=" redis$((p + 1))=${d}ms"
  done
  echo "cpu [$label]:$line"
  awk -v l="$label" -v n="$nodes" -v r="$redis" -v u="$units" -v w="$what" 'BEGIN {
    if (u > 0) printf "cpu per %s [%s]: nodes %.1f us, redis %.1f us (%d of them)\n", w, l, n * 1000 / u, r * 1000 / u, u }'
}

# ---- scenarios ----

load() { # OUT_JSON ARGS...: one tern-load run
  local out=$1; shift
  "$LOAD" "$@" --jwt-secret "$SECRET" --ramp "$RAMP" --json --quiet >"$out" || true
}

chat_row() { # LABEL JSON
  jq -r --arg l "$1" '[$l, .planned_sends, .sent, .acked, .ack_p50_us, .ack_p99_us, .deliver_p50_us, .deliver_p99_us, .delivered, (.lost // "-"), (.duplicated // "-")] | @tsv' "$2" |
    awk '{ printf "%-10s %8s %8s %8s %8s %8s %8s %8s %9s %5s %5s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
}

scenario_chat() { # RATE
  local rate=${1:?chat RATE}
  start_redis_any; start_node 1; wait_live 1
  cpu_mark
  load "$RUN/chat-1.json" chat --target "$(targets 1)" --pairs "$PAIRS" --rate "$rate" --duration "$SECS" --verify
  cpu_report "1 node" "$(jq .sent "$RUN/chat-1.json")" message
  for i in $(seq 2 "$NODES"); do start_node "$i"; done
  wait_live "$NODES"
  cpu_mark
  load "$RUN/chat-n.json" chat --target "$(targets)" --pairs "$PAIRS" --rate "$rate" --duration "$SECS" --verify
  cpu_report "$NODES nodes" "$(jq .sent "$RUN/chat-n.json")" message
  echo "records sent between nodes: $(metric_sum tern_cluster_records_sent_total)"
  printf '%-10s %8s %8s %8s %8s %8s %8s %8s %9s %5s %5s\n' setup planned sent acked ack_p50 ack_p99 dlv_p50 dlv_p99 delivered lost dup
  chat_row "1node" "$RUN/chat-1.json"
  chat_row "${NODES}nodes" "$RUN/chat-n.json"
}

fanout_row() { # LABEL JSON
  jq -r --arg l "$1" '[$l, .sent, .delivered, .deliveries_per_s, .deliver_p50_us, .deliver_p99_us, .pushes_repeated] | @tsv' "$2" |
    awk '{ printf "%-10s %8s %10s %12.0f %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7 }'
}

scenario_fanout() { # G RATE
  local g=${1:?fanout G RATE} rate=${2:?fanout G RATE}
  start_redis_any; start_node 1; wait_live 1
  cpu_mark
  load "$RUN/fanout-1.json" group --target "$(targets 1)" --groups 1 --group-size "$g" --rate "$rate" --duration "$SECS"
  cpu_report "1 node" "$(jq .delivered "$RUN/fanout-1.json")" delivery
  for i in $(seq 2 "$NODES"); do start_node "$i"; done
  wait_live "$NODES"
  cpu_mark
  load "$RUN/fanout-n.json" group --target "$(targets)" --groups 1 --group-size "$g" --rate "$rate" --duration "$SECS"
  cpu_report "$NODES nodes" "$(jq .delivered "$RUN/fanout-n.json")" delivery
  echo "records sent between nodes: $(metric_sum tern_cluster_records_sent_total)," \
    "route cache hits $(metric_sum tern_cluster_route_cache_hits_total) misses $(metric_sum tern_cluster_route_cache_misses_total)"
  printf '%-10s %8s %10s %12s %9s %9s %9s\n' setup sent delivered deliveries/s dlv_p50 dlv_p99 repeated
  fanout_row "1node" "$RUN/fanout-1.json"
  fanout_row "${NODES}nodes" "$RUN/fanout-n.json"
}

scenario_room() { # M RATE: one room of M joined connections over every node
  local m=${1:?room M RATE} rate=${2:?room M RATE}
  start_redis_any
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
  wait_live "$NODES"
  local src=(); [ -n "${SOURCES:-}" ] && src=(--sources "$SOURCES")
  # The join-only run first (connect, auth, create, join; no post), then
  # the posting run: the nodes' CPU per delivery is the difference.
  cpu_mark
  load "$RUN/room-idle.json" room --target "$(targets)" "${src[@]}" --groups 1 --group-size "$((m + 1))" \
    --group-senders 1 --rate 0 --duration "$SECS"
  cpu_report "join only" "$m" member
  cpu_mark
  load "$RUN/room.json" room --target "$(targets)" "${src[@]}" --groups 1 --group-size "$((m + 1))" \
    --group-senders 1 --rate "$rate" --duration "$SECS"
  cpu_report "join and post" "$(jq .delivered "$RUN/room.json")" delivery
  echo "records sent between nodes: $(metric_sum tern_cluster_records_sent_total)," \
    "room deliveries: $(metric_sum tern_room_deliveries_total)"
  printf '%-10s %8s %10s %12s %9s %9s %9s\n' setup sent delivered deliveries/s dlv_p50 dlv_p99 ack_p99
  jq -r '["room", .sent, .delivered, .deliveries_per_s, .deliver_p50_us, .deliver_p99_us, .ack_p99_us] | @tsv' "$RUN/room.json" |
    awk '{ printf "%-10s %8s %10s %12.0f %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7 }'
}

scenario_storm() { # N
  local n=${1:?storm N} i t0 t1 lpid spid
  start_redis_any
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
  wait_live "$NODES"
  local m0; m0=$(redis_mem)
  # Route writes of all nodes every 0.25 s while the storm runs (bounded).
  (for s in $(seq 1 $(( (HOLD + 30) * 4 ))); do
    echo "$(date +%s.%N) $(metric_sum tern_cluster_route_writes_total)"; sleep 0.25
  done) >"$RUN/writes.txt" &
  spid=$!; PIDS+=("$spid")
  cpu_mark
  t0=$(date +%s.%N)
  "$LOAD" idle --target "$(targets)" --jwt-secret "$SECRET" --conns "$n" --ramp "$RAMP" --hold "$HOLD" \
    --json --quiet >"$RUN/storm.json" &
  lpid=$!; PIDS+=("$lpid")
  for _ in $(seq 1 $(( (HOLD + 30) * 10 ))); do
    [ "$(metric_sum tern_cluster_route_writes_total)" -ge "$n" ] && break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  local m1 hashes; m1=$(redis_mem)
  hashes=0
  for p in "${REDIS_PORTS[@]}"; do
    redis-cli -p "$p" --scan --pattern '{u:*}:rt' >"$RUN/keys-$p.txt"
    hashes=$((hashes + $(wc -l <"$RUN/keys-$p.txt")))
    sed -n 1,100p "$RUN/keys-$p.txt" | while read -r k; do redis-cli -p "$p" MEMORY USAGE "$k" </dev/null; done
  done >"$RUN/usage.txt"
  wait "$lpid" || true
  cpu_report storm "$n" login
  kill "$spid" 2>/dev/null || true
  echo "devices: $n over $NODES nodes; established $(jq .established "$RUN/storm.json"), failed $(jq .failed "$RUN/storm.json")"
  echo "time to all welcomed (slowest worker's ramp): $(jq .ramp_ms "$RUN/storm.json") ms; connect p50/p99 $(jq -r '"\(.connect_p50_us)/\(.connect_p99_us)"' "$RUN/storm.json") us"
  echo "every route written after: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
  awk 'NR > 1 { d = $2 - w; if (d > peak) { peak = d; pt = $1 - t } } { t = $1; w = $2 } END { printf "route writes/s at the peak (0.25 s window): %.0f\n", peak / (pt > 0 ? pt : 0.25) }' "$RUN/writes.txt"
  echo "route hashes while held: $hashes"
  awk '{ s += $1; n++ } END { if (n) printf "MEMORY USAGE per route hash, avg of %d: %.0f B\n", n, s / n }' "$RUN/usage.txt"
  echo "Redis used_memory per device (routes and presence): $(( (m1 - m0) / n )) B (before $m0, held $m1)"
}

scenario_kill() {
  local i lpid victim=$NODES
  start_redis_any
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
  wait_live "$NODES"
  cpu_mark
  "$LOAD" chat --target "$(targets)" --jwt-secret "$SECRET" --pairs "$PAIRS" --rate "${RATE:-500}" \
    --duration "$SECS" --ramp "$RAMP" --verify --reconnect --json --quiet >"$RUN/kill.json" &
  lpid=$!; PIDS+=("$lpid")
  # Kill once the load is sending (a third into its duration, after the ramp).
  sleep $(( PAIRS * 2 / RAMP + 2 + SECS / 3 ))
  local held; held=$(metric "${NODE_HTTP[$victim]}" tern_connections)
  CPU_LAST[n$victim]=$(cpu_ms "${NODE_PIDS[$victim]}")
  kill -9 "${NODE_PIDS[$victim]}"
  wait "${NODE_PIDS[$victim]}" 2>/dev/null || true
  echo "killed n$victim (-9) holding ${held} connections at $(date +%T.%N)"
  wait "$lpid" || true
  cpu_report kill "$(jq .sent "$RUN/kill.json")" message
  jq -r '"devices dropped \(.dropped), back \(.reconnected), all back after \(.reconnect_all_ms // "never") ms (reconnect p50/p99 \(.reconnect_p50_us)/\(.reconnect_p99_us) us)",
    "sent \(.sent), acked \(.acked), send failures \(.send_failed), lost \(.lost // "-"), duplicated \(.duplicated // "-"), divergent \(.divergent // "-")"' "$RUN/kill.json"
}

stop_nodes() { # SIGTERM every node started so far, by PID; wait for each
  local i
  for i in "${!NODE_PIDS[@]}"; do kill "${NODE_PIDS[$i]}" 2>/dev/null || true; done
  for i in "${!NODE_PIDS[@]}"; do wait "${NODE_PIDS[$i]}" 2>/dev/null || true; done
  NODE_PIDS=(); NODE_TCP=(); NODE_HTTP=()
}

route_read_buckets() { # the route read histogram of every node, summed: "<=bound:count" cumulative
  local i
  for i in "${!NODE_HTTP[@]}"; do curl -s --max-time 2 "http://${NODE_HTTP[$i]}/metrics"; done |
    awk -F'[{}"]' '/^tern_cluster_route_read_latency_seconds_bucket/ { split($5, v, " "); c[$3] += v[1]; if (!($3 in seen)) { seen[$3] = 1; order[n++] = $3 } }
      END { for (k = 0; k < n; k++) printf "<=%s:%d ", order[k], c[order[k]] }'
}

route_read_per() { # MESSAGES: the workers' route read time summed over the nodes, per message
  local sum count
  sum=$(metric_sum tern_cluster_route_read_latency_seconds_sum)
  count=$(metric_sum tern_cluster_route_read_latency_seconds_count)
  awk -v s="$sum" -v c="$count" -v m="$1" 'BEGIN { if (m > 0) printf "%.0f us (%d reads)", s * 1e6 / m, c; else print "-" }'
}

scenario_routecost() { # G RATE: the route read of a G-member group message, cache off then on
  local g=${1:?routecost G RATE} rate=${2:?routecost G RATE} i mode extra=${CLUSTER_TOML:-}
  start_redis_any
  printf '%-6s %8s %10s %28s %10s %12s\n' cache sent delivered "route read per message" hgetall hgetall_us >"$RUN/routecost.txt"
  for mode in off on; do
    if [ "$mode" = off ]; then CLUSTER_TOML="route_cache_entries_max = 0
$extra"; else CLUSTER_TOML=$extra; fi
    for i in $(seq 1 "$NODES"); do start_node "$i"; done
    wait_live "$NODES"
    for p in "${REDIS_PORTS[@]}"; do redis-cli -p "$p" CONFIG RESETSTAT >/dev/null; done
    cpu_mark
    load "$RUN/route-$mode.json" group --target "$(targets)" --groups 1 --group-size "$g" --rate "$rate" --duration "$SECS"
    cpu_report "cache $mode" "$(jq .sent "$RUN/route-$mode.json")" message
    local calls=0 usec=0 c u
    for p in "${REDIS_PORTS[@]}"; do
      read -r c u < <(redis-cli -p "$p" INFO commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_hgetall:/ { print $3, $5 }')
      calls=$((calls + ${c:-0})); usec=$((usec + ${u:-0}))
    done
    local sent; sent=$(jq .sent "$RUN/route-$mode.json")
    printf '%-6s %8s %10s %28s %10s %12s\n' "$mode" "$sent" \
      "$(jq .delivered "$RUN/route-$mode.json")" "$(route_read_per "$sent")" "$calls" "$usec" >>"$RUN/routecost.txt"
    echo "route reads by latency, all nodes (cumulative): $(route_read_buckets)"
    echo "route cache $mode: hits $(metric_sum tern_cluster_route_cache_hits_total), misses $(metric_sum tern_cluster_route_cache_misses_total), resets $(metric_sum tern_cluster_route_cache_resets_total)"
    stop_nodes
  done
  cat "$RUN/routecost.txt"
}

case "$SCENARIO" in
  chat) scenario_chat "$@" ;;
  fanout) scenario_fanout "$@" ;;
  storm) scenario_storm "$@" ;;
  kill) scenario_kill "$@" ;;
  routecost) scenario_routecost "$@" ;;
  room) scenario_room "$@" ;;
  *) sed -n '2,23p' "$0" >&2; exit 2 ;;
esac
echo "nodes: $NODES x $SHARDS shard(s), redis: $REDIS, binaries: $(dirname "$TERN")"
echo "machine: $(machine)"
