#!/usr/bin/env python3
"""Recipe search for `harness pretrain lm`, in PyTorch (fast on a GPU): the same tiny Phi,
tokenizer, document mix and evaluation as src/pretrain/lm.rs, with the knobs the Rust
recipe may adopt. Prints one JSON line: the settings and the text-context QA on the world's
val conversations (first question, the image's captions at the image slot, greedy).

    python scripts/lm_recipe.py WORLD TOKENIZER_JSON [--steps N --batch B --d D --layers L
        --lr LR --loss all|answers --scenes text|world --tag NAME]

WORLD: a synthetic world (`harness synth`); TOKENIZER_JSON: the one `harness pretrain lm`
trained (the `tokenizer.json` of a phi-tiny build). `--loss answers` learns only the answer
tokens of conversation documents (caption documents stay whole).
"""
import argparse, json, os, random, time
import torch
from tokenizers import Tokenizer
from transformers import PhiConfig, PhiForCausalLM

p = argparse.ArgumentParser()
p.add_argument("world"); p.add_argument("tokenizer")
p.add_argument("--steps", type=int, default=1000); p.add_argument("--batch", type=int, default=16)
p.add_argument("--d", type=int, default=128); p.add_argument("--layers", type=int, default=4)
p.add_argument("--heads", type=int, default=4); p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--loss", default="all"); p.add_argument("--p-ctx-caption", type=float, default=0.25)
p.add_argument("--p-caption", type=float, default=0.10); p.add_argument("--max-len", type=int, default=224)
p.add_argument("--seed", type=int, default=0); p.add_argument("--tag", default="")
a = p.parse_args()
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(a.seed); rng = random.Random(a.seed)
tok = Tokenizer.from_file(a.tokenizer)
enc = lambda s: tok.encode(s, add_special_tokens=False).ids if s else []


def split(name, instruct):
    ann = json.load(open(os.path.join(a.world, "annotations", f"captions_{name}2017.json")))
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    caps = {}
    for x in ann["annotations"]:
        caps.setdefault(files[x["image_id"]], []).append(x["caption"].strip())
    convs = json.load(open(os.path.join(a.world, instruct)))
    out = []
    for c in convs:
        t = c["conversations"]
        qa = [(t[i]["value"].replace("<image>", "").strip(), t[i + 1]["value"].strip(), t[i].get("type"))
              for i in range(0, len(t) - 1, 2)]
        out.append((qa, caps[c["image"]]))
    return out


train, val = split("train", "llava_instruct_150k.json"), split("val", "llava_instruct_val.json")


def doc():
    """(ids, learn mask) of one document, built piece by piece as lm.rs does."""
    qa, cs = rng.choice(train)
    sh = cs[:]; rng.shuffle(sh); ctx = " ".join(sh)
    r = rng.random()
    if r < a.p_ctx_caption:
        ids = enc(ctx) + enc("\n" + rng.choice(cs)) + [0]
        return ids, [1] * len(ids)
    if r < a.p_ctx_caption + a.p_caption:
        ids = enc(rng.choice(cs)) + [0]
        return ids, [1] * len(ids)
    ids, learn = [], []
    def put(x, l):
        ids.extend(x); learn.extend([l] * len(x))
    ctx_l = 1 if a.loss == "all" else 0
    for i, (q, ans, _) in enumerate(qa):
        if i == 0:
            put(enc("USER: "), ctx_l); put(enc(ctx), ctx_l); put(enc("\n" + q + " ASSISTANT:"), ctx_l)
        else:
            put(enc("USER: " + q + " ASSISTANT:"), ctx_l)
        put(enc(" " + ans) + [0], 1)
    return ids, learn


cfg = PhiConfig(vocab_size=tok.get_vocab_size(), hidden_size=a.d, intermediate_size=4 * a.d,
                num_hidden_layers=a.layers, num_attention_heads=a.heads, max_position_embeddings=256,
                partial_rotary_factor=0.5, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)
m = PhiForCausalLM(cfg).to(dev)
opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.0, eps=1e-8)
warm = max(1, int(0.05 * a.steps))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                          0.5 * (1 + __import__("math").cos(3.14159265 * (s - warm) / max(1, a.steps - warm))))
t0 = time.time(); ntok = 0
for step in range(a.steps):
    rows = [doc() for _ in range(a.batch)]
    rows = [(i[:a.max_len], l[:a.max_len]) for i, l in rows]
    n = max(len(i) for i, _ in rows)
    ids = torch.zeros(a.batch, n, dtype=torch.long); lab = torch.full((a.batch, n), -100)
    mask = torch.zeros(a.batch, n, dtype=torch.long)
    for r, (i, l) in enumerate(rows):
        ids[r, :len(i)] = torch.tensor(i); mask[r, :len(i)] = 1
        lab[r, :len(i)] = torch.tensor([t if k else -100 for t, k in zip(i, l)])
        ntok += len(i)
    loss = m(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=lab.to(dev)).loss
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
m.eval(); acc = {}
for qa, cs in val:
    q, ans, kind = qa[0]
    ids = torch.tensor([enc("USER: ") + enc(" ".join(cs)) + enc("\n" + q + " ASSISTANT:")]).to(dev)
    with torch.no_grad():
        g = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                       pad_token_id=0, eos_token_id=0)
    out = tok.decode(g[0, ids.shape[1]:].tolist()).strip()
    acc.setdefault(kind, []).append(out == ans)
tot = sum(sum(v) for v in acc.values()) / sum(len(v) for v in acc.values())
print(json.dumps({"tag": a.tag, **{k: v for k, v in vars(a).items() if k not in ("world", "tokenizer", "tag")},
                  "text_qa": round(tot, 3), "per_type": {k: round(sum(v) / len(v), 2) for k, v in sorted(acc.items())},
                  "final_loss": round(loss.item(), 3), "tokens": ntok, "seconds": round(time.time() - t0, 1)}), flush=True)
