#!/bin/bash
# `harness eval bench` throughput, batch 1 vs 8 (BENCHMARKS.md): a micro run
# (benches/eval-bench-micro.toml) over a 400-image synthetic world, then 400 of its POPE
# questions answered twice per batch size (answers removed in between, so nothing resumes).
# Usage: scripts/bench_eval_bench.sh [WORK_DIR] (default /var/tmp/eval-bench); needs a
# release build (cargo test --release --no-run builds target/release/harness).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
H=${HARNESS_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/harness}
work=${1:-/var/tmp/eval-bench}
mkdir -p "$work" && cd "$work"
cp "$repo/benches/eval-bench-micro.toml" .
export HARNESS_RESULTS=$PWD/results HARNESS_CACHE=$PWD/cache
[ -d world ] || "$H" synth --out world --images 400 --size 32 --val-fraction 0.25 --threads 2
"$H" show bench-meas >/dev/null 2>&1 || "$H" run eval-bench-micro.toml
for b in 1 8 1 8; do
  rm -rf results/*/bench/pope
  /usr/bin/time -f "wall %e s" "$H" eval bench bench-meas --task pope \
    --data world/bench/pope --limit 400 --batch "$b" --json 2>&1 | grep -E "bench pope:|wall"
done
