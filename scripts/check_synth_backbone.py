#!/usr/bin/env python3
"""Checks folders written by `harness synth backbone` against transformers itself.

For reference only (fixtures and checks); the harness never needs Python at run time.

    pip install transformers safetensors torch tiktoken
    harness synth backbone --like phi-2 --out /tmp/phi-2
    python scripts/check_synth_backbone.py /tmp/phi-2 [/tmp/clip-b16 ...] [--max-shard-size 5GB]

For each folder (Phi or CLIP, told apart by config.json):
- config.json: every argument of transformers' config class(es) is present, and each value
  equals what the class holds after loading (so no key is missing or misread);
- tensors: names, shapes and dtypes equal those of a model transformers builds from the
  same config (on the meta device, no memory), and `from_pretrained` reports no missing,
  unexpected or mismatched keys;
- Phi: the shard split and index equal huggingface_hub's split of that model's state dict
  (what save_pretrained does), the tokenizer loads with AutoTokenizer (fast) and with the
  slow CodeGenTokenizer, and encodes like tiktoken's GPT-2 (from the repo's
  assets/tokenizers/gpt2.tiktoken) plus Phi-2's whitespace tokens;
- CLIP: CLIPModel and CLIPVisionModel load, CLIPImageProcessor gives the right pixel
  shape, and one forward pass is finite.
Exits 1 when anything differs.
"""
import argparse
import inspect
import json
import math
import os
import sys

import torch
import transformers
from safetensors import safe_open

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAILURES = []

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def weight_files(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            idx = json.load(f)
        return sorted(set(idx["weight_map"].values())), idx
    return ["model.safetensors"], None


def our_tensors(d):
    files, idx = weight_files(d)
    out = {}
    for name in files:
        with safe_open(os.path.join(d, name), framework="pt") as f:
            for k in f.keys():
                s = f.get_slice(k)
                out[k] = (list(s.get_shape()), DTYPES[s.get_dtype()], name)
    return out, idx


def init_args(cls):
    """Named arguments of a config class's __init__ (what its config.json may set)."""
    skip = {"self", "kwargs", "args"}
    return [p for p in inspect.signature(cls.__init__).parameters if p not in skip]


# Arguments every config takes (dtype, return_dict, id2label, ...): not model-specific, and
# absent from the hub's files too.
GENERIC = set(init_args(transformers.PretrainedConfig)) | {"transformers_version", "architectures"}


def check_config_keys(cls, ours, loaded, label):
    args = [a for a in init_args(cls) if a not in GENERIC]
    missing = [a for a in args if a not in ours]
    print(f"  {label}: {cls.__name__} has {len(args)} model arguments; not in our file: {missing or 'none'}")
    # Every value we wrote must be what transformers holds after loading it.
    loaded_d = loaded.to_dict()
    for k, v in ours.items():
        if k in ("transformers_version", "_name_or_path", "architectures", "torch_dtype",
                 "text_config", "vision_config", "rope_scaling", "rope_theta",
                 "partial_rotary_factor") or k not in loaded_d:
            continue
        check(loaded_d[k] == v, f"{label}.{k} = {v!r} loads as {loaded_d[k]!r}")
    return missing


def compare_with_reference(ours, ref_model, dtype):
    ref = {k: (list(v.shape), dtype) for k, v in ref_model.state_dict().items()}
    extra = sorted(set(ours) - set(ref))
    lacking = sorted(set(ref) - set(ours))
    check(not extra and not lacking,
          f"tensor names equal transformers' ({len(ref)}; extra {extra[:5]}, missing {lacking[:5]})")
    bad = [k for k in ref if k in ours and (ours[k][0], ours[k][1]) != ref[k]]
    check(not bad, f"shapes and dtypes equal transformers' (differ: {bad[:5]})")


def loading_info_ok(info, label, allow_unexpected_prefix=None):
    unexpected = list(info.get("unexpected_keys", []))
    if allow_unexpected_prefix:
        unexpected = [k for k in unexpected if not k.startswith(allow_unexpected_prefix)]
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    check(not missing and not unexpected and not mismatched,
          f"{label}: missing {missing[:5]}, unexpected {unexpected[:5]}, mismatched {mismatched[:5]}")


def check_phi(d, cfg_json, max_shard_size):
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers import AutoTokenizer, CodeGenTokenizer, PhiConfig, PhiForCausalLM

    cfg = PhiConfig.from_pretrained(d)
    check_config_keys(PhiConfig, cfg_json, cfg, "config")
    check(cfg.partial_rotary_factor == 0.4 if hasattr(cfg, "partial_rotary_factor")
          else cfg.rope_parameters["partial_rotary_factor"] == 0.4, "partial_rotary_factor 0.4")
    ours, idx = our_tensors(d)
    with torch.device("meta"):
        ref = PhiForCausalLM._from_config(cfg, dtype=torch.float16)
    compare_with_reference(ours, ref, torch.float16)

    # The shard split save_pretrained would make of this model.
    split = split_torch_state_dict_into_shards(ref.state_dict(), max_shard_size=max_shard_size)
    ours_map = {k: v[2] for k, v in ours.items()}
    if split.is_sharded:
        check(idx is not None and idx["weight_map"] == split.tensor_to_filename,
              f"weight_map equals huggingface_hub's split ({len(split.filename_to_tensors)} shards)")
        total = sum(math.prod(s) * 2 for s, _, _ in ours.values())
        check(idx["metadata"] == {"total_size": total}, f"index metadata {idx['metadata']}")
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            text = f.read()
        check(text == json.dumps(idx, indent=2, sort_keys=True) + "\n",
              "index text is json.dumps(indent=2, sort_keys=True) as save_pretrained writes it")
    else:
        check(set(ours_map.values()) == {"model.safetensors"}, "one model.safetensors, as huggingface_hub splits it")

    with open(os.path.join(d, "config.json")) as f:
        text = f.read()
    check(text == json.dumps(cfg_json, indent=2, sort_keys=True) + "\n",
          "config.json text is json.dumps(indent=2, sort_keys=True)")

    small = sum(math.prod(s) for s, _, _ in ours.values()) < 1.5e9
    model, info = PhiForCausalLM.from_pretrained(d, dtype="auto", output_loading_info=True)
    loading_info_ok(info, "PhiForCausalLM.from_pretrained")
    check(model.dtype == torch.float16, f"loaded dtype {model.dtype}")
    w = model.model.layers[0].mlp.fc1.weight.float()
    print(f"  fc1 weight mean {w.mean().item():.2e} std {w.std().item():.5f}; "
          f"ln weight {model.model.layers[0].input_layernorm.weight.float().mean().item()}")
    if small:
        with torch.no_grad():
            ids = torch.tensor([[50256, 15496, 995]]) % cfg.vocab_size  # --shrink-vocab
            logits = model.float()(ids).logits
        check(bool(torch.isfinite(logits).all()), f"forward pass finite, logits {tuple(logits.shape)}")
    del model

    fast = AutoTokenizer.from_pretrained(d)
    slow = CodeGenTokenizer.from_pretrained(d)
    check(len(fast) == 50295 and len(slow) == 50295, f"tokenizer size {len(fast)} / {len(slow)}")
    check(fast.eos_token_id == 50256 and fast.bos_token_id == 50256, "eos = bos = 50256")
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(os.path.join(REPO, "assets/tokenizers/gpt2.tiktoken"))
    gpt2 = tiktoken.Encoding(
        name="gpt2",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    texts = [
        "Hello world", "A photo of a red circle on the left.", "Instruct: What is 2+2?\nOutput: 4",
        "naïve café — ünïcode ✓ 日本語", "It's 3.14159, isn't it?", "<|endoftext|>",
        "def f(x):\n return x*2\n", "USER: <image>\nWhat colour is it? ASSISTANT: blue<|endoftext|>",
    ]
    for t in texts:
        want = gpt2.encode(t, allowed_special="all")
        got_fast = fast.encode(t)
        got_slow = slow.encode(t)
        check(got_fast == want and got_slow == want, f"{t!r}: fast {got_fast[:8]} slow {got_slow[:8]} tiktoken {want[:8]}")
    check(fast.encode("    return") == [50284, 7783], f"4 spaces + return -> {fast.encode('    return')}")
    check(fast.encode("\t\tx") == [50294, 87], f"2 tabs + x -> {fast.encode(chr(9) * 2 + 'x')}")


def check_clip(d, cfg_json):
    import numpy as np
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig,
                              CLIPVisionConfig, CLIPVisionModel)

    cfg = CLIPConfig.from_pretrained(d)
    check_config_keys(CLIPConfig, cfg_json, cfg, "config")
    check_config_keys(CLIPTextConfig, cfg_json["text_config"], cfg.text_config, "text_config")
    check_config_keys(CLIPVisionConfig, cfg_json["vision_config"], cfg.vision_config, "vision_config")
    ours, _ = our_tensors(d)
    with torch.device("meta"):
        ref = CLIPModel._from_config(cfg, dtype=torch.float32)
    compare_with_reference(ours, ref, torch.float32)
    model, info = CLIPModel.from_pretrained(d, output_loading_info=True)
    loading_info_ok(info, "CLIPModel.from_pretrained")
    vis, vinfo = CLIPVisionModel.from_pretrained(d, output_loading_info=True)
    # A vision-only model ignores the text tower and the projections of a CLIPModel file.
    loading_info_ok(vinfo, "CLIPVisionModel.from_pretrained (text tower ignored)",
                    allow_unexpected_prefix=("text_model.", "visual_projection", "text_projection", "logit_scale"))
    proc = CLIPImageProcessor.from_pretrained(d)
    s = cfg.vision_config.image_size
    print(f"  processor: size {proc.size} crop {proc.crop_size} resample {proc.resample} "
          f"mean {proc.image_mean} std {proc.image_std}")
    check(proc.size == {"shortest_edge": s} and proc.crop_size == {"height": s, "width": s}
          and int(proc.resample) == 3, "processor size / crop / bicubic")
    img = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype("uint8")
    px = proc(images=img, return_tensors="pt")["pixel_values"]
    check(tuple(px.shape) == (1, 3, s, s), f"pixel_values {tuple(px.shape)}")
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=torch.tensor([[49406, 320, 1125, 49407]]))
        feats = vis(pixel_values=px, output_hidden_states=True).hidden_states[-2]
    check(bool(torch.isfinite(out.logits_per_image).all()), f"CLIPModel forward finite, logit {out.logits_per_image.item():.3f}")
    n = (s // cfg.vision_config.patch_size) ** 2 + 1
    check(tuple(feats.shape) == (1, n, cfg.vision_config.hidden_size), f"hidden_states[-2] {tuple(feats.shape)}")
    check(abs(model.logit_scale.item() - math.log(100)) < 1e-6, f"logit_scale {model.logit_scale.item()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--max-shard-size", default="5GB", help="the size the Phi folders were written with")
    a = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for d in a.dirs:
        with open(os.path.join(d, "config.json")) as f:
            cfg_json = json.load(f)
        print(f"{d}: {cfg_json.get('model_type')} ({cfg_json.get('_name_or_path')})")
        if cfg_json.get("model_type") == "phi":
            check_phi(d, cfg_json, a.max_shard_size)
        elif cfg_json.get("model_type") == "clip":
            check_clip(d, cfg_json)
        else:
            check(False, f"{d}: unknown model_type {cfg_json.get('model_type')}")
    print(f"{len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
