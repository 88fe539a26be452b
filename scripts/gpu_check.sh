#!/usr/bin/env bash
# The device check for a CUDA build: trains benches/gpu-smoke.toml (the tiny demo, cut
# short) on the GPU in f32 and in bf16 (`dtype = "auto"`), then times `harness bench`
# against PyTorch on the same GPU. Run from the repository root of a machine with an NVIDIA
# GPU, with the `cuda` binary built elsewhere (the GPU machine needs no Rust):
#   cargo build --release --features cuda && xz -k target/release/harness
#   OUT=/tmp/gpu scripts/gpu_check.sh path/to/harness[.xz]
# Output: $OUT/log.txt and the run store as $OUT/results.tgz.
set -u
bin="${1:-.gpu/harness.xz}"
OUT="${OUT:-/tmp/gpu-check}"
work="${WORK:-/tmp/gpu-work}"
mkdir -p "$OUT" "$work"
exec > >(tee "$OUT/log.txt") 2>&1
step() { echo; echo "== $* ($(date +%T))"; }
if [[ "$bin" == *.xz ]]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin" "$work/harness" || exit 1
    chmod +x "$work/harness"; bin="$work/harness"
fi
# cudarc loads libnvrtc at run time: add the CUDA toolkit's and pip's NVIDIA folders.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, x, "lib") for p in nvidia.__path__ for x in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$bin" --version || exit 1
export HARNESS_RESULTS="$work/results" HARNESS_CACHE="$work/cache"
# Only the `cuda-fused` build autotunes (BENCHMARKS.md: 97-229 s first steps); minimal
# autotuning keeps its check short. The `cuda` build has no fusion or autotuning.
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"

# A shorter check: BENCH_CONFIGS="benches/small.toml" BENCH_STAGES=1 DTYPES=f32.
t="${BENCH_TIMEOUT:-90}"
for cfg in ${BENCH_CONFIGS:-benches/small.toml benches/phi2-layers.toml}; do
    for stage in ${BENCH_STAGES:-1 2}; do
        step "bench $cfg stage $stage"
        timeout "$t" "$bin" bench --config "$cfg" --stage "$stage" --nf4 false --json
        timeout "$t" python3 scripts/bench_torch.py --config "$cfg" --stage "$stage" --device cuda
        # NF4 unpacked on the device (the default since the fifth session), then on the host.
        [ "$stage" = 2 ] && timeout "$t" "$bin" bench --config "$cfg" --stage 2 --nf4 true --json
        [ "$stage" = 2 ] && HARNESS_NF4_DEQUANT=host timeout "$t" "$bin" bench --config "$cfg" --stage 2 --nf4 true --json
    done
done
step synth
"$bin" synth --out data/synth --images 2000 >/dev/null || exit 1
for dtype in ${DTYPES:-f32 auto}; do
    step "gpu-smoke on cuda, dtype $dtype"
    sed -e "s/^name = .*/name = \"gpu-$dtype\"/" -e "s/^dtype = .*/dtype = \"$dtype\"/" \
        -e 's/^seed = 0/seed = 0\nbackend = "cuda"/' benches/gpu-smoke.toml > "$work/gpu-$dtype.toml"
    SECONDS=0
    timeout "${RUN_TIMEOUT:-180}" "$bin" run "$work/gpu-$dtype.toml" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | grep -v '\[' | tail -8
    echo "wall ${SECONDS} s"
    "$bin" show "gpu-$dtype" 2>&1 | grep -E "^status|/loss |qa_acc |CIDEr|Bleu_4|step_time|peak_mem|device_mem|peak_rss"
done
# Data parallel on one GPU: two workers sharing device 0 (the path 8 GPUs take), and the
# all-reduce of Phi-2's LoRA r-128 + projector gradients (~190 M f32) it would make a step.
step "all-reduce of 190 M f32 between 2 workers on GPU 0"
timeout "$t" "$bin" bench --allreduce 190000000 --devices 0,0 --repeats 5 --json
step "gpu-smoke on cuda, devices = [0, 0]"
sed -e 's/^name = .*/name = "gpu-dp"/' -e 's/^seed = 0/seed = 0\nbackend = "cuda"/' \
    benches/gpu-smoke.toml > "$work/gpu-dp.toml"
SECONDS=0
timeout "${RUN_TIMEOUT:-180}" "$bin" run "$work/gpu-dp.toml" --devices 0,0 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | grep -v '\[' | tail -8
echo "wall ${SECONDS} s"
"$bin" show gpu-dp 2>&1 | grep -E "^status|/loss |qa_acc |step_time|allreduce|peak_mem"
tar czf "$OUT/results.tgz" -C "$work" results 2>/dev/null

step done
