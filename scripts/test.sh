#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh
# Debian machine (redis-server for the Redis store tests, moto for the S3
# media store tests), then runs every test of the workspace. Safe to run
# again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# The docs' examples are run as written (gateway/tests/doc_examples.rs):
# curl, and openssl for the webhook signature example.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)

# moto (PyPI `moto[server]`, an S3-compatible server) for the S3 media store
# tests (gateway/tests/media_s3.rs), which fail rather than skip without it
# in CI. Debian 13's python3 is "externally managed" (PEP 668): pip may not
# install into it, so moto goes into a venv of its own, created once and
# reused (the tests look there too). One already on PATH is used as it is.
venv="${MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-test-venv}"
moto=""
if [ -n "${MOTO_SERVER_BIN:-}" ]; then
  moto="$MOTO_SERVER_BIN"
elif [ -x "$venv/bin/moto_server" ]; then
  moto="$venv/bin/moto_server"
elif command -v moto_server >/dev/null 2>&1; then
  moto="$(command -v moto_server)"
else
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
  # `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (needed by the Redis store, S3 media and docs example tests)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ -z "$moto" ]; then
  echo "installing moto[server] into $venv (needed by the S3 media tests)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]>=5,<6'
  moto="$venv/bin/moto_server"
fi
# Not a TERN_* name: `tern serve` refuses TERN_ variables it does not know,
# and the tests start it with their environment.
export MOTO_SERVER_BIN="$moto"
# The Debian package starts a system redis on 6379; the tests never use it
# (each test starts its own server on a free loopback port).

cargo test --workspace --all-targets --locked
# Doc tests are not part of --all-targets.
cargo test --workspace --doc --locked
