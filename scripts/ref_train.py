#!/usr/bin/env python3
"""Fixtures for the training tests: a tiny Phi whose vocabulary covers the synthetic-world
tokenizer (for end-to-end runs), and one optimizer step of stage 1 computed by PyTorch +
transformers from identical weights and one batch (for the step-parity test).

Run from the repository root with torch, transformers, safetensors, tokenizers (and, for
stage 2, peft and bitsandbytes):

    cargo run --release -- synth --out /tmp/synth-ref --images 400 --size 32 --seed 11
    python scripts/ref_train.py /tmp/synth-ref      # writes tests/fixtures/train/
    python scripts/ref_train.py                     # keeps phi/ and step1.*, rewrites step2_*

With a synthetic world's path the tiny Phi is pretrained anew and every fixture is written;
without one, the committed phi/ is loaded (`from_pretrained`) and only the stage-2 fixtures
are rewritten, so phi/ and step1.* stay byte-identical. Seeded: rerunning rewrites the same
files. The Rust tests only read them.

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
  step2_lora.safetensors, step2_nf4.safetensors
                  one optimizer step of stage 2 (transformers + peft) on that Phi: projector.*
                  and lora.{module path}.{A,B} (peft's lora_A.weight [r, in] and lora_B.weight
                  [out, r], seeded random so that B != 0 and the step moves both), the batch
                  (features, input_ids, labels, attention_mask, image_start per row), loss,
                  grad_norm (over projector and adapters together, before clipping), and
                  after.* (projector and adapters after one AdamW step, two parameter groups).
                  `lora`: plain LoRA on the f32 base. `nf4`: Phi's six linears per layer are
                  replaced by bitsandbytes' NF4 round trip (quantize_4bit blocksize 64, no
                  double quantization, then dequantize_4bit), saved as deq.{module path}.
  step2_lora.json, step2_nf4.json
                  the hyperparameters of those steps
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


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


def phi_linears(lm):
    """(module path, module) of the LoRA targets of every layer, in the harness' load order."""
    for i, layer in enumerate(lm.model.layers):
        a, m = layer.self_attn, layer.mlp
        for name, mod in [("self_attn.q_proj", a.q_proj), ("self_attn.k_proj", a.k_proj),
                          ("self_attn.v_proj", a.v_proj), ("self_attn.dense", a.dense),
                          ("mlp.fc1", m.fc1), ("mlp.fc2", m.fc2)]:
            yield f"model.layers.{i}.{name}", mod


def nf4_round_trip(w, blocksize):
    """bitsandbytes' NF4 quantization of `w` (blocks over its row-major elements, no double
    quantization) and back: the weights a QLoRA base computes with."""
    import bitsandbytes.functional as BF

    flat = w.detach().float().contiguous().reshape(-1)
    q, st = BF.quantize_4bit(flat, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    deq = BF.dequantize_4bit(q, st).reshape(-1)
    # Cross-check the round trip against code * absmax (bitsandbytes' CPU dequantizer has
    # been wrong for rows that are not whole blocks; flat input avoids that).
    codes = q.reshape(-1)
    nib = torch.stack([codes >> 4, codes & 15], 1).reshape(-1)[: flat.numel()].long()
    expect = st.code[nib].float() * st.absmax.float().repeat_interleave(blocksize)[: flat.numel()]
    assert torch.equal(deq.view(torch.int32), expect.view(torch.int32)), "dequantize_4bit != code*absmax"
    return deq.reshape(w.shape)


def step2(case):
    """One stage-2 step: projector and LoRA adapters learn (two AdamW groups, one global
    clip); the base is the committed tiny Phi (`lora`) or its NF4 round trip (`nf4`)."""
    from peft import LoraConfig, get_peft_model

    assert case in ("lora", "nf4")
    lm = PhiForCausalLM.from_pretrained(os.path.join(ROOT, "phi"), dtype=torch.float32)
    lm.eval()  # every dropout is 0 anyway (config pdrops, lora_dropout)
    # eps 1e-3 is about the median clipped gradient: Adam's first step is otherwise close to
    # lr * sign(g) whatever the gradients' size (clipping included), and the comparison of
    # updated weights would check little more than signs.
    hp = dict(
        rank=4, alpha=6.0, dropout=0.0, targets=LORA_TARGETS, lr=2e-3, projector_lr=5e-4,
        beta1=0.9, beta2=0.999, eps=1e-3, weight_decay=0.05, clip_grad_norm=0.5,
        quant=case, blocksize=64, double_quant=False, depth=1, patches=PATCHES,
    )
    tensors = {}
    if case == "nf4":
        with torch.no_grad():
            for path, lin in phi_linears(lm):
                deq = nf4_round_trip(lin.weight, hp["blocksize"])
                assert not torch.equal(deq, lin.weight)
                lin.weight.copy_(deq)
                tensors[f"deq.{path}"] = deq.clone()

    torch.manual_seed(4)
    d = lm.config.hidden_size
    proj = Projector(CLIP_DIM, d, depth=hp["depth"])
    torch.nn.init.normal_(proj.blocks[0].w2.weight, std=0.05)
    tensors.update({f"projector.{k}": v.detach().clone() for k, v in proj.state_dict().items()})

    cfg = LoraConfig(r=hp["rank"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                     target_modules=LORA_TARGETS, bias="none")
    model = get_peft_model(lm, cfg)
    # peft starts B at zero (A would get no gradient in the first step): seeded random A and B
    # instead, saved, so both learn and the adapters change the forward pass.
    lora_params = []
    with torch.no_grad():
        for path, lin in phi_linears(lm):
            a, b = lin.lora_A["default"].weight, lin.lora_B["default"].weight
            a.copy_(torch.randn_like(a) / a.shape[1] ** 0.5)
            b.copy_(torch.randn_like(b) * 0.02)
            tensors[f"lora.{path}.A"] = a.detach().clone()
            tensors[f"lora.{path}.B"] = b.detach().clone()
            lora_params.append((path, a, b))
    trainable = {id(p) for _, a, b in lora_params for p in (a, b)}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}, "peft trains more than A, B"

    # Two right-padded rows in the stage-2 layout: prompt, image slot, question, answer (the
    # only labels, eos included). The images start after prompts of different lengths.
    rows = [
        ([11, 23, 5], [40, 41, 42, 17], [50, 51], [60, 61, 62, 0]),
        ([11, 23], [44, 99], [50, 51], [70, 0]),
    ]
    length = max(len(p) + PATCHES + len(q) + len(s) + len(a) for p, q, s, a in rows)
    ids = torch.zeros(2, length, dtype=torch.long)
    labels = torch.full((2, length), -100, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    starts = torch.zeros(2, dtype=torch.long)
    for r, (p, q, s, a) in enumerate(rows):
        starts[r] = len(p)
        seq = p + [0] * PATCHES + q + s + a
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, len(seq) - len(a) : len(seq)] = torch.tensor(a)
        mask[r, : len(seq)] = 1
    assert ids.max() < lm.config.vocab_size
    features = torch.randn(2, PATCHES, CLIP_DIM)

    opt = torch.optim.AdamW(
        [{"params": list(proj.parameters()), "lr": hp["projector_lr"]},
         {"params": [p for _, a, b in lora_params for p in (a, b)], "lr": hp["lr"]}],
        betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], weight_decay=hp["weight_decay"],
    )
    embeds = model.get_input_embeddings()(ids)
    images = proj(features)
    embeds = torch.stack([
        torch.cat([embeds[r, :s], images[r], embeds[r, s + PATCHES :]], 0)
        for r, s in enumerate(starts.tolist())
    ])
    out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    out.loss.backward()
    params = list(proj.parameters()) + [p for _, a, b in lora_params for p in (a, b)]
    norm = torch.nn.utils.clip_grad_norm_(params, hp["clip_grad_norm"])
    assert norm > hp["clip_grad_norm"], f"grad norm {norm} does not clip"
    opt.step()

    tensors.update({f"after.projector.{k}": v.detach().clone() for k, v in proj.state_dict().items()})
    for path, a, b in lora_params:
        tensors[f"after.lora.{path}.A"] = a.detach().clone()
        tensors[f"after.lora.{path}.B"] = b.detach().clone()
    tensors.update(
        features=features, input_ids=ids, labels=labels, attention_mask=mask, image_start=starts,
        loss=out.loss.detach().reshape(1), grad_norm=norm.detach().reshape(1),
    )
    name = f"step2_{case}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ROOT, f"{name}.safetensors"))
    with open(os.path.join(ROOT, f"{name}.json"), "w") as f:
        json.dump(hp, f, indent=2)
    print(f"{name}: loss {out.loss.item():.6f} grad_norm {norm.item():.6f}")


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    if len(sys.argv) > 1:
        step1(make_phi())
    for case in ("lora", "nf4"):
        step2(case)


if __name__ == "__main__":
    main()
