#!/usr/bin/env python3
"""Recipe search for `harness pretrain clip`, in PyTorch on a CPU: the same vision tower
(transformers' CLIPVisionModel from a config), a word-level text encoder of the same size,
symmetric InfoNCE with a learned temperature, AdamW with warmup + cosine, clipping at 1.0.
Then a check of what the tower learned about shape: an MLP probe on the frozen patch
features (layer -2, what the stages read) predicting which kinds are in the picture.

    python scripts/clip_recipe.py WORLD CLIP_DIR OUT [--steps 300 --batch 128 --lr 1e-3
        --group none|colors --objective infonce|kinds|both --size S --patch P]

CLIP_DIR: a `builtin:clip-*` build, for its config and preprocessor (--size/--patch override
them). --group colors builds each batch from groups of images with the same background and
colours, so only kinds, sizes and places tell them apart (hard negatives). --objective kinds
trains the tower supervised on kind presence instead (is shape learnable at all at this
size?); `both` adds that loss to InfoNCE (a tower that must keep colour and shape). OUT gets
the tower in the HF layout, readable by scripts/stage_recipe.py.
"""
import argparse, json, math, os, random, re, time
import torch, torch.nn as nn, torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPImageProcessor
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("world"); p.add_argument("template"); p.add_argument("out")
p.add_argument("--steps", type=int, default=300); p.add_argument("--batch", type=int, default=128)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--group", default="none")
p.add_argument("--per-group", type=int, default=16); p.add_argument("--objective", default="infonce")
p.add_argument("--size", type=int, default=0); p.add_argument("--patch", type=int, default=0)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.manual_seed(a.seed); rng = random.Random(a.seed)
cfg = CLIPVisionConfig.from_pretrained(a.template)
pre = CLIPImageProcessor.from_pretrained(a.template)
if a.size:
    cfg.image_size = a.size
    pre.size = {"shortest_edge": a.size}; pre.crop_size = {"height": a.size, "width": a.size}
if a.patch:
    cfg.patch_size = a.patch
KINDS = ["circle", "square", "triangle", "diamond"]


def split(name):
    ann = json.load(open(os.path.join(a.world, "annotations", f"captions_{name}2017.json")))
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    caps = {}
    for x in ann["annotations"]:
        caps.setdefault(files[x["image_id"]], []).append(x["caption"].strip())
    names = sorted(caps)
    px = torch.cat([pre(images=[Image.open(os.path.join(a.world, f"{name}2017", n)).convert("RGB")
                                for n in names[i:i + 100]], return_tensors="pt")["pixel_values"]
                    for i in range(0, len(names), 100)])
    kinds = torch.stack([torch.tensor([float(k in caps[n][0]) for k in KINDS]) for n in names])
    return [caps[n] for n in names], px, kinds


caps, px, kinds = split("train")
vcaps, vpx, vkinds = split("val")
words = sorted({w for cs in caps for c in cs for w in re.findall(r"[a-z0-9]+", c.lower())})
vocab = {w: i + 2 for i, w in enumerate(words)}  # 0 padding, 1 unknown


def text_ids(texts):
    ids = [[vocab.get(w, 1) for w in re.findall(r"[a-z0-9]+", t.lower())][:32] for t in texts]
    n = max(len(i) for i in ids)
    return torch.tensor([i + [0] * (n - len(i)) for i in ids])


class Text(nn.Module):
    """Token + position embeddings, pre-LN layers, final LayerNorm, mean over real tokens."""
    def __init__(s, d, layers=2):
        super().__init__()
        s.tok = nn.Embedding(len(vocab) + 2, d); s.pos = nn.Embedding(32, d)
        s.layers = nn.ModuleList([nn.TransformerEncoderLayer(d, 4, 4 * d, 0.0, "gelu", batch_first=True,
                                                             norm_first=True) for _ in range(layers)])
        s.ln = nn.LayerNorm(d)

    def forward(s, ids):
        keep = ids != 0
        x = s.tok(ids) + s.pos(torch.arange(ids.shape[1]))
        for layer in s.layers:
            x = layer(x, src_key_padding_mask=~keep)
        x = s.ln(x) * keep[..., None]
        return x.sum(1) / keep.sum(1, keepdim=True)


vision = CLIPVisionModel(cfg); d = cfg.hidden_size
text = Text(d); vp = nn.Linear(d, 64, bias=False); tp = nn.Linear(d, 64, bias=False)
head = nn.Linear(d, len(KINDS))
scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
params = [*vision.parameters(), *text.parameters(), *vp.parameters(), *tp.parameters(), scale]
if a.objective == "kinds":
    params = [*vision.parameters(), *head.parameters()]
elif a.objective == "both":
    params += [*head.parameters()]
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
warm = max(1, int(0.05 * a.steps))
groups = {}
for i, cs in enumerate(caps):
    bg = re.search(r"on a (\w+) background", cs[0]).group(1)
    groups.setdefault((bg, tuple(sorted(re.findall(r"red|green|blue|yellow|purple|orange", cs[0])))), []).append(i)
glist = list(groups.values())


def batch_idx():
    if a.group == "none":
        return rng.sample(range(len(caps)), a.batch)
    out = []
    while len(out) < a.batch:
        g = rng.choice(glist)
        out += [i for i in rng.sample(g, min(len(g), a.per_group)) if i not in out]
    return out[:a.batch]


t0 = time.time()
for step in range(a.steps):
    f = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, a.steps - warm)))
    for g in opt.param_groups:
        g["lr"] = a.lr * f
    idx = batch_idx()
    pooled = vision(pixel_values=px[idx]).pooler_output
    if a.objective == "kinds":
        loss = F.binary_cross_entropy_with_logits(head(pooled), kinds[idx])
    else:
        img = F.normalize(vp(pooled), dim=-1)
        txt = F.normalize(tp(text(text_ids([rng.choice(caps[i]) for i in idx]))), dim=-1)
        logits = scale.clamp(max=math.log(100)).exp() * img @ txt.T
        lab = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab)) / 2
        if a.objective == "both":
            loss = loss + F.binary_cross_entropy_with_logits(head(pooled), kinds[idx])
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    if step % 100 == 0 or step == a.steps - 1:
        print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
vision.save_pretrained(a.out); pre.save_pretrained(a.out)
vision.eval()


def acc(pred, y):
    return round(((pred > 0).float() == y).float().mean().item(), 3)


res = {"objective": a.objective, "group": a.group, "steps": a.steps, "size": cfg.image_size,
       "patch": cfg.patch_size, "train_images": len(caps), "final_loss": round(loss.item(), 3),
       "seconds": round(time.time() - t0), "kind_base_rate": round(1 - vkinds.mean().item(), 3)}
with torch.no_grad():
    if a.objective in ("kinds", "both"):
        res["kind_presence_val"] = acc(head(vision(pixel_values=vpx).pooler_output), vkinds)
    feat = lambda x: torch.cat([vision(pixel_values=x[i:i + 256], output_hidden_states=True)
                                .hidden_states[-2][:, 1:].flatten(1) for i in range(0, len(x), 256)])
    X, V = feat(px), feat(vpx)
mu, sd = X.mean(0), X.std(0) + 1e-5
X, V = (X - mu) / sd, (V - mu) / sd
probe = nn.Sequential(nn.Linear(X.shape[1], 256), nn.GELU(), nn.Linear(256, len(KINDS)))
popt = torch.optim.AdamW(probe.parameters(), 1e-3, weight_decay=0.05)
for _ in range(1500):
    i = torch.randint(0, len(X), (64,))
    pl = F.binary_cross_entropy_with_logits(probe(X[i]), kinds[i]); popt.zero_grad(); pl.backward(); popt.step()
with torch.no_grad():
    res["probe_kind_presence_val"] = acc(probe(V), vkinds)
print(json.dumps(res), flush=True)
