#!/usr/bin/env bash
# Regenerates tests/fixtures/export/tiny: a tiny two-stage run on the synthetic world with
# the test backbones, exported with `harness export`, and the transformers + peft reference
# outputs of scripts/ref_export.py for it. Run from the repository root:
#   PYTHON=/path/to/python-with-torch-transformers-peft scripts/make_export_fixture.sh
# The run's numbers depend on this build's arithmetic, so the adapter differs between
# machines; the reference is always recomputed from the adapter committed beside it.
set -euo pipefail
PYTHON=${PYTHON:-python3}
HARNESS=${HARNESS:-${CARGO_TARGET_DIR:-target}/release/harness}
OUT=tests/fixtures/export/tiny
IDS=5,17,42,99,250,466,3,0,77,123,301,8
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$HARNESS" synth --out "$work/synth" --images 160 --size 32 --seed 3 --threads 2 >/dev/null
cat > "$work/fixture.toml" <<TOML
name = "export-fixture"
seed = 5
[model]
vision = "tests/fixtures/models/clip_vision"
lm = "tests/fixtures/train/phi"
projector_depth = 1
[data]
coco_root = "$work/synth"
instruct_json = "$work/synth/llava_instruct_150k.json"
val_images = 8
stage2_val = 16
max_len = 96
[stage1]
max_steps = 60
batch = 16
lr = 1e-2
warmup = 0.05
checkpoint_every = 0
[stage2]
max_steps = 10
batch = 8
# A large rate so the adapter moves the logits far more than the parity tolerance.
lr = 1e-2
projector_lr = 1e-3
lora_rank = 8
lora_alpha = 16
checkpoint_every = 0
[eval]
caption_images = 4
qa_samples = 8
max_new_tokens = 16
TOML
HARNESS_RESULTS="$work/results" HARNESS_CACHE="$work/cache" "$HARNESS" run "$work/fixture.toml"
HARNESS_RESULTS="$work/results" "$HARNESS" export --run export-fixture --out "$work/export" \
    --base-model tests/fixtures/train/phi
rm -rf "$OUT"
mkdir -p "$OUT"
cp "$work/export"/{adapter_config.json,adapter_model.safetensors,projector.safetensors,projector_config.json} "$OUT/"
"$PYTHON" scripts/ref_export.py --export "$OUT" --model tests/fixtures/train/phi --ids "$IDS" \
    --out "$OUT/reference.safetensors"
