#!/usr/bin/env bash
# Side by side: the same idle and group fan-out work against Tern, Mosquitto
# (MQTT) and nats-server (NATS), in one run, each figure as a ratio Tern/peer.
#
#   bench/scripts/peers.sh [CONNS] [GROUP_SIZE] [RATE] [SECS]
#
# Defaults: 19,000 idle connections (one server process at the 20,000-fd
# cap), one group of 1,000 members, 20 group messages/s for 10 s. Each
# server is one process. Per server: a connect burst (as fast as it accepts;
# RSS per connection is read from /proc/PID/status on the fresh process,
# before and with the connections held), then idle at 2,000 connects/s,
# then the fan-out.
source "$(dirname "$0")/lib.sh"
CONNS=${1:-19000}; G=${2:-1000}; RATE=${3:-20}; SECS=${4:-10}
build
start_tern 27400 27480; TERN_PID=$LAST_PID
start_mosquitto 21883; MOSQ_PID=$LAST_PID
start_nats 24222; NATS_PID=$LAST_PID

run() { # name proto port pid scenario args...
  local name=$1 proto=$2 port=$3 pid=$4 sc=$5; shift 5
  "$LOAD" "$sc" --proto "$proto" --target "127.0.0.1:$port" --jwt-secret "$SECRET" \
    --gateway-pid "$pid" --heartbeat-ms 30000 --json --quiet "$@" >"$OUT/peers-$sc-$name.json"
}
for s in tern:tern:27400:$TERN_PID mosquitto:mqtt:21883:$MOSQ_PID nats:nats:24222:$NATS_PID; do
  IFS=: read -r name proto port pid <<<"$s"
  echo "== $name connect burst $CONNS (as fast as it accepts)" >&2
  run "$name" "$proto" "$port" "$pid" idle --conns "$CONNS" --ramp 100000 --hold 2
  mv "$OUT/peers-idle-$name.json" "$OUT/peers-burst-$name.json"
  echo "== $name idle $CONNS at 2,000/s" >&2
  run "$name" "$proto" "$port" "$pid" idle --conns "$CONNS" --ramp 2000 --hold 10
  echo "== $name group fan-out G=$G" >&2
  run "$name" "$proto" "$port" "$pid" group --groups 1 --group-size "$G" --rate "$RATE" --duration "$SECS"
done

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def load(sc, n): return json.load(open(f"{out}/peers-{sc}-{n}.json"))
rows = [("idle", "held", "held"), ("burst", "gateway_bytes_per_conn", "user-space B/conn"),
        ("idle", "connect_p99_us", "connect p99 µs @2k/s"),
        ("burst", "held", "held after burst"), ("burst", "connect_rate_per_s", "burst connects/s"),
        ("burst", "connect_p99_us", "burst connect p99 µs"),
        ("group", "deliveries_per_s", "deliveries/s"), ("group", "deliver_p50_us", "deliver p50 µs"),
        ("group", "deliver_p99_us", "deliver p99 µs"), ("group", "deliver_max_us", "deliver max µs")]
print(f"{'figure':<24}{'tern':>12}{'mosquitto':>12}{'nats':>12}{'tern/mosq':>11}{'tern/nats':>11}")
for sc, key, label in rows:
    v = {n: load(sc, n).get(key) or 0 for n in ("tern", "mosquitto", "nats")}
    r = lambda p: f"{v['tern'] / v[p]:.2f}" if v[p] else "-"
    print(f"{label:<24}{v['tern']:>12.0f}{v['mosquitto']:>12.0f}{v['nats']:>12.0f}{r('mosquitto'):>11}{r('nats'):>11}")
PY
echo "machine: $(machine)"
