#!/usr/bin/env bash
# Step time of the harness against PyTorch on the same sizes, same machine, same threads,
# run back to back. Usage: scripts/bench.sh [bench.toml] (defaults: benches/small.toml).
# Needs a Python with torch and transformers (PYTHON, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
cfg="${1:-benches/small.toml}"
py="${PYTHON:-python3}"
threads="${THREADS:-$(nproc)}"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/harness"
for stage in 1 2; do
    # Stage 2 on both sides with a dense base (peft LoRA); the NF4 run is listed apart.
    ours=$(RAYON_NUM_THREADS="$threads" "$bin" bench --config "$cfg" --stage "$stage" --nf4 false --json)
    theirs=$("$py" scripts/bench_torch.py --config "$cfg" --stage "$stage" --threads "$threads")
    nf4=""
    [ "$stage" = 2 ] && nf4=$(RAYON_NUM_THREADS="$threads" "$bin" bench --config "$cfg" --stage 2 --nf4 true --json)
    "$py" - "$ours" "$theirs" "$nf4" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ta, tb = a["timing"], b["timing"]
print(f"== {ta['stage']}  config: {a['config']}")
print(f"{'':16} {'median ms':>10} {'tokens/s':>10} {'peak MiB':>9}")
rows = [("harness", ta), ("pytorch", tb)]
if sys.argv[3]:
    rows.append(("harness nf4", json.loads(sys.argv[3])["timing"]))
for name, t in rows:
    print(f"{name:16} {t['median_ms']:10.1f} {t['tokens_per_s']:10.0f} {t['peak_rss_bytes']/2**20:9.0f}")
print(f"step time ratio harness/pytorch: {ta['median_ms']/tb['median_ms']:.2f}")
print(f"peak memory ratio harness/pytorch: {ta['peak_rss_bytes']/tb['peak_rss_bytes']:.2f}")
PY
done
