#!/usr/bin/env python3
"""Builds tiny random HF models and records their reference outputs for the Rust parity tests.

Run from the repository root with a Python that has torch, transformers, safetensors, numpy
and pillow:

    python scripts/ref_models.py            # writes tests/fixtures/models/

Everything is seeded, so rerunning rewrites the same models. The Rust tests only read the
files written here; they never need Python.

Layout of tests/fixtures/models/:
  clip_vision/        CLIPVisionModel, f32 single file, current preprocessor_config.json form
  clip_full/          CLIPModel (vision_config nested, text tower too), f16 file, legacy
                      preprocessor_config.json form (`size: 48`, `crop_size: 48`)
  phi_f32/            PhiForCausalLM, f32 single file, config with top-level
                      partial_rotary_factor / rope_theta (the microsoft/phi-2 form),
                      plus a tiny byte-level BPE tokenizer.json
  phi_f16/            the same weights saved as float16, `rope_parameters` config form
  phi_sharded_bf16/   the same weights as bfloat16 in several shards with
                      model.safetensors.index.json, `rope_parameters` config form
  images/             landscape PNG, JPEGs (4:4:4, 4:2:0, 4:2:2 with restarts, grey,
                      progressive; non-square on purpose)
  ref/                reference outputs (safetensors, float32)

Each reference is computed by loading *that* folder back with transformers in float32, so the
f16/bf16 references are HF running on the same rounded weights the Rust loader reads.
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PhiConfig,
    PhiForCausalLM,
)
from transformers.models.clip.image_processing_clip import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = os.path.join("tests", "fixtures", "models")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]

# Phi ids used by every LM reference (vocab is 128).
PHI_IDS = [1, 17, 99, 3, 64, 127, 0, 42, 5]
# A right-padded batch: row 1 is 5 tokens long.
PHI_BATCH = [[7, 8, 9, 10, 11, 12, 13], [100, 2, 55, 31, 4, 0, 0]]
PHI_BATCH_MASK = [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
JPEGS = ["portrait.jpg", "photo420.jpg", "photo422.jpg", "gray.jpg", "progressive.jpg"]
TOKENIZER_TEXTS = ["a red circle on a blue square", "Hello, world! <|endoftext|>", "unicode: café"]


def out(*parts):
    return os.path.join(ROOT, *parts)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def make_images():
    os.makedirs(out("images"), exist_ok=True)
    rng = np.random.default_rng(3)

    def picture(w, h):
        # Smooth gradients plus shapes and a little noise: realistic edges for the resampler,
        # small files.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1)
        base += rng.normal(0, 6, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        d.ellipse([w * 0.1, h * 0.2, w * 0.5, h * 0.7], fill=(230, 40, 30))
        d.rectangle([w * 0.55, h * 0.1, w * 0.9, h * 0.45], fill=(20, 200, 60))
        d.line([0, h - 1, w - 1, 0], fill=(255, 255, 255), width=2)
        return img

    picture(70, 50).save(out("images", "landscape.png"))
    # JPEG variants the exact decoder must match PIL (libjpeg-turbo) on: 4:4:4, 4:2:0 with odd
    # sizes (edge replication in the chroma upsampling), 4:2:2 with restart markers, grey.
    picture(41, 67).save(out("images", "portrait.jpg"), quality=92, subsampling=0)
    picture(45, 31).save(out("images", "photo420.jpg"), quality=85, subsampling=2)
    picture(37, 29).save(out("images", "photo422.jpg"), quality=75, subsampling=1, restart_marker_blocks=3)
    picture(23, 19).convert("L").save(out("images", "gray.jpg"), quality=90)
    # Progressive with successive approximation (Pillow uses libjpeg's simple progression).
    picture(39, 27).save(out("images", "progressive.jpg"), quality=80, progressive=True, optimize=True)
    decoded = {}
    for name in JPEGS:
        a = np.asarray(Image.open(out("images", name)).convert("RGB"))
        decoded[name] = torch.from_numpy(a.copy())
    os.makedirs(out("ref"), exist_ok=True)
    save_file(decoded, out("ref", "jpeg_decoded.safetensors"))


def expand2square(img, background):
    # LLaVA's pad-to-square (llava/mm_utils.py): paste centred on a square of the mean colour.
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, ((side - w) // 2, 0) if w < h else (0, (side - h) // 2))
    return result


def clip_refs(name, model, prefix_images):
    """Reference pixel values (PIL and torchvision backends) and hidden states for each image."""
    d = out(name)
    pil_proc = CLIPImageProcessorPil.from_pretrained(d)
    try:
        import torchvision  # noqa: F401  (the default CLIPImageProcessor backend needs it)

        tv_proc = CLIPImageProcessor.from_pretrained(d)
    except ImportError:
        tv_proc = None
    model = model.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
    refs = {}
    for tag, fname in prefix_images:
        img = Image.open(out("images", fname)).convert("RGB")
        cases = [(tag, img)]
        if tag == "png":
            bg = tuple(int(x * 255) for x in MEAN)
            cases.append((tag + "_square", expand2square(img, bg)))
        for case, im in cases:
            pv = pil_proc(images=im, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                if isinstance(model, CLIPModel):
                    o = model.vision_model(pixel_values=pv, output_hidden_states=True)
                else:
                    o = model(pixel_values=pv, output_hidden_states=True)
            refs[f"{case}.pixel_values"] = f32(pv[0])
            if tv_proc is not None:
                # For information: the torchvision backend resizes differently from PIL.
                pv_tv = tv_proc(images=im, return_tensors="pt")["pixel_values"]
                refs[f"{case}.pixel_values_torchvision"] = f32(pv_tv[0])
            refs[f"{case}.hidden_m2"] = f32(o.hidden_states[-2][0])
            refs[f"{case}.hidden_m1"] = f32(o.hidden_states[-1][0])
            refs[f"{case}.hidden_0"] = f32(o.hidden_states[0][0])
            refs[f"{case}.pooled"] = f32(o.pooler_output[0])
    os.makedirs(out("ref"), exist_ok=True)
    save_file(refs, out("ref", f"{name}.safetensors"))


def make_clip():
    torch.manual_seed(0)
    vcfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=16,
    )
    m = CLIPVisionModel(vcfg).eval()
    # HF's init leaves LayerNorms at identity and biases at zero; randomise them so every
    # parameter matters to the comparison.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layer_norm" in n or "layrnorm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    d = out("clip_vision")
    m.save_pretrained(d, safe_serialization=True)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(d)
    clip_refs(
        "clip_vision",
        CLIPVisionModel,
        [("png", "landscape.png"), ("jpg", "portrait.jpg"), ("jpg420", "photo420.jpg")],
    )

    torch.manual_seed(1)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=48,
            patch_size=16,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        projection_dim=16,
    )
    m = CLIPModel(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layer_norm" in n or "layrnorm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    d = out("clip_full")
    m.half().save_pretrained(d, safe_serialization=True)
    # The legacy form the openai repos ship: plain integers.
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(
            {
                "crop_size": 48,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": MEAN,
                "image_std": STD,
                "resample": 3,
                "size": 48,
            },
            f,
            indent=2,
        )
    clip_refs("clip_full", CLIPModel, [("png", "landscape.png"), ("jpg", "portrait.jpg")])


def phi_config_forms(d, form):
    """Rewrites config.json into the top-level (microsoft/phi-2) or `rope_parameters` form."""
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters", None) or {}
    theta = rp.get("rope_theta", c.get("rope_theta"))
    prf = rp.get("partial_rotary_factor", c.get("partial_rotary_factor"))
    c.pop("rope_theta", None)
    c.pop("partial_rotary_factor", None)
    if form == "top":
        c["rope_theta"] = theta
        c["partial_rotary_factor"] = prf
    else:
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": prf}
    with open(p, "w") as f:
        json.dump(c, f, indent=2)


def phi_refs(name):
    d = out(name)
    m = PhiForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
    # The loader must have read the config form we wrote, else the check below is void.
    assert abs(m.config.rope_parameters["rope_theta"] - 1000.0) < 1e-9, m.config.rope_parameters
    assert abs(m.config.rope_parameters["partial_rotary_factor"] - 0.25) < 1e-9
    refs = {}
    with torch.no_grad():
        ids = torch.tensor([PHI_IDS])
        o = m(input_ids=ids, output_hidden_states=True)
        refs["ids"] = ids[0].to(torch.int64)
        refs["logits"] = f32(o.logits[0])
        refs["hidden_last"] = f32(o.hidden_states[-1][0])
        b = torch.tensor(PHI_BATCH)
        mask = torch.tensor(PHI_BATCH_MASK)
        ob = m(input_ids=b, attention_mask=mask)
        refs["batch_ids"] = b.to(torch.int64)
        refs["batch_mask"] = mask.to(torch.int64)
        refs["batch_logits"] = f32(ob.logits)
    save_file(refs, out("ref", f"{name}.safetensors"))


def make_tokenizer(d):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        "a red circle on a blue square",
        "a green triangle left of a yellow circle",
        "what colour is the square? the square is blue.",
        "Hello, world!",
    ] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.save(os.path.join(d, "tokenizer.json"))
    refs = {}
    for i, t in enumerate(TOKENIZER_TEXTS):
        refs[f"text{i}"] = torch.tensor(tok.encode(t).ids, dtype=torch.int64)
    save_file(refs, out("ref", "tokenizer.safetensors"))
    with open(out("ref", "tokenizer_texts.json"), "w") as f:
        json.dump(TOKENIZER_TEXTS, f, ensure_ascii=False)
    return tok.token_to_id("<|endoftext|>")


def make_phi():
    torch.manual_seed(2)
    os.makedirs(out("ref"), exist_ok=True)
    cfg = PhiConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        layer_norm_eps=1e-5,
        hidden_act="gelu_new",
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.25},
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    m = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layernorm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                # Larger weights than HF's 0.02 init so attention is far from uniform and
                # position errors (rotary) show up in the logits.
                p.mul_(5.0)

    d = out("phi_f32")
    m.save_pretrained(d, safe_serialization=True)
    phi_config_forms(d, "top")
    eot = make_tokenizer(d)
    assert eot == 0, eot
    phi_refs("phi_f32")

    d = out("phi_f16")
    m.half().save_pretrained(d, safe_serialization=True)
    phi_config_forms(d, "rope_parameters")
    phi_refs("phi_f16")

    m = m.float()
    d = out("phi_sharded_bf16")
    m.to(torch.bfloat16).save_pretrained(d, safe_serialization=True, max_shard_size="60KB")
    phi_config_forms(d, "rope_parameters")
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
    phi_refs("phi_sharded_bf16")


def main():
    if os.path.exists(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    make_images()
    make_clip()
    make_phi()
    # generation_config.json is noise for us; drop it to keep the fixtures small.
    for root, _, files in os.walk(ROOT):
        for f in files:
            if f == "generation_config.json":
                os.remove(os.path.join(root, f))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(ROOT) for f in fs)
    print(f"fixtures: {total / 1024:.0f} KiB in {ROOT}")


if __name__ == "__main__":
    main()
