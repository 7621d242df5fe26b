#!/bin/bash
# Media upload (docs/benchmarks.md, "Media: upload of a 5 MB image"): one
# release `tern` (1 shard) on loopback; a ~5 MB 12-megapixel PNG made here
# (python3, no imaging library) is uploaded RUNS times as kind=file (stored
# only: the baseline) and RUNS times as kind=image (stored, measured, decoded,
# thumbnail + compressed variant), one at a time with curl; prints each
# upload's time and the server's peak RSS (VmHWM) before and after each
# phase. The server is stopped by PID on exit.
# Usage: bash bench/scripts/media.sh [RUNS]
source "$(dirname "$0")/lib.sh"
RUNS=${1:-5}
[ -x "$TERN" ] || (cd "$ROOT" && cargo build --release -p tern-gateway --bin tern)
IMG="$OUT/media-5mb.png"
python3 - "$IMG" <<'PY'
import os, random, struct, sys, zlib
w, h = 4000, 3000
random.seed(7)
rows = bytearray()
for y in range(h):
    rows.append(0)
    # A gradient with one bit of noise per channel on every other row:
    # ~5 MB once deflated (a photo's size; noise keeps deflate honest).
    noise = random.getrandbits(w * 3).to_bytes((w * 3 + 7) // 8, "little") if y % 2 == 0 else bytes(w * 3)
    for x in range(w):
        base = ((x + y) // 16) & 0xFE
        for c in range(3):
            i = x * 3 + c
            rows.append(base | ((noise[i >> 3] >> (i & 7)) & 1))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
echo "image: $(stat -c %s "$IMG") bytes, 4000x3000"
TCP=7450; HTTP=7451
start_tern $TCP $HTTP 1
wait_port 127.0.0.1 $HTTP
PID=$LAST_PID
TOKEN=$("$TERN" token --user bench --jwt-secret "$SECRET")
hwm() { awk '/VmHWM/{print $2" kB"}' "/proc/$PID/status"; }
echo "server peak RSS at start: $(hwm)"
upload() { # kind
  curl -s -o "$OUT/media-answer.json" -w '%{http_code} %{time_total}\n' \
    -H "Authorization: Bearer $TOKEN" --data-binary @"$IMG" \
    "http://127.0.0.1:$HTTP/api/v1/media?kind=$1"
}
for kind in file image; do
  for i in $(seq 1 "$RUNS"); do echo "kind=$kind run=$i status,seconds: $(upload $kind)"; done
  echo "server peak RSS after kind=$kind: $(hwm)"
done
echo "last answer: $(cat "$OUT/media-answer.json")"
