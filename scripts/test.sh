#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh
# Debian machine (redis-server for the Redis store tests), then runs every
# test of the workspace. Safe to run again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (needed by the Redis store tests)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package starts a system redis on 6379; the tests never use it
# (each test starts its own server on a free loopback port).

cargo test --workspace --all-targets --locked
# Doc tests are not part of --all-targets.
cargo test --workspace --doc --locked
