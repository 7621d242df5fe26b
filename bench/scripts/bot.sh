#!/usr/bin/env bash
# tern-bot through Tern (docs/benchmarks.md, "Bots"): the time from a user's
# send to the bot's first visible text, with the stand-in API answering at
# once, and the gateway's CPU per edit of a streamed reply beside its CPU per
# plain 1:1 message of the same run.
#
# It runs the ignored measurement of tools/tests/bot_e2e.rs in release: the
# gateway in-process (its shard and backend threads are the ones counted, by
# name, from /proc/self/task), the stand-in OpenAI-compatible server of that
# file, and the built tern-bot as its own process.
#
# Usage: bash bench/scripts/bot.sh            (release build)
#        PROFILE=debug bash bench/scripts/bot.sh  (the test profile, no release build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
echo "# $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(date -u +%Y-%m-%d)"
release=(--release)
[ "${PROFILE:-release}" = debug ] && release=()
cargo test "${release[@]}" -p tern-tools --test bot_e2e -- --ignored --nocapture --test-threads 1 \
  measure_first_token_latency_and_gateway_cpu_per_edit 2>&1 |
  grep -E '^(first visible|long reply|plain 1:1)'
