//! `harness pretrain clip`: a tiny CLIP trained contrastively by the harness itself on a
//! synthetic world (COCO layout), its vision tower saved as an HF `CLIPVisionModel` folder.
//!
//! - Vision: [`ClipVision`] from a small [`ClipVisionConfig`] (HF semantics, quick_gelu),
//!   pooled as HF does: `post_layernorm` of the last layer's CLS token.
//! - Text: our own small encoder, used only for the objective and the zero-shot check (the
//!   stages read the vision tower alone). A word-level vocabulary built from the training
//!   captions (lowercased runs of letters and digits; 0 = padding, 1 = unknown): the
//!   synthetic world has about 50 words, so every colour, shape and place is one token and
//!   captions stay under 32 tokens. Token + learned position embeddings, pre-LN layers (the
//!   vision tower's [`ClipLayer`], padding masked out of attention), a final LayerNorm,
//!   mean-pooled over the real tokens.
//! - Bias-free linear projections of both into a shared space, L2-normalised; CLIP's
//!   symmetric InfoNCE with a learned temperature: `logit_scale` starts at ln(1/0.07) and is
//!   clamped at ln(100). CLIP clamps the parameter after each step; here the clamp is in the
//!   forward pass, which has the same effect on the logits (and no gradient past the cap).
//! - AdamW, linear warmup + cosine decay ([`LrSchedule`]), global-norm gradient clipping.
//!
//! The folder written: `config.json`, `model.safetensors` (f32, HF key names),
//! `preprocessor_config.json` (current form: `size.shortest_edge`, `crop_size`) and
//! `pretrain.json` (settings, data sizes, time, loss, zero-shot accuracies).
//!
//! Zero-shot (the world's `synth.json` gives the seed, hence every val scene): each colour is
//! the mean text embedding of "a {colour} {kind}" over the kinds plus "a {colour} shape";
//! each kind the mean of "a {colour} {kind}" over the colours plus "a {kind}" (CLIP's prompt
//! ensembling). An image's prediction is the class with the highest cosine similarity.
//! `color_acc`/`shape_acc` count the val images with one shape (chance 1/6 and 1/4);
//! `*_acc_any` all val images, right when the prediction is present in the picture.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::Distribution;
use serde::Serialize;
use serde_json::json;

use crate::backbones::ClipPretrainOptions;
use crate::backend::{Compute, Train};
use crate::data::coco::load_captions;
use crate::data::images::{load_rgb, par_map, ImageRoot};
use crate::data::synth::{scene, COLORS, KINDS};
use crate::model::clip::{ClipLayer, ClipVision, ClipVisionConfig};
use crate::model::lora::QLoraBackend;
use crate::model::preprocess::{preprocess, PreprocessConfig, Resize};
use crate::model::Activation;
use crate::rng::{epoch_order, Rng};
use crate::train::grads;
use crate::train::schedule::LrSchedule;

/// CLIP's cap on the learned temperature: logits are at most 100 x cosine.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_092; // ln(100)
/// Longest caption in tokens; longer ones are truncated.
pub const MAX_TEXT_LEN: usize = 40;

impl ClipPretrainOptions {
    pub fn vision_config(&self) -> ClipVisionConfig {
        ClipVisionConfig::new(
            self.hidden,
            4 * self.hidden,
            self.vision_layers,
            self.heads,
            self.image_size,
            self.patch,
        )
    }

    /// The preprocessing the tower is trained with and saved with: shortest side to
    /// `image_size` (PIL bicubic), centre crop, CLIP mean/std.
    pub fn preprocess_config(&self) -> PreprocessConfig {
        PreprocessConfig {
            resize: Resize::ShortestEdge(self.image_size),
            crop: (self.image_size, self.image_size),
            ..Default::default()
        }
    }
}

/// `preprocessor_config.json` in the current transformers form.
pub fn preprocessor_json(cfg: &PreprocessConfig) -> serde_json::Value {
    let size = match cfg.resize {
        Resize::ShortestEdge(n) => json!({ "shortest_edge": n }),
        Resize::Exact { height, width } => json!({ "height": height, "width": width }),
    };
    json!({
        "crop_size": { "height": cfg.crop.0, "width": cfg.crop.1 },
        "do_center_crop": cfg.do_center_crop,
        "do_convert_rgb": true,
        "do_normalize": cfg.do_normalize,
        "do_rescale": cfg.do_rescale,
        "do_resize": cfg.do_resize,
        "image_mean": cfg.mean,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": cfg.std,
        "resample": 3,
        "rescale_factor": cfg.rescale_factor,
        "size": size,
    })
}

// ---------------------------------------------------------------------------------------
// Text: vocabulary and encoder

/// Lowercased runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// A word-level vocabulary: 0 = padding, 1 = unknown, then the words sorted.
#[derive(Clone, Debug)]
pub struct Vocab {
    index: HashMap<String, i64>,
}

impl Vocab {
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut all: Vec<String> = texts.into_iter().flat_map(words).collect();
        all.sort();
        all.dedup();
        let index = all
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i as i64 + 2))
            .collect();
        Self { index }
    }

    pub fn len(&self) -> usize {
        self.index.len() + 2
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = words(text)
            .iter()
            .map(|w| self.index.get(w).copied().unwrap_or(1))
            .collect();
        ids.truncate(MAX_TEXT_LEN);
        if ids.is_empty() {
            ids.push(1);
        }
        ids
    }

    /// Token ids `[b, t]` padded with 0, and `keep` `[b, t]` (1 = real token).
    pub fn batch<B: Backend>(
        &self,
        texts: &[&str],
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
        let enc: Vec<Vec<i64>> = texts.iter().map(|t| self.encode(t)).collect();
        let width = enc.iter().map(Vec::len).max().unwrap_or(1);
        let (mut ids, mut keep) = (Vec::new(), Vec::new());
        for e in &enc {
            for j in 0..width {
                ids.push(e.get(j).copied().unwrap_or(0));
                keep.push(if j < e.len() { 1f32 } else { 0.0 });
            }
        }
        let shape = [texts.len(), width];
        (
            Tensor::from_data(TensorData::new(ids, shape), device),
            Tensor::from_data(TensorData::new(keep, shape), device),
        )
    }
}

/// The text encoder of the contrastive objective.
#[derive(Module, Debug)]
pub struct TextTower<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub position_embedding: Embedding<B>,
    pub layers: Vec<ClipLayer<B>>,
    pub final_layer_norm: LayerNorm<B>,
}

impl<B: QLoraBackend> TextTower<B> {
    /// `[b, d]`: mean of the final hidden states over the real tokens.
    pub fn forward(&self, ids: Tensor<B, 2, Int>, keep: Tensor<B, 2>) -> Tensor<B, 2> {
        let [b, t] = ids.dims();
        let d = self.position_embedding.weight.dims()[1];
        let pos = self
            .position_embedding
            .weight
            .val()
            .slice([0..t, 0..d])
            .unsqueeze_dim::<3>(0);
        let mut x = self.token_embedding.forward(ids) + pos;
        let pad = keep.clone().equal_elem(0.0).reshape([b, 1, 1, t]);
        for l in &self.layers {
            x = l.forward_masked(x, Some(pad.clone()));
        }
        let x = self.final_layer_norm.forward(x);
        let k = keep.unsqueeze_dim::<3>(2); // [b, t, 1]
        let sum = (x * k.clone()).sum_dim(1).reshape([b, d]);
        sum / k.sum_dim(1).reshape([b, 1])
    }
}

// ---------------------------------------------------------------------------------------
// The two towers and the objective

#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    pub vision: ClipVision<B>,
    pub text: TextTower<B>,
    pub visual_projection: Linear<B>,
    pub text_projection: Linear<B>,
    pub logit_scale: Param<Tensor<B, 1>>,
}

fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.clone().square().sum_dim(1).sqrt().add_scalar(1e-12);
    x / n
}

impl<B: QLoraBackend> Clip<B> {
    pub fn init(o: &ClipPretrainOptions, vocab_size: usize, device: &B::Device) -> Self {
        let d = o.hidden;
        let normal = |shape: [usize; 2], std: f64| -> Tensor<B, 2> {
            Tensor::random(shape, Distribution::Normal(0.0, std), device)
        };
        let vcfg = o.vision_config();
        let mut vision = vcfg.init::<B>(device);
        // HF's CLIP initialisation for the embeddings (burn's Embedding default is N(0, 1),
        // which would swamp the patch content at the start).
        vision.class_embedding = Param::from_tensor(Tensor::random(
            [d],
            Distribution::Normal(0.0, (d as f64).powf(-0.5)),
            device,
        ));
        vision.position_embedding.weight =
            Param::from_tensor(normal([vcfg.num_positions(), d], 0.02));
        let mut token_embedding = EmbeddingConfig::new(vocab_size, d).init(device);
        token_embedding.weight = Param::from_tensor(normal([vocab_size, d], 0.02));
        let mut position_embedding = EmbeddingConfig::new(MAX_TEXT_LEN, d).init(device);
        position_embedding.weight = Param::from_tensor(normal([MAX_TEXT_LEN, d], 0.01));
        let text = TextTower {
            token_embedding,
            position_embedding,
            layers: (0..o.text_layers)
                .map(|_| ClipLayer::init(d, 4 * d, o.heads, 1e-5, Activation::QuickGelu, device))
                .collect(),
            final_layer_norm: LayerNormConfig::new(d).with_epsilon(1e-5).init(device),
        };
        let proj = || {
            LinearConfig::new(d, o.embed_dim)
                .with_bias(false)
                .init(device)
        };
        Clip {
            vision,
            text,
            visual_projection: proj(),
            text_projection: proj(),
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![(1.0f32 / 0.07).ln()], [1]),
                device,
            )),
        }
    }

    /// Unit-length image embeddings `[b, e]` from pixels `[b, 3, S, S]`.
    pub fn image_embeds(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        l2_normalize(self.visual_projection.forward(self.vision.pooled(pixels)))
    }

    /// Unit-length text embeddings `[b, e]`.
    pub fn text_embeds(&self, ids: Tensor<B, 2, Int>, keep: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(self.text_projection.forward(self.text.forward(ids, keep)))
    }

    /// Symmetric InfoNCE over a batch of matching (image, caption) rows.
    pub fn loss(
        &self,
        pixels: Tensor<B, 4>,
        ids: Tensor<B, 2, Int>,
        keep: Tensor<B, 2>,
    ) -> Tensor<B, 1> {
        let img = self.image_embeds(pixels);
        let txt = self.text_embeds(ids, keep);
        let n = img.dims()[0];
        let device = img.device();
        let scale = self
            .logit_scale
            .val()
            .clamp_max(LOGIT_SCALE_MAX)
            .exp()
            .reshape([1, 1])
            .expand([n, n]);
        let logits = img.matmul(txt.transpose()) * scale;
        let eye = Tensor::<B, 2>::eye(n, &device);
        let images_to_texts = (log_softmax(logits.clone(), 1) * eye.clone()).sum();
        let texts_to_images = (log_softmax(logits, 0) * eye).sum();
        (images_to_texts + texts_to_images).div_scalar(-2.0 * n as f64)
    }
}

// ---------------------------------------------------------------------------------------
// Data

/// One split: each image once, its preprocessed pixels and all its captions.
pub struct Split {
    pub image_ids: Vec<u64>,
    pub paths: Vec<PathBuf>,
    /// `[3, S, S]` each, CLIP-normalised.
    pub pixels: Vec<Vec<f32>>,
    pub captions: Vec<Vec<String>>,
    pub undecodable: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.image_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.image_ids.is_empty()
    }

    /// Pixels `[idx.len(), 3, S, S]`.
    pub fn pixel_batch<B: Backend>(
        &self,
        idx: &[usize],
        size: usize,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        let mut v = Vec::with_capacity(idx.len() * 3 * size * size);
        for &i in idx {
            v.extend_from_slice(&self.pixels[i]);
        }
        Tensor::from_data(TensorData::new(v, [idx.len(), 3, size, size]), device)
    }
}

/// Reads `annotations/captions_{split}2017.json` and preprocesses every image once.
pub fn load_split(
    data: &Path,
    split: &str,
    pcfg: &PreprocessConfig,
    threads: usize,
) -> Result<Split> {
    let root = ImageRoot::new(&data.join(format!("{split}2017")))?;
    let json = data
        .join("annotations")
        .join(format!("captions_{split}2017.json"));
    let set = load_captions(&json, &root)?;
    let mut by_image: BTreeMap<u64, (PathBuf, Vec<String>)> = BTreeMap::new();
    for s in set.samples {
        by_image
            .entry(s.image_id)
            .or_insert_with(|| (s.image.clone(), Vec::new()))
            .1
            .push(s.caption);
    }
    let items: Vec<(u64, (PathBuf, Vec<String>))> = by_image.into_iter().collect();
    let pixels = par_map(&items, threads, |(_, (path, _))| {
        load_rgb(path).map(|im| preprocess(&im, pcfg))
    });
    let mut out = Split {
        image_ids: vec![],
        paths: vec![],
        pixels: vec![],
        captions: vec![],
        undecodable: 0,
    };
    for ((id, (path, caps)), px) in items.into_iter().zip(pixels) {
        match px {
            Ok(px) => {
                out.image_ids.push(id);
                out.paths.push(path);
                out.pixels.push(px);
                out.captions.push(caps);
            }
            Err(_) => out.undecodable += 1,
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Zero-shot

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ZeroShot {
    /// Val images with exactly one shape, and the accuracy on them (chance 1/6, 1/4).
    pub single_shape_images: usize,
    pub color_acc: f64,
    pub shape_acc: f64,
    /// All val images: right when the predicted colour / kind is in the picture.
    pub images: usize,
    pub color_acc_any: f64,
    pub shape_acc_any: f64,
    /// Chance level of the `_any` numbers on these images.
    pub color_chance_any: f64,
    pub shape_chance_any: f64,
}

fn mean_embedding<B: QLoraBackend>(
    clip: &Clip<B>,
    vocab: &Vocab,
    prompts: &[String],
    device: &B::Device,
) -> Vec<f32> {
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (ids, keep) = vocab.batch::<B>(&refs, device);
    let e = clip.text_embeds(ids, keep).mean_dim(0);
    let e = l2_normalize(e);
    e.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
}

/// Image embeddings of a whole split, row-major `[n][e]`.
pub fn split_embeddings<B: QLoraBackend>(
    clip: &Clip<B>,
    split: &Split,
    size: usize,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let idx: Vec<usize> = (0..split.len()).collect();
    let mut out = Vec::new();
    for chunk in idx.chunks(256) {
        let e = clip.image_embeds(split.pixel_batch::<B>(chunk, size, device));
        let [n, d] = e.dims();
        let v = e.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        out.extend((0..n).map(|r| v[r * d..(r + 1) * d].to_vec()));
    }
    out
}

fn argmax_class(img: &[f32], classes: &[Vec<f32>]) -> usize {
    let dot = |c: &Vec<f32>| img.iter().zip(c).map(|(a, b)| a * b).sum::<f32>();
    let mut best = 0;
    for (i, c) in classes.iter().enumerate() {
        if dot(c) > dot(&classes[best]) {
            best = i;
        }
    }
    best
}

/// Zero-shot colour and shape accuracy on `val`, whose scenes are those of world `seed`.
pub fn zero_shot<B: QLoraBackend>(
    clip: &Clip<B>,
    vocab: &Vocab,
    val: &Split,
    world_seed: u64,
    size: usize,
    device: &B::Device,
) -> ZeroShot {
    let color_classes: Vec<Vec<f32>> = COLORS
        .iter()
        .map(|(c, _)| {
            let mut p: Vec<String> = KINDS
                .iter()
                .map(|k| format!("a {c} {}", k.name()))
                .collect();
            p.push(format!("a {c} shape"));
            mean_embedding(clip, vocab, &p, device)
        })
        .collect();
    let kind_classes: Vec<Vec<f32>> = KINDS
        .iter()
        .map(|k| {
            let mut p: Vec<String> = COLORS
                .iter()
                .map(|(c, _)| format!("a {c} {}", k.name()))
                .collect();
            p.push(format!("a {}", k.name()));
            mean_embedding(clip, vocab, &p, device)
        })
        .collect();
    let embeds = split_embeddings(clip, val, size, device);
    let mut z = ZeroShot::default();
    let (mut c1, mut k1, mut ca, mut ka, mut cch, mut kch) =
        (0usize, 0usize, 0usize, 0usize, 0.0, 0.0);
    for (e, &id) in embeds.iter().zip(&val.image_ids) {
        let sc = scene(world_seed, id - 1);
        let pc = argmax_class(e, &color_classes);
        let pk = argmax_class(e, &kind_classes);
        let has_c = sc.shapes.iter().any(|s| s.color == pc);
        let has_k = sc.shapes.iter().any(|s| s.kind == KINDS[pk]);
        z.images += 1;
        ca += has_c as usize;
        ka += has_k as usize;
        cch += sc.shapes.len() as f64 / COLORS.len() as f64;
        let kinds_present = KINDS.iter().filter(|k| sc.count_kind(**k) > 0).count();
        kch += kinds_present as f64 / KINDS.len() as f64;
        if sc.shapes.len() == 1 {
            z.single_shape_images += 1;
            c1 += has_c as usize;
            k1 += has_k as usize;
        }
    }
    let frac = |a: usize, n: usize| {
        if n == 0 {
            f64::NAN
        } else {
            a as f64 / n as f64
        }
    };
    z.color_acc = frac(c1, z.single_shape_images);
    z.shape_acc = frac(k1, z.single_shape_images);
    z.color_acc_any = frac(ca, z.images);
    z.shape_acc_any = frac(ka, z.images);
    z.color_chance_any = cch / z.images.max(1) as f64;
    z.shape_chance_any = kch / z.images.max(1) as f64;
    z
}

// ---------------------------------------------------------------------------------------
// Training

/// What `pretrain_clip` made; the towers on the inference backend.
pub struct ClipPretrained {
    pub clip: Clip<Compute>,
    pub vocab: Vocab,
    pub vision_config: ClipVisionConfig,
    pub train_images: usize,
    pub val_images: usize,
    /// Mean loss over the first and the last 20 steps.
    pub first_loss: f64,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub total_seconds: f64,
    pub zero_shot: Option<ZeroShot>,
}

/// Trains the tiny CLIP on `o.data` and writes the vision tower folder to `o.out`.
pub fn pretrain_clip(o: &ClipPretrainOptions) -> Result<ClipPretrained> {
    let t_all = Instant::now();
    let vcfg = o.vision_config();
    anyhow::ensure!(
        o.hidden.is_multiple_of(o.heads) && o.image_size.is_multiple_of(o.patch),
        "hidden {} must be a multiple of heads {}, image size {} of patch {}",
        o.hidden,
        o.heads,
        o.image_size,
        o.patch
    );
    anyhow::ensure!(o.steps > 0 && o.batch > 1, "need steps > 0 and batch > 1");
    let device = crate::backend::device(0);
    let pcfg = o.preprocess_config();
    let train = load_split(&o.data, "train", &pcfg, o.threads)
        .with_context(|| format!("reading the training split of {}", o.data.display()))?;
    anyhow::ensure!(
        train.len() >= 2,
        "{} has fewer than 2 training images",
        o.data.display()
    );
    let val = load_split(&o.data, "val", &pcfg, o.threads).ok();
    let vocab = Vocab::build(train.captions.iter().flatten().map(String::as_str));

    <Train as Backend>::seed(&device, o.seed);
    let mut model: Clip<Train> = Clip::init(o, vocab.len(), &device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(o.weight_decay as f32)
        .init::<Train, Clip<Train>>();
    let sched = LrSchedule::warmup_cosine(o.lr, o.steps, o.warmup);
    let b = o.batch.min(train.len());
    let per_epoch = (train.len() / b).max(1);
    let (mut order, mut order_epoch) = (Vec::new(), u64::MAX);
    let mut losses = Vec::with_capacity(o.steps as usize);
    let t_train = Instant::now();
    for step in 0..o.steps {
        let epoch = step / per_epoch as u64;
        if epoch != order_epoch {
            order = epoch_order(train.len(), o.seed, epoch);
            order_epoch = epoch;
        }
        let start = (step as usize % per_epoch) * b;
        let idx = &order[start..start + b];
        // One of the image's captions, drawn per (seed, step).
        let mut rng = Rng::derive(o.seed ^ 0xC11F_7E47, step);
        let texts: Vec<&str> = idx
            .iter()
            .map(|&i| rng.pick(&train.captions[i]).as_str())
            .collect();
        let pixels = train.pixel_batch::<Train>(idx, o.image_size, &device);
        let (ids, keep) = vocab.batch::<Train>(&texts, &device);
        let loss = model.loss(pixels, ids, keep);
        let lv = loss.clone().into_scalar().elem::<f64>();
        anyhow::ensure!(lv.is_finite(), "loss is {lv} at step {step}");
        losses.push(lv);
        let mut g = GradientsParams::from_grads(loss.backward(), &model);
        grads::clip_global_norm::<Train, _>(&model, &mut g, o.clip_grad_norm);
        model = optim.step(sched.lr(step), model, g);
        if o.log_every > 0 && ((step + 1) % o.log_every == 0 || step + 1 == o.steps) {
            let scale = model.logit_scale.val().into_scalar().elem::<f64>();
            eprintln!(
                "pretrain clip: step {}/{} loss {lv:.4} logit_scale {:.2} ({:.1}s)",
                step + 1,
                o.steps,
                scale.min(LOGIT_SCALE_MAX).exp(),
                t_train.elapsed().as_secs_f64()
            );
        }
    }
    let train_seconds = t_train.elapsed().as_secs_f64();
    let clip = model.valid();
    let k = losses.len().min(20);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;

    // The HF folder.
    clip.vision.save_hf(&vcfg, &o.out)?;
    crate::fsutil::write_atomic(
        &o.out.join("preprocessor_config.json"),
        &serde_json::to_vec_pretty(&preprocessor_json(&pcfg))?,
    )?;

    let world_seed = crate::fsutil::read_json::<serde_json::Value>(&o.data.join("synth.json"))
        .ok()
        .and_then(|v| v.get("seed").and_then(|s| s.as_u64()));
    let zero_shot = match (&val, world_seed) {
        (Some(val), Some(seed)) if !val.is_empty() => {
            Some(zero_shot(&clip, &vocab, val, seed, o.image_size, &device))
        }
        _ => None,
    };
    let out = ClipPretrained {
        vocab,
        vision_config: vcfg,
        train_images: train.len(),
        val_images: val.as_ref().map_or(0, Split::len),
        first_loss: mean(&losses[..k]),
        final_loss: mean(&losses[losses.len() - k..]),
        train_seconds,
        total_seconds: t_all.elapsed().as_secs_f64(),
        zero_shot,
        clip,
    };
    let report = json!({
        "options": o,
        "vision_config": out.vision_config.to_hf_json(),
        "train_images": out.train_images,
        "val_images": out.val_images,
        "undecodable_images": train.undecodable + val.as_ref().map_or(0, |v| v.undecodable),
        "vocab_size": out.vocab.len(),
        "first_loss": out.first_loss,
        "final_loss": out.final_loss,
        "logit_scale": out.clip.logit_scale.val().into_scalar().elem::<f64>().min(LOGIT_SCALE_MAX).exp(),
        "train_seconds": out.train_seconds,
        "total_seconds": out.total_seconds,
        "zero_shot": out.zero_shot,
    });
    crate::fsutil::write_atomic(
        &o.out.join("pretrain.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(out)
}
