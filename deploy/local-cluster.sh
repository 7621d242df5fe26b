#!/usr/bin/env bash
# A local Tern cluster on this machine: 3 `tern serve --store redis` nodes on
# a 3-master Redis Cluster (no replicas), everything on loopback, on free
# ports from PORT_BASE, with its data, logs and PIDs under CLUSTER_DIR.
# (docs/cluster.md: Redis Cluster is given to every node as seed URLs with
# --redis-cluster; docs/operations.md, "Deploy files".)
#
#   deploy/local-cluster.sh up       start it; prints the addresses and how to chat
#   deploy/local-cluster.sh status   what runs, and each node's /readyz
#   deploy/local-cluster.sh down     stop every process `up` started, by PID; remove CLUSTER_DIR
#
# Environment: CLUSTER_DIR (default ${TMPDIR:-/tmp}/tern-local-cluster),
# BIN (a directory holding `tern`; default target/release, built if missing),
# PORT_BASE (7600), NODES (3), SHARDS per node (1), SECRET (the JWT secret,
# default local-cluster-secret), KEEP=1 (down keeps CLUSTER_DIR).
# `up` writes CLUSTER_DIR/env (NODE<i>_TCP, NODE<i>_WS, NODE<i>_HTTP,
# REDIS_URLS, SECRET) for scripts, and CLUSTER_DIR/pids (what `down` stops).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_DIR="${CLUSTER_DIR:-${TMPDIR:-/tmp}/tern-local-cluster}"
NODES=${NODES:-3}
SHARDS=${SHARDS:-1}
SECRET=${SECRET:-local-cluster-secret}
NEXT_PORT=${PORT_BASE:-7600}
PIDS_FILE="$CLUSTER_DIR/pids"
# Bounded waits (steps of 0.1 s).
READY_STEPS=300

die() { echo "local-cluster: $*" >&2; exit 1; }

# alloc_port VAR: the next loopback port at or above PORT_BASE where nothing
# listens.
alloc_port() {
  local tries=0
  while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do
    NEXT_PORT=$((NEXT_PORT + 1)); tries=$((tries + 1))
    [ "$tries" -lt 1000 ] || die "no free port from ${PORT_BASE:-7600}"
  done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

# is_ours PID NAME: PID runs and is the NAME binary (a PID reused by another
# program after ours exited is never signalled).
is_ours() {
  [ -r "/proc/$1/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"
}

# stop_pid PID NAME: SIGTERM, then up to STOP_STEPS x 0.1 s for it to exit
# (a tern node drains), then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 steps=${3:-450} i
  is_ours "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < steps; i++)); do
    is_ours "$pid" "$name" || return 0
    sleep 0.1
  done
  echo "local-cluster: $name (pid $pid) still running after SIGTERM; SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  [ -f "$PIDS_FILE" ] || { echo "local-cluster: nothing recorded in $CLUSTER_DIR; nothing to stop"; return 0; }
  local lines=() i kind pid name
  mapfile -t lines <"$PIDS_FILE"
  # Reverse order of start: the nodes (they leave the cluster cleanly), then
  # Redis.
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r kind pid _ <<<"${lines[$i]}"
    case $kind in
      tern) name=tern ;;
      redis) name=redis-server ;;
      *) continue ;;
    esac
    stop_pid "$pid" "$name"
  done
  if [ "${KEEP:-}" = 1 ]; then
    rm -f "$PIDS_FILE"
    echo "local-cluster: stopped; kept $CLUSTER_DIR"
  else
    rm -rf "$CLUSTER_DIR"
    echo "local-cluster: stopped; removed $CLUSTER_DIR"
  fi
}

status() {
  [ -f "$PIDS_FILE" ] || { echo "local-cluster: not up ($CLUSTER_DIR has no pids file)"; return 1; }
  local kind pid addr rc=0 state
  while read -r kind pid addr; do
    case $kind in
      tern)
        state=down
        if is_ours "$pid" tern; then
          state="running, /readyz $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/readyz" || true)"
        else rc=1; fi
        echo "tern node pid $pid http $addr: $state" ;;
      redis)
        if is_ours "$pid" redis-server; then state=running; else state=down; rc=1; fi
        echo "redis pid $pid port $addr: $state" ;;
    esac
  done <"$PIDS_FILE"
  return "$rc"
}

metric() { # HTTP_ADDR NAME: an unlabelled sample of a node's /metrics (empty if absent)
  curl -s --max-time 2 "http://$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

up() {
  [ "$NODES" -ge 2 ] || die "NODES must be at least 2"
  if [ -f "$PIDS_FILE" ]; then
    die "$CLUSTER_DIR already holds a cluster (run: $0 down)"
  fi
  command -v redis-server >/dev/null || die "redis-server is missing (Debian: apt-get install redis-server)"
  command -v redis-cli >/dev/null || die "redis-cli is missing (Debian: apt-get install redis-tools)"
  command -v curl >/dev/null || die "curl is missing"
  local bin=${BIN:-$ROOT/target/release}
  if [ ! -x "$bin/tern" ]; then
    [ -z "${BIN:-}" ] || die "no tern binary in BIN=$bin"
    echo "local-cluster: building the release tern (once)" >&2
    (cd "$ROOT" && cargo build --release -p tern-gateway --bin tern)
  fi
  mkdir -p "$CLUSTER_DIR"
  : >"$PIDS_FILE"
  # Anything that fails from here (die, or a failed command under set -e)
  # stops what was started.
  trap 'rc=$?; if [ "$rc" -ne 0 ]; then echo "local-cluster: up failed; stopping what started" >&2; KEEP=1 down >&2; fi' EXIT

  local i p bus ports=() addrs=() dir
  for i in 1 2 3; do
    alloc_port p
    # The cluster bus port is allocated like the others (by default Redis
    # takes port + 10000, which may be in the ephemeral range and taken by
    # some outgoing connection: "bind: Address already in use").
    alloc_port bus
    dir="$CLUSTER_DIR/redis$i"; mkdir -p "$dir"
    # Durable as the Redis store requires (AOF, fsync per write); noeviction
    # as docs/operations.md says; Redis Cluster mode.
    nohup redis-server --port "$p" --bind 127.0.0.1 --dir "$dir" --save '' \
      --appendonly yes --appendfsync always --maxmemory-policy noeviction \
      --cluster-enabled yes --cluster-port "$bus" --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      </dev/null >"$dir/redis.log" 2>&1 &
    echo "redis $! $p" >>"$PIDS_FILE"
    ports+=("$p"); addrs+=("127.0.0.1:$p")
  done
  for p in "${ports[@]}"; do
    for ((i = 0; i < READY_STEPS; i++)); do
      redis-cli -p "$p" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    [ "$i" -lt "$READY_STEPS" ] || die "redis on port $p did not start: $(tail -qn 3 "$CLUSTER_DIR"/redis*/redis.log 2>/dev/null | tr '\n' ' ')"
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
    >"$CLUSTER_DIR/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed (see $CLUSTER_DIR/cluster-create.log)"
  for p in "${ports[@]}"; do
    for ((i = 0; i < READY_STEPS; i++)); do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
      sleep 0.1
    done
    [ "$i" -lt "$READY_STEPS" ] || die "redis on port $p never reported cluster_state:ok"
  done
  local urls
  urls=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}"); urls=${urls%,}

  local tcp ws http env_file="$CLUSTER_DIR/env" https=()
  { echo "REDIS_URLS=$urls"; echo "SECRET=$SECRET"; } >"$env_file"
  for ((i = 1; i <= NODES; i++)); do
    alloc_port tcp; alloc_port ws; alloc_port http
    dir="$CLUSTER_DIR/n$i"; mkdir -p "$dir"
    # env -u: a TERN_ variable of the caller's shell must not change a node.
    nohup env $(env | awk -F= '/^TERN_/ { printf "-u %s ", $1 }') "$bin/tern" serve \
      --store redis --redis-url "$urls" --redis-cluster --node-id "n$i" \
      --data-dir "$dir" --jwt-secret "$SECRET" --shards "$SHARDS" \
      --listen "127.0.0.1:$tcp" --ws-listen "127.0.0.1:$ws" --http "127.0.0.1:$http" \
      </dev/null >"$dir/tern.log" 2>&1 &
    echo "tern $! 127.0.0.1:$http" >>"$PIDS_FILE"
    printf 'NODE%s_TCP=127.0.0.1:%s\nNODE%s_WS=127.0.0.1:%s\nNODE%s_HTTP=127.0.0.1:%s\n' \
      "$i" "$tcp" "$i" "$ws" "$i" "$http" >>"$env_file"
    https+=("127.0.0.1:$http")
  done
  # Ready once every node answers /readyz 200 and sees every node live.
  local h n
  for h in "${https[@]}"; do
    for ((i = 0; i < READY_STEPS; i++)); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$h/readyz" || true)" = 200 ] && break
      sleep 0.1
    done
    [ "$i" -lt "$READY_STEPS" ] || die "the node with HTTP $h did not become ready (its log: $CLUSTER_DIR/n*/tern.log)"
    for ((i = 0; i < READY_STEPS; i++)); do
      n=$(metric "$h" tern_cluster_live_nodes)
      [ "${n:-0}" = "$NODES" ] && break
      sleep 0.1
    done
    [ "$i" -lt "$READY_STEPS" ] || die "the node with HTTP $h sees ${n:-0} live nodes, not $NODES"
  done
  trap - EXIT

  # shellcheck disable=SC1090
  source "$env_file"
  echo "local-cluster: up in $CLUSTER_DIR: $NODES tern nodes on a 3-master Redis Cluster ($urls)"
  for ((i = 1; i <= NODES; i++)); do
    local t="NODE${i}_TCP" w="NODE${i}_WS" hh="NODE${i}_HTTP"
    echo "  node n$i: tcp ${!t}  ws ${!w}  http ${!hh}"
  done
  echo "chat across nodes (tern-cli: cargo build --release --bin tern-cli):"
  echo "  tern-cli --server $NODE1_TCP --user alice --jwt-secret $SECRET"
  echo "  tern-cli --server ${NODE2_TCP} --user bob --jwt-secret $SECRET"
  echo "stop: $0 down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
