#!/usr/bin/env bash
# The server API's send path under an HTTP load tool (docs/benchmarks.md,
# "Server API: push"): one release `tern` (embedded store), USERS idle
# recipients connected with tern-load (they read and ack their pushes), then
# `oha` POSTs REQUESTS sends over CONC connections. oha's `-Z` picks a body
# line at random for each request, so the file holds 100 bodies per request,
# each with its own request_id: about 0.5% of the requests replay one (answered
# `duplicate`, nothing sent), which is why deliveries are counted where they
# arrive, by the recipients:
#
#   bench/scripts/push_api.sh users [REQUESTS] [CONC] [QPS]   POST /api/v1/messages to_user, round robin over the users
#   bench/scripts/push_api.sh group [REQUESTS] [CONC] [QPS]   POST /api/v1/messages to_group: one group of every user
# (QPS: oha's request rate limit; 0 or absent: as fast as it goes)
#
# Prints oha's requests/s and latency percentiles, the answers by status,
# the server's deliveries (pushes written) during the run and per second,
# and the server's CPU per request and per delivery.
# Environment: USERS (1000), SHARDS (2), RAMP (5000), HOLD (the recipients'
# hold, s: 20; the run must fit in it), PORT_BASE (27600).
source "$(dirname "$0")/lib.sh"
MODE=${1:-users}; REQUESTS=${2:-20000}; CONC=${3:-32}; QPS=${4:-0}
USERS=${USERS:-1000}; SHARDS=${SHARDS:-2}; RAMP=${RAMP:-5000}; HOLD=${HOLD:-20}
PORT_BASE=${PORT_BASE:-27600}
command -v oha >/dev/null || { echo "needs oha (cargo install oha --locked)" >&2; exit 1; }
build
RUN="$(mktemp -d "${TMPDIR:-/tmp}/tern-push.XXXXXX")"; DIRS+=("$RUN")
trap cleanup EXIT
[ -n "${KEEP:-}" ] && { DIRS=(); echo "keeping $RUN" >&2; }
KEY=bench-api-key-0123456789
TCP=127.0.0.1:$PORT_BASE HTTP=127.0.0.1:$((PORT_BASE + 2))
TERN_LOG=warn TERN_API_KEY=$KEY "$TERN" serve --data-dir "$RUN/data" --jwt-secret "$SECRET" \
  --shards "$SHARDS" --listen "$TCP" --ws-listen 127.0.0.1:$((PORT_BASE + 1)) --http "$HTTP" \
  >"$RUN/tern.log" 2>&1 &
TPID=$!; PIDS+=("$TPID")
wait_port 127.0.0.1 "$PORT_BASE"
RID=pa$$
"$LOAD" idle --target "$TCP" --jwt-secret "$SECRET" --conns "$USERS" --ramp "$RAMP" --hold "$HOLD" \
  --run-id "$RID" --idle-acks --json --quiet >"$RUN/idle.json" &
LPID=$!; PIDS+=("$LPID")
# Until every recipient is connected (bounded: 30 s).
for _ in $(seq 1 300); do
  [ "$(curl -s "http://$HTTP/metrics" | awk '$1 == "tern_connections" { s += $2 } END { print s + 0 }')" -ge "$USERS" ] && break
  sleep 0.1
done
api() { curl -s -o /dev/null -w '%{http_code}' -X "$1" "http://$HTTP$2" -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' -d "$3"; }
if [ "$MODE" = group ]; then
  # The group: owner user 0, every other recipient added in lists of 500.
  code=$(api POST /api/v1/groups "{\"owner\": \"$RID-i0\", \"name\": \"bench\", \"group_id\": \"g$RID\"}")
  [ "$code" = 201 ] || [ "$code" = 200 ] || { echo "group create: $code" >&2; exit 1; }
  for ((s = 1; s < USERS; s += 500)); do
    m=$(seq "$s" $((s + 499 < USERS - 1 ? s + 499 : USERS - 1)) | sed "s/^/\"$RID-i/; s/\$/\"/" | paste -sd,)
    code=$(api POST "/api/v1/groups/g$RID/members" "{\"user_ids\": [$m]}")
    [ "${code:0:1}" = 2 ] || { echo "add members: $code" >&2; exit 1; }
  done
  awk -v n="$((REQUESTS * 100))" -v r="$RID" 'BEGIN { for (k = 0; k < n; k++)
    printf "{\"request_id\": \"r%d\", \"from\": \"system\", \"to_group\": \"g%s\", \"content\": {\"type\": \"text\", \"text\": \"notice %d\"}}\n", k, r, k }' >"$RUN/bodies"
  PER=$((USERS))
else
  awk -v n="$((REQUESTS * 100))" -v u="$USERS" -v r="$RID" 'BEGIN { for (k = 0; k < n; k++)
    printf "{\"request_id\": \"r%d\", \"from\": \"system\", \"to_user\": \"%s-i%d\", \"content\": {\"type\": \"text\", \"text\": \"notice %d\"}}\n", k, r, k % u, k }' >"$RUN/bodies"
  PER=1
fi
sleep 1
frames() { curl -s "http://$HTTP/metrics" | awk '$1 ~ /^tern_deliveries_total/ { s += $2 } END { print s + 0 }'; }
metric() { curl -s "http://$HTTP/metrics" | awk -v n="$1" '$1 ~ "^"n { s += $2 } END { print s + 0 }'; }
frames() { metric tern_deliveries_total; }
d0=$(frames); w0=$(metric tern_deliveries_window_full_total)
c0=$(cpu_ms "$TPID")
# The server's Deliver count every 0.05 s (bounded: 120 s): the push
# window runs from its first move to its last.
(for _ in $(seq 1 2400); do echo "$(date +%s.%N) $(frames)"; sleep 0.05; done) >"$RUN/frames.txt" &
SPID=$!; PIDS+=("$SPID")
rate=(); [ "$QPS" != 0 ] && rate=(-q "$QPS")
oha --no-tui --output-format json -n "$REQUESTS" -c "$CONC" "${rate[@]}" -m POST -T application/json \
  -H "Authorization: Bearer $KEY" -Z "$RUN/bodies" "http://$HTTP/api/v1/messages" >"$RUN/oha.json"
# Pushes still going out after the last answer: wait until the count has
# not moved for 1 s (bounded: 60 s).
for _ in $(seq 1 60); do
  sleep 1
  awk -v d0="$d0" 'END { exit !($2 > d0) }' "$RUN/frames.txt" || continue
  [ "$(tail -n 21 "$RUN/frames.txt" | awk '{ print $2 }' | sort -u | wc -l)" = 1 ] && break
done
kill "$SPID" 2>/dev/null || true
prev=$(frames); w1=$(metric tern_deliveries_window_full_total)
read -r t0 tl < <(awk -v d0="$d0" '$2 > d0 && !f { f = $1 } $2 != last { l = $1; last = $2 } END { print f, l }' "$RUN/frames.txt")
c1=$(cpu_ms "$TPID")
# The recipients end on their own after HOLD (killing tern-load mid-run
# breaks its workers' pipes); their report counts the entries they got.
wait "$LPID" || true
jq -r --arg mode "$MODE" --arg users "$USERS" --arg conc "$CONC" '
  "mode \($mode): \(.statusCodeDistribution | to_entries | map("HTTP \(.key): \(.value)") | join(", ")), \($users) recipients online, \($conc) connections",
  "requests/s \(.summary.requestsPerSec | floor); latency p50 \(.latencyPercentiles.p50 * 1000 | . * 100 | floor / 100) ms, p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms, p99.9 \(.latencyPercentiles["p99.9"] * 1000 | . * 100 | floor / 100) ms; wall \(.summary.total | . * 100 | floor / 100) s"' "$RUN/oha.json"
entries=$(jq '.entries_received' "$RUN/idle.json")
awk -v e="$entries" -v f="$((prev - d0))" -v t="$(awk -v a="$t0" -v b="$tl" 'BEGIN { print (b - a > 0.05 ? b - a : 0.05) }')" -v wf="$((w1 - w0))" \
  -v n="$REQUESTS" -v per="$PER" -v c="$((c1 - c0))" -v h="$(jq '"\(.held) held, \(.failed) failed"' -r "$RUN/idle.json")" 'BEGIN {
  printf "deliveries: %d entries received of %d requested (recipients: %s) in %d Deliver frames (%d skipped: window full), pushed over %.2f s (first to last push): %.0f/s\n", e, n * per, h, f, wf, t, e / t
  printf "server CPU %d ms: %.1f us per request, %.2f us per delivery\n", c, c * 1000 / n, (e > 0 ? c * 1000 / e : 0) }'
echo "machine: $(machine)"
