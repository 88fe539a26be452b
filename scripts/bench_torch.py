#!/usr/bin/env python3
"""The PyTorch side of the step-time benchmark: the same sizes as `harness bench` (flags or
a TOML file with the same keys), HF transformers' PhiForCausalLM frozen, the residual
projector trained with AdamW and global-norm clipping, one fixed batch. Prints JSON.

    python scripts/bench_torch.py [--config bench.toml] [--stage 1] [--threads N] [--device cuda]
"""

import argparse
import json
import resource
import statistics
import time
import tomllib

import torch
from transformers import PhiConfig, PhiForCausalLM

from ref_train import Projector  # the same residual projector as the fixtures

DEFAULTS = dict(d_model=256, layers=4, heads=8, partial_rotary=0.4, mlp=1024, vocab=4096,
                image_tokens=64, image_dim=256, text_len=64, batch=8, projector_depth=2,
                lora_rank=16, steps=10, warmup=2, activation_checkpointing=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    c = dict(DEFAULTS)
    if a.config:
        with open(a.config, "rb") as f:
            c.update(tomllib.load(f))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    lm = PhiForCausalLM(PhiConfig(
        vocab_size=c["vocab"], hidden_size=c["d_model"], intermediate_size=c["mlp"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
        partial_rotary_factor=c["partial_rotary"], resid_pdrop=0.0, embd_pdrop=0.0,
        attention_dropout=0.0, attn_implementation="eager",
    ))
    for p in lm.parameters():
        p.requires_grad_(False)
    proj = Projector(c["image_dim"], c["d_model"], c["projector_depth"])
    dev = torch.device(a.device)
    lm, proj = lm.to(dev), proj.to(dev)
    if a.stage == 2:
        # Plain LoRA with peft on a dense base (the harness's `nf4 = false`); bitsandbytes'
        # 4-bit layers are CUDA-first, so the NF4 base is compared on memory, not speed.
        from peft import LoraConfig, get_peft_model
        lm = get_peft_model(lm, LoraConfig(
            r=c["lora_rank"], lora_alpha=2 * c["lora_rank"], lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]))
        if c["activation_checkpointing"]:
            # Per decoder layer, as `stage.activation_checkpointing` does in the harness.
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            lm.train()
        trainable = list(proj.parameters()) + [p for p in lm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([
            {"params": list(proj.parameters()), "lr": 2e-5},
            {"params": [p for p in lm.parameters() if p.requires_grad], "lr": 2e-4},
        ])
    else:
        trainable = list(proj.parameters())
        opt = torch.optim.AdamW(proj.parameters(), lr=1e-4, weight_decay=0.0)
    b, n_img, n_txt = c["batch"], c["image_tokens"], c["text_len"]
    ids = torch.tensor([[(r * 7919 + t * 104729) % c["vocab"] for t in range(n_img, n_img + n_txt)] for r in range(b)])
    labels = torch.cat([torch.full((b, n_img), -100), ids], dim=1)
    feats = torch.randn(b, n_img, c["image_dim"])
    ids, labels, feats = ids.to(dev), labels.to(dev), feats.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(c["warmup"] + c["steps"]):
        t = time.perf_counter()
        emb = torch.cat([proj(feats), lm.get_input_embeddings()(ids)], dim=1)
        loss = lm(inputs_embeds=emb, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sync()  # the step ends when its results exist
        if i >= c["warmup"]:
            times.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(), "config": c,
        "timing": {"stage": f"stage{a.stage}", "median_ms": med, "mean_ms": statistics.mean(times),
                   "tokens_per_s": b * (n_img + n_txt) / (med / 1e3),
                   "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   **({"peak_device_bytes": torch.cuda.max_memory_reserved()} if dev.type == "cuda" else {})},
    }))


if __name__ == "__main__":
    main()
