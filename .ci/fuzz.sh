#!/usr/bin/env bash
# Bounded fuzzing for CI: builds every target in fuzz/ and runs each for
# FUZZ_SECONDS (default 60) of libFuzzer time. Exits non-zero on a crash, a
# leak, an allocation over FUZZ_MALLOC_LIMIT_MB, a per-input timeout, or a
# run that overstays its bound. Installs cargo-fuzz when missing.
#
# Only the stable toolchain is needed: cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 lets stable rustc accept.
# See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
# Any single allocation above this is a failure: decoders must not allocate
# from a claimed length (inputs are at most a few KiB).
FUZZ_MALLOC_LIMIT_MB="${FUZZ_MALLOC_LIMIT_MB:-64}"
CARGO_FUZZ_VERSION="0.13.2"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# libfuzzer-sys compiles libFuzzer (C++) from source.
if ! command -v c++ >/dev/null 2>&1; then
  echo "installing g++ (libFuzzer is C++)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq g++ >/dev/null
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
cargo fuzz --version

targets=$(cd fuzz && cargo fuzz list)
if [ -z "$targets" ]; then
  echo "no fuzz targets found in fuzz/" >&2
  exit 1
fi

status=0
for target in $targets; do
  echo "== fuzz $target (${FUZZ_SECONDS}s)"
  # Build first, outside the time bound: a cold build takes minutes.
  (cd fuzz && cargo fuzz build --debug-assertions "$target")
  mkdir -p "fuzz/corpus/$target"
  # libFuzzer stops itself at -max_total_time; `timeout` is the backstop for a
  # run that does not (a hang inside one input is caught by -timeout first).
  set +e
  (cd fuzz && timeout --signal=KILL "$((FUZZ_SECONDS + 120))" \
    cargo fuzz run --debug-assertions "$target" -- \
      -max_total_time="$FUZZ_SECONDS" \
      -timeout=10 \
      -malloc_limit_mb="$FUZZ_MALLOC_LIMIT_MB" \
      -rss_limit_mb=2048 \
      -print_final_stats=1)
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "!! fuzz target $target failed (exit $rc)" >&2
    if [ -d "fuzz/artifacts/$target" ]; then
      echo "artifacts (reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target <file>):" >&2
      ls -l "fuzz/artifacts/$target" >&2 || true
    fi
    status=1
  fi
done
exit "$status"
