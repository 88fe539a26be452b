#!/usr/bin/env python3
"""Reference check of `harness export`: load the exported folder with transformers + peft
and record what PyTorch computes, for the Rust tests to compare with (tests/it/infer_cli.rs).

    python scripts/ref_export.py --export DIR --model LM_DIR --ids 5,17,42 --out ref.safetensors

Writes float32 safetensors:
  ids            [T]                the token ids (as float)
  logits         [T, vocab]         PeftModel.from_pretrained(base, DIR) on the ids
  base_logits    [T, vocab]         the same model with the adapter disabled
  features       [1, P, d_vision]   fixed input features (a deterministic pattern)
  projector_out  [1, P, d_lm]       projector.safetensors applied to them
(the adapter entries only when DIR has adapter_config.json).

The projector is rebuilt here from projector_config.json in plain torch:
residual: x = input(f); x = x + w2(gelu(w1(LN(x)))) per block; mlp2x_gelu: output(gelu(input(f))).
GELU is the exact (erf) form, as burn's.

`--model` defaults to the adapter's base_model_name_or_path. Runs on the CPU in float32.
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import load_file, save_file


def projector_forward(export_dir, feats):
    cfg = json.load(open(os.path.join(export_dir, "projector_config.json")))
    w = load_file(os.path.join(export_dir, "projector.safetensors"))
    lin = lambda x, name: torch.nn.functional.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))
    gelu = lambda x: torch.nn.functional.gelu(x, approximate="none")
    x = lin(feats, "input")
    if cfg["kind"] == "mlp2x_gelu":
        return lin(gelu(x), "output")
    for i in range(cfg["depth"]):
        k = f"blocks.{i}"
        h = torch.nn.functional.layer_norm(
            x, (cfg["d_lm"],), w[f"{k}.norm.weight"], w[f"{k}.norm.bias"], cfg["layer_norm_eps"]
        )
        x = x + lin(gelu(lin(h, f"{k}.w1")), f"{k}.w2")
    return x


def fixed_features(patches, d):
    # Deterministic, platform-independent pattern (no RNG): values in [-1.5, 1.5].
    n = patches * d
    v = [1.5 * math.sin(0.37 * i + 0.11 * (i % 7)) for i in range(n)]
    return torch.tensor(v, dtype=torch.float32).reshape(1, patches, d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="folder written by `harness export`")
    ap.add_argument("--model", help="base LM checkpoint folder (default: adapter_config's base)")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="output safetensors file")
    a = ap.parse_args()
    torch.manual_seed(0)
    ids = [int(t) for t in a.ids.split(",")]
    out = {"ids": torch.tensor(ids, dtype=torch.float32)}

    cfg_path = os.path.join(a.export, "adapter_config.json")
    if os.path.exists(cfg_path):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = a.model or json.load(open(cfg_path))["base_model_name_or_path"]
        lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(lm, a.export)
        model.eval()
        x = torch.tensor([ids])
        with torch.no_grad():
            out["logits"] = model(input_ids=x).logits[0].float().contiguous()
            with model.disable_adapter():
                out["base_logits"] = model(input_ids=x).logits[0].float().contiguous()
        d = (out["logits"] - out["base_logits"]).abs().max().item()
        print(f"peft: {sum(1 for _ in model.named_modules() if _[0].endswith('lora_A'))} adapted "
              f"modules, max |adapted - base| logit {d:.4g}")

    pcfg = json.load(open(os.path.join(a.export, "projector_config.json")))
    feats = fixed_features(pcfg["image_tokens"], pcfg["d_vision"])
    with torch.no_grad():
        out["features"] = feats
        out["projector_out"] = projector_forward(a.export, feats).contiguous()
    save_file(out, a.out)
    for k, v in out.items():
        print(k, list(v.shape))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
