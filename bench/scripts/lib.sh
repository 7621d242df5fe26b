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

# machine line for the record
machine() {
  echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(date -u +%Y-%m-%d)"
}
