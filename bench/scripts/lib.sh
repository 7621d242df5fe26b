# Shared helpers of the macro bench scripts (sourced, not run).
# Everything listens on loopback ports below the ephemeral range (32768+), so
# the load's own source ports never collide with a listener.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TERN="${TERN:-$ROOT/target/release/tern}"
LOAD="${LOAD:-$ROOT/target/release/tern-load}"
SECRET="${SECRET:-bench-secret}"
OUT="${OUT:-$ROOT/target/bench-out}"
mkdir -p "$OUT"
PIDS=()
DIRS=()
TERN_EXTRA=() # more `tern serve` arguments, e.g. the Redis store's
# The load harness sends far above a person's rate from one connection (a
# group's single sender at hundreds of messages a second): the per-message
# and per-request rate limits (docs/security.md, "Rate limits") are off for
# every gateway these scripts start. Loopback is already exempt from the
# per-IP connection limit.
export TERN_LIMITS_MESSAGES_PER_CONNECTION_PER_SECOND=0 TERN_LIMITS_MESSAGES_PER_USER_PER_SECOND=0 \
  TERN_LIMITS_REQUESTS_PER_CONNECTION_PER_SECOND=0

build() {
  [ -x "$TERN" ] && [ -x "$LOAD" ] && return
  (cd "$ROOT" && cargo build --release -p tern-gateway --bin tern && cargo build --release -p tern-tools --bin tern-load)
}

# Stops every server this script started (by PID), on any exit.
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  for d in "${DIRS[@]:-}"; do
    [ -n "$d" ] && rm -rf "$d"
  done
  true # an empty DIRS must not make the script's exit status 1
}
trap cleanup EXIT

port_free() { # port
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is already in use: stop what listens there first" >&2; exit 2
  fi
}

wait_port() { # host port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2; return 1
}

# start_tern TCP_PORT HTTP_PORT [SHARDS] -> sets LAST_PID
start_tern() {
  local port=$1 http=$2 shards=${3:-0} dir
  port_free "$port"
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tern-bench.XXXXXX")"; DIRS+=("$dir")
  TERN_LOG=warn "$TERN" serve --jwt-secret "$SECRET" --listen "127.0.0.1:$port" \
    --ws-listen "127.0.0.1:$((port + 1000))" --http "127.0.0.1:$http" \
    --data-dir "$dir" --shards "$shards" "${TERN_EXTRA[@]}" >"$OUT/tern-$port.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  wait_port 127.0.0.1 "$port"
}

# tls_cert: a throwaway self-signed P-256 certificate for localhost and
# 127.0.0.1 in a temp dir (removed on exit), named to every `tern serve`
# started after it through TERN_TLS_CERT_FILE / TERN_TLS_KEY_FILE.
tls_cert() {
  need_pkg openssl openssl
  CERT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tern-tls.XXXXXX")"; DIRS+=("$CERT_DIR")
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$CERT_DIR/key.pem" -out "$CERT_DIR/cert.pem" 2>/dev/null
  export TERN_TLS_CERT_FILE="$CERT_DIR/cert.pem" TERN_TLS_KEY_FILE="$CERT_DIR/key.pem"
}

need_pkg() { # binary package
  command -v "$1" >/dev/null && return
  echo "installing $2 (Debian package)" >&2
  apt-get install -y -qq "$2" >/dev/null
}

start_mosquitto() { # PORT
  need_pkg mosquitto mosquitto
  port_free "$1"
  local conf="$OUT/mosquitto-$1.conf"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nlog_dest stderr\nlog_type error\n' "$1" >"$conf"
  mosquitto -c "$conf" >"$OUT/mosquitto-$1.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  wait_port 127.0.0.1 "$1"
}

start_nats() { # PORT
  need_pkg nats-server nats-server
  port_free "$1"
  nats-server -a 127.0.0.1 -p "$1" >"$OUT/nats-$1.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  wait_port 127.0.0.1 "$1"
}

start_redis() { # PORT: one redis-server with the durability the store requires
  need_pkg redis-server redis-server
  port_free "$1"
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tern-redis.XXXXXX")"; DIRS+=("$dir")
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$dir" >"$OUT/redis-$1.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  wait_port 127.0.0.1 "$1"
}

# start_redis_pubsub PORT: a plain redis-server for pub/sub peer runs
# (tern-load --proto redis): no RDB, no AOF — pub/sub stores nothing, so the
# durable setup start_redis gives the store would only cost CPU. maxclients
# 19000 (Redis's default is 10,000; it needs 32 more descriptors, within the
# 20,000 a process may hold here): a larger group's extra members get
# `-ERR max number of clients reached`, which tern-load reports as a
# peer_error fail reason. Protected mode off: it refuses clients from
# 127.0.0.2.. (the source addresses tern-load rotates over in large runs);
# the server listens on 127.0.0.1 only -> LAST_PID
start_redis_pubsub() {
  need_pkg redis-server redis-server
  port_free "$1"
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tern-redis-pubsub.XXXXXX")"; DIRS+=("$dir")
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --maxclients 19000 --protected-mode no \
    --dir "$dir" >"$OUT/redis-pubsub-$1.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  wait_port 127.0.0.1 "$1"
}

# machine line for the record
machine() {
  echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(date -u +%Y-%m-%d)"
}

# ---- many nodes (bench/scripts/cluster.sh) ----

NEXT_PORT=${PORT_BASE:-27500}
# alloc_port VAR: sets VAR to the next loopback port at or above PORT_BASE
# (27500) where nothing listens (below the ephemeral range, see the top).
alloc_port() {
  while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ms PID: user + system CPU time of the process so far, ms (from
# /proc/PID/stat fields 14 and 15; 0 once the process is gone).
cpu_ms() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) } # the command name may hold spaces; fields restart after it
  # shellcheck disable=SC2086
  set -- $s
  echo $(( (${12} + ${13}) * 1000 / CLK_TCK ))
}

# start_redis_at DIR PORT [ARGS...]: a durable redis-server (AOF,
# appendfsync always) with its data in DIR -> sets LAST_PID
start_redis_at() {
  local dir=$1 port=$2; shift 2
  need_pkg redis-server redis-server
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$dir" "$@" >"$dir/redis.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  wait_port 127.0.0.1 "$port"
}

# start_redis_cluster DIR MASTERS: MASTERS durable redis-servers in Redis
# Cluster mode under DIR/r1.., slots spread, no replicas -> sets REDIS_PORTS
# and REDIS_PIDS
start_redis_cluster() {
  local dir=$1 n=$2 i p addrs=()
  REDIS_PORTS=(); REDIS_PIDS=()
  for i in $(seq 1 "$n"); do
    alloc_port p
    start_redis_at "$dir/r$i" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000
    REDIS_PORTS+=("$p"); REDIS_PIDS+=("$LAST_PID"); addrs+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1
  for p in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break
      sleep 0.1
    done
  done
}
