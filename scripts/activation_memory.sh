#!/usr/bin/env bash
# Activation memory of one Phi-2 layer in stage 2, measured on the CPU (f32): `harness
# bench` at Phi-2's width with 2 and with 4 layers, one sequence of SEQ tokens (196 image
# tokens + text), each with and without per-layer activation checkpointing. What the steps
# hold beyond the built model (peak anonymous RSS during the steps minus the anonymous RSS
# before them) grows by one layer's activations per layer, so the per-layer figure is the
# difference between 4 and 2 layers, halved; the rest (logits, loss, the head) is what the
# 2-layer run holds beyond 2 layers. Raw JSON of every run under OUT (default
# benches/results/). Usage: scripts/activation_memory.sh [SEQ (default 512)]
set -euo pipefail
cd "$(dirname "$0")/.."
seq="${1:-512}"
out="${OUT:-benches/results}"
bin="${HARNESS_BIN:-${CARGO_TARGET_DIR:-target}/release/harness}"
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
text=$((seq - 196))
for ckpt in false true; do
    for layers in 2 4; do
        cfg=$(mktemp --suffix .toml)
        sed -e "s/^layers = .*/layers = $layers/" -e "s/^text_len = .*/text_len = $text/" \
            -e "s/^steps = .*/steps = 1/" -e "s/^warmup = .*/warmup = 0/" \
            -e "s/^activation_checkpointing = .*/activation_checkpointing = $ckpt/" \
            benches/phi2.toml > "$cfg"
        "$bin" bench --config "$cfg" --stage 2 --json > "$out/cpu-activation-$stamp-l$layers-ckpt-$ckpt.json"
        rm -f "$cfg"
    done
done
python3 - "$out" "$stamp" "$seq" <<'PY'
import json, sys
out, stamp, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
def held(layers, ckpt):
    t = json.load(open(f"{out}/cpu-activation-{stamp}-l{layers}-ckpt-{ckpt}.json"))["timing"]
    return t["peak_anon_bytes"] - t["model_anon_bytes"]
for ckpt in ("false", "true"):
    per_layer = (held(4, ckpt) - held(2, ckpt)) / 2
    rest = held(2, ckpt) - 2 * per_layer
    print(json.dumps({"seq": seq, "activation_checkpointing": ckpt == "true",
                      "per_layer_bytes": per_layer, "rest_bytes": rest,
                      "held_2_layers": held(2, ckpt), "held_4_layers": held(4, ckpt)}))
PY
