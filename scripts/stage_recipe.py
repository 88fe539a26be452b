#!/usr/bin/env python3
"""Recipe search for the demo's stages, in PyTorch (a few minutes per run on one CPU core):
stage 1 (projector on `[image] caption<eos>`, LM frozen), stage 2 (projector + LoRA on all six
Phi linears, answers only) and QA exact match on the val conversations, laid out as
src/data/sequence.rs and src/train do. Same residual projector (blocks start as identity),
AdamW, warmup + cosine to 0, clipping at 1.0; no NF4 (the base stays f32). Prints one JSON
line: the settings, losses, QA overall and per type.

    python scripts/stage_recipe.py WORLD LM_DIR FEATURES [--s1-steps 300 --s2-epochs 3
        --s2-lr 5e-3 --s2-plr 1e-3 --rank 4 --depth 2 --full --train-qa N --show-misses --allq N]

WORLD: a synthetic world (`harness synth`). LM_DIR: a `builtin:phi-tiny` build (its folder in
cache/backbones/). FEATURES: a CLIP folder (`builtin:clip-*` build; features from
transformers' CLIPVisionModel, layer -2, CLS dropped, cached in --cache), `random:CLIP_DIR`
(that config, random weights), or `oracle`: 9 tokens, one per grid cell, holding the scene's
exact attributes (occupied, colour, kind, size, background, cell) parsed from the captions,
an upper bound for what any tower could give the stages. `--allq N`: each stage-2 conversation
asks N questions drawn from every question about its picture (scripts/world.py), not the
world's 2-4.
"""
import argparse, json, math, os, random, time
import torch, torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import PhiForCausalLM
import world as W

p = argparse.ArgumentParser()
p.add_argument("world"); p.add_argument("lm"); p.add_argument("feats")
p.add_argument("--s1-steps", type=int, default=300); p.add_argument("--s1-lr", type=float, default=3e-3)
p.add_argument("--s2-epochs", type=float, default=3); p.add_argument("--s2-lr", type=float, default=5e-3)
p.add_argument("--s2-plr", type=float, default=1e-3); p.add_argument("--rank", type=int, default=4)
p.add_argument("--depth", type=int, default=2); p.add_argument("--batch", type=int, default=16)
p.add_argument("--qa", type=int, default=200); p.add_argument("--seed", type=int, default=0)
p.add_argument("--train-qa", type=int, default=0, help="also score this many train questions")
p.add_argument("--tag", default="")
p.add_argument("--full", action="store_true", help="stage 2 trains the whole LM")
p.add_argument("--cache", default="/tmp", help="where tower features are cached")
p.add_argument("--show-misses", action="store_true", help="print every wrong val answer")
p.add_argument("--image-after", action="store_true",
               help="put the image after the first question (LLaVA puts it before)")
p.add_argument("--allq", type=int, default=0,
               help="stage-2 conversations ask N questions drawn from every question about the picture")
a = p.parse_args()
torch.manual_seed(a.seed); rng = random.Random(a.seed)
tok = Tokenizer.from_file(os.path.join(a.lm, "tokenizer.json"))
enc = lambda s: tok.encode(s, add_special_tokens=False).ids if s else []


tr_caps, tr_convs = W.load(a.world, "train", "llava_instruct_150k.json")
va_caps, va_convs = W.load(a.world, "val", "llava_instruct_val.json")
if a.allq:
    tr_convs = [(img, W.all_questions(W.scene(tr_caps[img]), rng)[:a.allq]) for img, _ in tr_convs]
dirs = {**{k: "train2017" for k in tr_caps}, **{k: "val2017" for k in va_caps}}


def oracle(caps):
    bg, shapes = W.scene(caps)
    # occupied, colour (6), kind (4), size (+-1), background (3), cell (9).
    x = torch.zeros(9, 25)
    x[:, 16:] = torch.eye(9)
    for col, kind, size, cell in shapes:
        x[cell, 0] = 1; x[cell, 1 + W.COLORS.index(col)] = 1; x[cell, 7 + W.KINDS.index(kind)] = 1
        x[cell, 11] = 1.0 if size == "large" else -1.0
    x[:, 12 + W.BGS.index(bg)] = 1
    return x


def features():
    names = list(dirs)
    if a.feats == "oracle":
        allc = {**tr_caps, **va_caps}
        return {n: oracle(allc[n]) for n in names}
    cache = os.path.join(a.cache, f"stage_recipe_feats_{a.feats.replace('/', '_')}.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    from transformers import CLIPVisionModel, CLIPImageProcessor
    from PIL import Image
    if a.feats.startswith("random:"):
        from transformers import CLIPVisionConfig
        torch.manual_seed(0); d = a.feats[7:]
        m = CLIPVisionModel(CLIPVisionConfig.from_pretrained(d)).eval(); pre = CLIPImageProcessor.from_pretrained(d)
    else:
        m = CLIPVisionModel.from_pretrained(a.feats).eval(); pre = CLIPImageProcessor.from_pretrained(a.feats)
    out = {}
    for i in range(0, len(names), 64):
        chunk = names[i:i + 64]
        ims = [Image.open(os.path.join(a.world, dirs[n], n)).convert("RGB") for n in chunk]
        with torch.no_grad():
            h = m(**pre(images=ims, return_tensors="pt"), output_hidden_states=True).hidden_states[-2][:, 1:]
        out.update({n: h[j].clone() for j, n in enumerate(chunk)})
    torch.save(out, cache)
    return out


feats = features()
captions_of = {**tr_caps, **va_caps}
T, DV = next(iter(feats.values())).shape
lm = PhiForCausalLM.from_pretrained(a.lm).eval()
for q in lm.parameters():
    q.requires_grad_(False)
D = lm.config.hidden_size


class Block(torch.nn.Module):
    def __init__(s, d):
        super().__init__(); s.norm = torch.nn.LayerNorm(d); s.w1 = torch.nn.Linear(d, d); s.w2 = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(s.w2.weight); torch.nn.init.zeros_(s.w2.bias)
    def forward(s, x):
        return x + s.w2(F.gelu(s.w1(s.norm(x))))


class Projector(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.input = torch.nn.Linear(DV, D); s.blocks = torch.nn.ModuleList([Block(D) for _ in range(a.depth)])
    def forward(s, x):
        x = s.input(x)
        for b in s.blocks:
            x = b(x)
        return x


proj = Projector()
emb = lm.get_input_embeddings()


def run_batch(model, rows):
    """rows: (image, [(ids, learn)] pieces with None = image slot). Returns mean loss."""
    seqs = []
    for img, pieces in rows:
        ids, lab, start = [], [], 0
        for pc in pieces:
            if pc is None:
                start = len(ids); ids += [0] * T; lab += [-100] * T
            else:
                x, learn = pc; ids += x; lab += x if learn else [-100] * len(x)
        seqs.append((img, ids, lab, start))
    n = max(len(s[1]) for s in seqs)
    B = len(seqs)
    ids = torch.zeros(B, n, dtype=torch.long); lab = torch.full((B, n), -100); mask = torch.zeros(B, n, dtype=torch.long)
    for r, (_, i, l, _) in enumerate(seqs):
        ids[r, :len(i)] = torch.tensor(i); lab[r, :len(l)] = torch.tensor(l); mask[r, :len(i)] = 1
    e = emb(ids)
    f = proj(torch.stack([feats[s[0]] for s in seqs]))
    e = torch.stack([torch.cat([e[r, :s[3]], f[r], e[r, s[3] + T:]]) for r, s in enumerate(seqs)])
    return model(inputs_embeds=e, attention_mask=mask, labels=lab).loss


def train(model, params_groups, samples, steps, make, warm=0.03):
    opt = torch.optim.AdamW(params_groups, weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]
    w = max(1, int(warm * steps)); order = []
    t0 = time.time(); loss = torch.tensor(float("nan"))
    for step in range(steps):
        f = (step + 1) / w if step < w else 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        rows = []
        for _ in range(a.batch):
            if not order:
                order = list(range(len(samples))); rng.shuffle(order)
            rows.append(make(samples[order.pop()]))
        loss = run_batch(model, rows)
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in params_groups for q in g["params"]], 1.0); opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    return loss.item()


# Stage 1: [image] caption <eos>, LM frozen.
s1 = [(img, c) for img, cs in tr_caps.items() for c in cs]
t0 = time.time()
l1 = train(lm, [{"params": list(proj.parameters()), "lr": a.s1_lr}], s1, a.s1_steps,
           lambda s: (s[0], [None, (enc(s[1]) + [0], True)]))
t1 = time.time() - t0

# Stage 2: LoRA + projector, answers only.
from peft import LoraConfig, get_peft_model
model = lm
if a.rank > 0:
    model = get_peft_model(lm, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.05,
                                          target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]))
lora = [q for n, q in model.named_parameters() if "lora_" in n]
if a.full:
    for q in lm.parameters():
        q.requires_grad_(True)
    lora = list(lm.parameters())


def first_turn(q):
    """The first question's pieces around the image slot (None)."""
    if a.image_after:
        return [(enc("USER: " + q + "\n"), False), None, (enc(" ASSISTANT:"), False)]
    return [(enc("USER: "), False), None, (enc("\n" + q + " ASSISTANT:"), False)]


def conv_pieces(s):
    img, qa = s
    pcs = []
    for i, (q, ans, _) in enumerate(qa):
        if i == 0:
            pcs += first_turn(q)
        else:
            pcs.append((enc("USER: " + q + " ASSISTANT:"), False))
        pcs.append((enc(" " + ans) + [0], True))
    return img, pcs


steps2 = int(a.s2_epochs * len(tr_convs) / a.batch)
model.train()
t0 = time.time()
l2 = train(model, [{"params": lora, "lr": a.s2_lr}, {"params": list(proj.parameters()), "lr": a.s2_plr}],
           tr_convs, steps2, conv_pieces)
t2 = time.time() - t0
model.eval()


def score(convs, limit):
    qs = [(img, q, ans, k) for img, qa in convs for (q, ans, k) in qa][:limit]
    acc = {}
    with torch.no_grad():
        for img, q, ans, k in qs:
            (pre, _), _, (post, _) = first_turn(q)
            e = torch.cat([emb(torch.tensor([pre]))[0], proj(feats[img][None])[0], emb(torch.tensor([post]))[0]])[None]
            out = []
            past = None; x = e
            for _ in range(5):
                o = model(inputs_embeds=x, past_key_values=past, use_cache=True)
                past = o.past_key_values; t = int(o.logits[0, -1].argmax())
                if t == 0:
                    break
                out.append(t); x = emb(torch.tensor([[t]]))
            acc.setdefault(k, []).append(tok.decode(out).strip().lower() == ans.lower())
            if a.show_misses and not acc[k][-1]:
                print("MISS", k, "|", q, "| want", ans, "| got", tok.decode(out).strip(), "|", " / ".join(captions_of.get(img, [])))
    tot = sum(sum(v) for v in acc.values()) / max(1, sum(len(v) for v in acc.values()))
    return round(tot, 3), {k: round(sum(v) / len(v), 2) for k, v in sorted(acc.items())}


qa, per = score(va_convs, a.qa)
res = {"tag": a.tag, "feats": a.feats, "lm": a.lm, "s1_steps": a.s1_steps, "s2_steps": steps2, "rank": a.rank,
       "depth": a.depth, "s2_lr": a.s2_lr, "s2_plr": a.s2_plr, "loss1": round(l1, 3), "loss2": round(l2, 3),
       "qa": qa, "per_type": per, "t1": round(t1), "t2": round(t2)}
if a.train_qa:
    res["train_qa"] = score(tr_convs, a.train_qa)
print(json.dumps(res), flush=True)
