#!/usr/bin/env python3
"""The PyTorch experiment behind `harness pretrain lm`'s corpus: does a tiny Phi pretrained
to read a scene description in its context (the image's captions where the image slot goes)
answer questions from it? Usage (repository root; torch, transformers, tokenizers):

    python scripts/pretrain_lm_ref.py data/synth OUT_DIR D_MODEL LAYERS STEPS ctx|plain

`ctx`: the recipe `harness pretrain lm` implements; `plain`: captions and conversations
without context, as scripts/ref_train.py pretrains the test fixture. Prints the held-out
text-context QA accuracy. On an H200 (2026-11-27, 3000 steps of 32): d 128 x 4 layers 0.71,
d 64 x 2 layers 0.645, plain d 64 x 2 (1500 steps) 0.33 -- the plain LM cannot read context,
which is why the first demo's stage 2 ignored the image.
"""
import json, os, random, sys, shutil, time
import torch
from transformers import PhiConfig, PhiForCausalLM
from tokenizers import Tokenizer
root, out, d, L, steps, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
dev = "cuda" if torch.cuda.is_available() else "cpu"
TOK = "tests/fixtures/data/tokenizer.json"
tok = Tokenizer.from_file(TOK)
torch.manual_seed(1)
ann = json.load(open(os.path.join(root, "annotations", "captions_train2017.json")))
imgs = {im["id"]: im["file_name"] for im in ann["images"]}
byfile = {}
for a in ann["annotations"]:
    byfile.setdefault(imgs[a["image_id"]], []).append(a["caption"].strip())
convs = json.load(open(os.path.join(root, "llava_instruct_150k.json")))
train, held = convs[:-200], convs[-200:]
rng = random.Random(0)
E = "<|endoftext|>"
def conv_text(c, ctx):
    parts = []
    for t in c["conversations"]:
        v = t["value"]
        if t["from"] == "human":
            parts.append("USER: " + v.replace("<image>", ctx).strip())
        else:
            parts.append(f" ASSISTANT: {v}{E}")
    return "".join(parts)
def doc():
    c = rng.choice(train); cs = byfile[c["image"]]
    if mode == "plain":  # what scripts/ref_train.py does: no context
        return rng.choice(cs) + E if rng.random() < 0.5 else conv_text(c, "")
    ctx = " ".join(rng.sample(cs, len(cs)))
    r = rng.random()
    if r < 0.25:
        return f"{ctx}\n{rng.choice(cs)}{E}"
    if r < 0.35:
        return rng.choice(cs) + E
    return conv_text(c, ctx)
cfg = PhiConfig(vocab_size=len(json.load(open(TOK))["model"]["vocab"]), hidden_size=d, intermediate_size=4*d,
    num_hidden_layers=L, num_attention_heads=4, max_position_embeddings=256, partial_rotary_factor=0.5,
    bos_token_id=0, eos_token_id=0, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
m = PhiForCausalLM(cfg).to(dev)
opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
t0 = time.time(); B = 32
for step in range(steps):
    rows = [tok.encode(doc()).ids[:220] for _ in range(B)]
    n = max(map(len, rows))
    ids = torch.zeros(B, n, dtype=torch.long); lab = torch.full((B, n), -100); mask = torch.zeros(B, n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r); lab[i, :len(r)] = torch.tensor(r); mask[i, :len(r)] = 1
    loss = m(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=lab.to(dev)).loss
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if step % 500 == 0 or step == steps - 1: print(out, step, round(loss.item(), 3), round(time.time() - t0), flush=True)
m.eval(); acc = {}
for c in held:
    cs = byfile[c["image"]]; ctx = " ".join(cs) if mode != "plain" else ""
    h = c["conversations"][0]; a = c["conversations"][1]["value"]
    ids = torch.tensor([tok.encode("USER: " + h["value"].replace("<image>", ctx).strip() + " ASSISTANT:").ids]).to(dev)
    with torch.no_grad():
        g = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=0)
    o = tok.decode(g[0, ids.shape[1]:].tolist()).strip()
    acc.setdefault(h["type"], []).append(o == a)
tot = sum(sum(v) for v in acc.values()) / sum(len(v) for v in acc.values())
print(out, mode, d, L, steps, "text-context QA", round(tot, 3), {k: round(sum(v)/len(v), 2) for k, v in acc.items()}, flush=True)
m = m.cpu(); shutil.rmtree(out, ignore_errors=True); m.save_pretrained(out, safe_serialization=True); shutil.copy(TOK, os.path.join(out, "tokenizer.json"))
