#!/usr/bin/env bash
# Step time of the harness against PyTorch on the same sizes, same machine, same threads,
# run back to back. Usage: scripts/bench.sh [bench.toml] (defaults: benches/small.toml).
# Needs a Python with torch and transformers (PYTHON, default python3).
# REPEATS=N (default 1) alternates the two sides N times and reports the median of the
# runs' medians: on a shared machine one pair can be off by 30%.
# JSON=DIR also writes every run's raw JSON there.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg="${1:-benches/small.toml}"
py="${PYTHON:-python3}"
threads="${THREADS:-$(nproc)}"
repeats="${REPEATS:-1}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/harness"
for stage in 1 2; do
    runs=()
    for _ in $(seq "$repeats"); do
        # Stage 2 on both sides with a dense base (peft LoRA); the NF4 run is listed apart.
        ours=$(RAYON_NUM_THREADS="$threads" "$bin" bench --config "$cfg" --stage "$stage" --nf4 false --json)
        theirs=$("$py" scripts/bench_torch.py --config "$cfg" --stage "$stage" --threads "$threads")
        nf4=null
        [ "$stage" = 2 ] && nf4=$(RAYON_NUM_THREADS="$threads" "$bin" bench --config "$cfg" --stage 2 --nf4 true --json)
        runs+=("{\"harness\": $ours, \"pytorch\": $theirs, \"harness nf4\": $nf4}")
    done
    tmp=$(mktemp)
    printf '%s\n' "${runs[@]}" > "$tmp"
    "$py" - "$tmp" "${JSON:-}" <<'PY'
import json, statistics, sys, time
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if sys.argv[2]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stage = runs[0]["harness"]["timing"]["stage"]
    with open(f"{sys.argv[2]}/cpu-bench-{stage}-{stamp}.json", "w") as f:
        json.dump(runs, f, indent=1)
first = runs[0]["harness"]
print(f"== {first['timing']['stage']}  config: {first['config']}  ({len(runs)} alternating runs)")
print(f"{'':16} {'median ms':>10} {'tokens/s':>10} {'peak MiB':>9}  runs' medians")
med = {}
for name in ["harness", "pytorch", "harness nf4"]:
    ts = [r[name]["timing"] for r in runs if r[name]]
    if not ts:
        continue
    m = statistics.median(t["median_ms"] for t in ts)
    med[name] = (m, max(t["peak_rss_bytes"] for t in ts))
    each = " ".join(f"{t['median_ms']:.0f}" for t in ts)
    tok = statistics.median(t["tokens_per_s"] for t in ts)
    print(f"{name:16} {m:10.1f} {tok:10.0f} {med[name][1]/2**20:9.0f}  {each}")
(a, ma), (b, mb) = med["harness"], med["pytorch"]
print(f"step time ratio harness/pytorch: {a/b:.2f}")
print(f"peak memory ratio harness/pytorch: {ma/mb:.2f}")
PY
    rm -f "$tmp"
done
