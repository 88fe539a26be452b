#!/usr/bin/env python3
"""Recipe search for `harness pretrain lm`, in PyTorch (fast on a GPU): the same tiny Phi,
tokenizer, document mix and evaluation as src/pretrain/lm.rs, with the knobs the Rust
recipe may adopt. Prints one JSON line: the settings and the text-context QA on the world's
val conversations (first question, the image's captions at the image slot, greedy).

    python scripts/lm_recipe.py WORLD TOKENIZER_JSON [--steps N --batch B --d D --layers L
        --heads H --lr LR --loss all|answers --allq N --p-slots P --out DIR --tag NAME]

WORLD: a synthetic world (`harness synth`); TOKENIZER_JSON: the one `harness pretrain lm`
trained (the `tokenizer.json` of a phi-tiny build). `--loss answers` learns only the answer
tokens of conversation documents (caption documents stay whole). `--allq N`: conversation
documents ask N questions drawn from every question about the picture (scripts/world.py)
instead of the world's 2-4. `--p-slots P`: a share P of the documents with a context get,
instead of the captions, 9 vectors at the image slot, one per grid cell in reading order,
each the sum of the mean input embeddings of that cell's words (background, position, and
size, colour, kind where a shape sits): an LM taught to read image-like object tokens. QA
is then also scored from these slots. `--out DIR` saves the LM with the tokenizer, a folder
scripts/stage_recipe.py reads like a phi-tiny build.
"""
import argparse, json, math, os, random, shutil, time
import torch
from tokenizers import Tokenizer
from transformers import PhiConfig, PhiForCausalLM
import world as W

p = argparse.ArgumentParser()
p.add_argument("world"); p.add_argument("tokenizer")
p.add_argument("--steps", type=int, default=1000); p.add_argument("--batch", type=int, default=16)
p.add_argument("--d", type=int, default=128); p.add_argument("--layers", type=int, default=4)
p.add_argument("--heads", type=int, default=4); p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--loss", default="all"); p.add_argument("--p-ctx-caption", type=float, default=0.25)
p.add_argument("--p-caption", type=float, default=0.10); p.add_argument("--max-len", type=int, default=224)
p.add_argument("--allq", type=int, default=0); p.add_argument("--p-slots", type=float, default=0.0)
p.add_argument("--out", default=""); p.add_argument("--seed", type=int, default=0); p.add_argument("--tag", default="")
a = p.parse_args()
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(a.seed); rng = random.Random(a.seed)
tok = Tokenizer.from_file(a.tokenizer)
enc = lambda s: tok.encode(s, add_special_tokens=False).ids if s else []
WORDS = W.COLORS + W.KINDS + W.BGS + W.POS + ["large", "small"]
WORD_IDS = [enc(" " + w) for w in WORDS]


def slots(sc):
    """[9, words] multi-hot: which words each grid cell's vector sums."""
    bg, shapes = sc
    x = torch.zeros(9, len(WORDS))
    for cell in range(9):
        x[cell, WORDS.index(bg)] = 1; x[cell, WORDS.index(W.POS[cell])] = 1
    for col, kind, size, cell in shapes:
        for w in (col, kind, size):
            x[cell, WORDS.index(w)] = 1
    return x


def split(name, instruct):
    caps, convs = W.load(a.world, name, instruct)
    return [(qa, caps[img], W.scene(caps[img])) for img, qa in convs]


train, val = split("train", "llava_instruct_150k.json"), split("val", "llava_instruct_val.json")


def doc():
    """One document as pieces: (ids, learned) or ("slots", multi-hot)."""
    qa, cs, sc = rng.choice(train)
    if a.allq:
        qa = W.all_questions(sc, rng)[:a.allq]
    sh = cs[:]; rng.shuffle(sh)
    ctx_l = 1 if a.loss == "all" else 0
    use_slots = rng.random() < a.p_slots
    ctx = lambda learn: ("slots", slots(sc)) if use_slots else (enc(" ".join(sh)), learn)
    r = rng.random()
    if r < a.p_ctx_caption:
        return [ctx(1), (enc("\n" + rng.choice(cs)) + [0], 1)]
    if r < a.p_ctx_caption + a.p_caption:
        return [(enc(rng.choice(cs)) + [0], 1)]
    out = []
    for i, (q, ans, _) in enumerate(qa):
        if i == 0:
            out += [(enc("USER: "), ctx_l), ctx(ctx_l), (enc("\n" + q + " ASSISTANT:"), ctx_l)]
        else:
            out.append((enc("USER: " + q + " ASSISTANT:"), ctx_l))
        out.append((enc(" " + ans) + [0], 1))
    return out


cfg = PhiConfig(vocab_size=tok.get_vocab_size(), hidden_size=a.d, intermediate_size=4 * a.d,
                num_hidden_layers=a.layers, num_attention_heads=a.heads, max_position_embeddings=256,
                partial_rotary_factor=0.5, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)
m = PhiForCausalLM(cfg).to(dev)
E = m.get_input_embeddings()


def embed(docs):
    """Right-padded inputs_embeds, labels (-100 off the learned tokens) and mask."""
    words = torch.stack([E.weight[ids].mean(0) for ids in WORD_IDS])
    rows = []
    for pieces in docs:
        es, labels = [], []
        for x, l in pieces:
            if isinstance(x, str):
                es.append(l.to(dev) @ words); labels += [-100] * 9
            elif x:
                es.append(E(torch.tensor(x, device=dev))); labels += [t if l else -100 for t in x]
        rows.append((torch.cat(es)[:a.max_len], labels[:a.max_len]))
    n = max(len(l) for _, l in rows)
    e = torch.zeros(len(rows), n, a.d, device=dev); lab = torch.full((len(rows), n), -100, device=dev)
    mask = torch.zeros(len(rows), n, dtype=torch.long, device=dev)
    for r, (x, l) in enumerate(rows):
        e[r, :len(l)] = x; lab[r, :len(l)] = torch.tensor(l, device=dev); mask[r, :len(l)] = 1
    return e, lab, mask


opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.0, eps=1e-8)
warm = max(1, int(0.05 * a.steps))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                          0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, a.steps - warm))))
t0 = time.time()
for step in range(a.steps):
    e, lab, mask = embed([doc() for _ in range(a.batch)])
    loss = m(inputs_embeds=e, attention_mask=mask, labels=lab).loss
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
m.eval()


def greedy(e, n=5):
    out, past, x = [], None, e
    with torch.no_grad():
        for _ in range(n):
            o = m(inputs_embeds=x, past_key_values=past, use_cache=True)
            past = o.past_key_values; t = int(o.logits[0, -1].argmax())
            if t == 0:
                break
            out.append(t); x = E(torch.tensor([[t]], device=dev))
    return tok.decode(out).strip()


res = {}
for mode in ["text"] + (["slots"] if a.p_slots > 0 else []):
    acc = {}
    for qa, cs, sc in val:
        q, ans, kind = qa[0]
        ctx = ("slots", slots(sc)) if mode == "slots" else (enc(" ".join(cs)), 1)
        with torch.no_grad():
            e, _, _ = embed([[(enc("USER: "), 1), ctx, (enc("\n" + q + " ASSISTANT:"), 1)]])
        acc.setdefault(kind, []).append(greedy(e) == ans)
    tot = sum(sum(v) for v in acc.values()) / sum(len(v) for v in acc.values())
    res[f"{mode}_qa"] = round(tot, 3)
    res[f"{mode}_per_type"] = {k: round(sum(v) / len(v), 2) for k, v in sorted(acc.items())}
if a.out:
    m.save_pretrained(a.out, safe_serialization=True)
    shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
print(json.dumps({"tag": a.tag, **{k: v for k, v in vars(a).items() if k not in ("world", "tokenizer", "tag")},
                  **res, "final_loss": round(loss.item(), 3), "seconds": round(time.time() - t0, 1)}), flush=True)
