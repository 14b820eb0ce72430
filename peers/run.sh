#!/usr/bin/env bash
# One command for the side-by-side tables of docs/BENCHMARKS.md: builds
# corewal and the peer driver, then for each preset runs corewal load, the
# pwrite group-commit baseline, raft-engine and okaywal (and fio, when
# installed, for the device limit), ROUNDS times interleaved, and prints
# each peer beside corewal with ratios (`corewal compare`).
#   peers/run.sh                 # 1 round, 10 s per run, data under /var/tmp
#   ROUNDS=3 DURATION=10 DIR=/mnt/nvme peers/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-10}
DIR=${DIR:-/var/tmp}
OUT=${OUT:-$(mktemp -d "$DIR/corewal-peers-results-XXXXXX")}
cargo build --release -p corewal-tools
cargo build --release --manifest-path peers/Cargo.toml
COREWAL=target/release/corewal
PEERS=peers/target/release/corewal-peers
for r in $(seq 1 "$ROUNDS"); do
  if command -v fio >/dev/null 2>&1; then
    for bs in 4k 128k 256k; do
      fio --name=sync$bs --filename="$OUT/fio.dat" --size=1G --bs=$bs --rw=write --direct=1 \
        --ioengine=psync --fdatasync=1 --time_based --runtime="$DURATION" --output-format=json \
        > "$OUT/fio-$bs-r$r.json"
    done
    rm -f "$OUT/fio.dat"
  fi
  for p in small-sync batched fanout; do
    "$COREWAL" load --preset $p --duration "${DURATION}s" --dir "$DIR/corewal-peers-store-$$" --json \
      > "$OUT/corewal-$p-r$r.json"
    rm -rf "$DIR/corewal-peers-store-$$"
    for s in pwrite raft-engine okaywal; do
      "$PEERS" --system $s --preset $p --duration "$DURATION" --dir "$DIR" > "$OUT/$s-$p-r$r.json"
    done
  done
done
for r in $(seq 1 "$ROUNDS"); do
  for p in small-sync batched fanout; do
    for s in pwrite raft-engine okaywal; do
      echo "=== round $r, $p: corewal (A) and $s (B)"
      "$COREWAL" compare "$OUT/corewal-$p-r$r.json" "$OUT/$s-$p-r$r.json"
    done
  done
done
if command -v fio >/dev/null 2>&1; then
  echo "=== fio, write + fdatasync, one at a time (the device limit)"
  for f in "$OUT"/fio-*.json; do
    printf '%s: ' "$(basename "$f" .json)"
    grep '"bw_bytes"' "$f" | sed -n 2p | tr -dc '0-9' | awk '{printf "%.1f MB/s\n", $1/1e6}'
  done
fi
echo "results: $OUT"
