#!/usr/bin/env python3
"""Fixtures for the training tests: a tiny Phi whose vocabulary covers the synthetic-world
tokenizer (for end-to-end runs), and one optimizer step of stage 1 computed by PyTorch +
transformers from identical weights and one batch (for the step-parity test).

Run from the repository root with torch, transformers, safetensors, tokenizers:

    cargo run --release -- synth --out /tmp/synth-ref --images 400 --size 32 --seed 11
    python scripts/ref_train.py /tmp/synth-ref      # writes tests/fixtures/train/

Seeded: rerunning rewrites the same files. The Rust tests only read them.

tests/fixtures/train/
  phi/            PhiForCausalLM (vocab = tests/fixtures/data/tokenizer.json), f32, with
                  that tokenizer.json, pretrained briefly on the text of a synthetic world
                  (captions and conversations, no images) so that stage 1 has a language
                  model worth aligning to: a frozen random LM teaches nothing
  step1.safetensors
                  projector.* (initial weights, PyTorch [out, in] layout), features,
                  input_ids, labels, attention_mask, image_start, and the results: loss,
                  grad_norm, after.* (projector weights after one AdamW step)
  step1.json      the hyperparameters of that step
"""

import json
import os
import random
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import PhiConfig, PhiForCausalLM

ROOT = os.path.join("tests", "fixtures", "train")
TOKENIZER = os.path.join("tests", "fixtures", "data", "tokenizer.json")
CLIP_DIM = 32      # tests/fixtures/models/clip_vision: hidden 32, 16 patches
PATCHES = 16


def make_phi():
    with open(TOKENIZER) as f:
        vocab = len(json.load(f)["model"]["vocab"])
    torch.manual_seed(1)
    cfg = PhiConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        partial_rotary_factor=0.5,
        rope_theta=10000.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
    )
    model = PhiForCausalLM(cfg)
    pretrain(model, synth_texts(sys.argv[1]))
    model.eval()
    d = os.path.join(ROOT, "phi")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json"))
    return model


def synth_texts(root):
    """Captions and conversations of a synthetic world as plain text (no images)."""
    with open(os.path.join(root, "annotations", "captions_train2017.json")) as f:
        texts = [a["caption"].strip() + "<|endoftext|>" for a in json.load(f)["annotations"]]
    with open(os.path.join(root, "llava_instruct_150k.json")) as f:
        for conv in json.load(f):
            parts = []
            for t in conv["conversations"]:
                v = t["value"].replace("<image>", "").strip()
                parts.append(f"USER: {v}" if t["from"] == "human" else f" ASSISTANT: {v}<|endoftext|>")
            texts.append("".join(parts))
    return texts


def pretrain(model, texts, steps=600, batch=32):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(TOKENIZER)
    seqs = [tok.encode(t).ids[:96] for t in texts]
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(steps):
        rows = rng.sample(seqs, batch)
        n = max(len(r) for r in rows)
        ids = torch.zeros(batch, n, dtype=torch.long)
        labels = torch.full((batch, n), -100, dtype=torch.long)
        mask = torch.zeros(batch, n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"pretrain step {step}: loss {loss.item():.3f}")


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d, eps=1e-5)
        self.w1 = torch.nn.Linear(d, d)
        self.w2 = torch.nn.Linear(d, d)

    def forward(self, x):
        return x + self.w2(F.gelu(self.w1(self.norm(x))))


class Projector(torch.nn.Module):
    """The residual projector: Linear(d_vision -> d_lm) then `depth` blocks."""

    def __init__(self, dv, d, depth):
        super().__init__()
        self.input = torch.nn.Linear(dv, d)
        self.blocks = torch.nn.ModuleList([Block(d) for _ in range(depth)])

    def forward(self, x):
        x = self.input(x)
        for b in self.blocks:
            x = b(x)
        return x


def step1(lm):
    torch.manual_seed(2)
    d = lm.config.hidden_size
    proj = Projector(CLIP_DIM, d, depth=1)
    # Non-zero w2 so the block's gradients are exercised from the first step.
    torch.nn.init.normal_(proj.blocks[0].w2.weight, std=0.05)
    init = {f"projector.{k}": v.detach().clone() for k, v in proj.state_dict().items()}

    # Two rows in the stage-1 layout: 16 image slots, caption tokens, eos; row 1 padded.
    vocab = lm.config.vocab_size
    captions = [[5, 17, 33, 250, 12, 0], [7, 99, 0]]
    length = PATCHES + max(len(c) for c in captions)
    ids = torch.zeros(2, length, dtype=torch.long)
    labels = torch.full((2, length), -100, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    for r, cap in enumerate(captions):
        n = PATCHES + len(cap)
        ids[r, PATCHES:n] = torch.tensor(cap)
        labels[r, PATCHES:n] = torch.tensor(cap)
        mask[r, :n] = 1
    assert ids.max() < vocab
    features = torch.randn(2, PATCHES, CLIP_DIM)

    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, clip_grad_norm=0.1)
    opt = torch.optim.AdamW(
        proj.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
        weight_decay=hp["weight_decay"],
    )
    for p in lm.parameters():
        p.requires_grad_(False)
    embeds = lm.get_input_embeddings()(ids)
    embeds = torch.cat([proj(features), embeds[:, PATCHES:]], dim=1)
    out = lm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    out.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(proj.parameters(), hp["clip_grad_norm"])
    opt.step()

    tensors = dict(init)
    tensors.update({f"after.{k}": v.detach().clone() for k, v in proj.state_dict().items()})
    tensors.update(
        features=features,
        input_ids=ids,
        labels=labels,
        attention_mask=mask,
        loss=out.loss.detach().reshape(1),
        grad_norm=norm.detach().reshape(1),
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ROOT, "step1.safetensors"))
    with open(os.path.join(ROOT, "step1.json"), "w") as f:
        json.dump(dict(hp, depth=1, image_start=0, patches=PATCHES), f, indent=2)
    print(f"step1: loss {out.loss.item():.6f} grad_norm {norm.item():.6f}")


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    lm = make_phi()
    step1(lm)


if __name__ == "__main__":
    main()
