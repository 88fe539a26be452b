//! The CLIP vision tower with Hugging Face `CLIPVisionModel` semantics.
//!
//! patch conv (no bias) -> `[CLS]` + patches -> + learned positions -> `pre_layrnorm` ->
//! pre-LN encoder layers. `hidden_states[0]` is the output of `pre_layrnorm`, `[i]` the output
//! of layer i; `post_layernorm` only applies to the pooled CLS token (as in HF).

use std::path::Path;

use anyhow::Context;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde_json::Value;

use super::attention::attention;
use super::checkpoint::{read_json, Checkpoint, HfTensors};
use super::lora::QLoraBackend;
use super::{Activation, FlatForward};

/// The vision config, from `config.json` (vision-only checkpoints) or its `vision_config`
/// (full `CLIPModel` checkpoints).
#[derive(Config, Debug, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[config(default = 3)]
    pub num_channels: usize,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = "Activation::QuickGelu")]
    pub hidden_act: Activation,
}

/// Which hidden state LLaVA feeds the projector: HF `hidden_states[layer]` (negative counts
/// from the end; -2 is LLaVA's choice), with or without the CLS token.
#[derive(Config, Debug, Copy, PartialEq)]
pub struct FeatureSelect {
    #[config(default = -2)]
    pub layer: i64,
    #[config(default = false)]
    pub with_cls: bool,
}

impl ClipVisionConfig {
    /// Reads `dir/config.json`; for a full CLIP checkpoint, its `vision_config`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        Self::from_hf_json(&json).with_context(|| format!("reading {}", path.display()))
    }

    pub fn from_hf_json(json: &Value) -> anyhow::Result<Self> {
        let v = json.get("vision_config").unwrap_or(json);
        // A key may be missing when it equals transformers' default (configs are saved as a
        // diff against CLIPVisionConfig's defaults), so missing keys take those defaults.
        let int = |k: &str, d: usize| -> anyhow::Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(x) => x
                    .as_u64()
                    .map(|x| x as usize)
                    .with_context(|| format!("`{k}` must be a non-negative integer, got {x}")),
            }
        };
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("quick_gelu");
        Self {
            hidden_size: int("hidden_size", 768)?,
            intermediate_size: int("intermediate_size", 3072)?,
            num_hidden_layers: int("num_hidden_layers", 12)?,
            num_attention_heads: int("num_attention_heads", 12)?,
            image_size: int("image_size", 224)?,
            patch_size: int("patch_size", 32)?,
            num_channels: int("num_channels", 3)?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            hidden_act: Activation::from_hf(act)?,
        }
        .validate()
    }

    /// `config.json` in transformers' `CLIPVisionModel` form (what [`Self::from_hf_json`]
    /// reads back).
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["CLIPVisionModel"],
            "model_type": "clip_vision_model",
            "attention_dropout": 0.0,
            "dtype": "float32",
            "hidden_act": self.hidden_act.hf_name(),
            "hidden_size": self.hidden_size,
            "image_size": self.image_size,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
            "num_attention_heads": self.num_attention_heads,
            "num_channels": self.num_channels,
            "num_hidden_layers": self.num_hidden_layers,
            "patch_size": self.patch_size,
        })
    }

    /// The shapes must divide evenly (heads into width, patches into the image).
    fn validate(self) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        anyhow::ensure!(
            self.patch_size > 0 && self.image_size.is_multiple_of(self.patch_size),
            "image_size {} is not a multiple of patch_size {}",
            self.image_size,
            self.patch_size
        );
        Ok(self)
    }

    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Patches plus the CLS token.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + 1
    }

    /// A randomly initialised tower (tests, demos); real runs use [`ClipVision::load`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipVision<B> {
        let d = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        ClipVision {
            patch_embedding: Conv2dConfig::new(
                [self.num_channels, d],
                [self.patch_size, self.patch_size],
            )
            .with_stride([self.patch_size, self.patch_size])
            .with_bias(false)
            .init(device),
            class_embedding: Param::from_tensor(Tensor::zeros([d], device)),
            position_embedding: EmbeddingConfig::new(self.num_positions(), d).init(device),
            pre_layrnorm: ln(),
            layers: (0..self.num_hidden_layers)
                .map(|_| {
                    ClipLayer::init(
                        d,
                        self.intermediate_size,
                        self.num_attention_heads,
                        self.layer_norm_eps,
                        self.hidden_act,
                        device,
                    )
                })
                .collect(),
            post_layernorm: ln(),
        }
    }
}

#[derive(Module, Debug)]
pub struct ClipLayer<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub layer_norm1: LayerNorm<B>,
    pub layer_norm2: LayerNorm<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    pub num_heads: usize,
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> ClipLayer<B> {
    /// A randomly initialised pre-LN layer of width `d` (also the text layers of
    /// `harness pretrain clip`).
    pub fn init(
        d: usize,
        intermediate: usize,
        heads: usize,
        eps: f64,
        act: Activation,
        device: &B::Device,
    ) -> Self {
        let ln = || LayerNormConfig::new(d).with_epsilon(eps).init(device);
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        ClipLayer {
            q_proj: lin(d, d),
            k_proj: lin(d, d),
            v_proj: lin(d, d),
            out_proj: lin(d, d),
            layer_norm1: ln(),
            layer_norm2: ln(),
            fc1: lin(d, intermediate),
            fc2: lin(intermediate, d),
            num_heads: heads,
            act,
        }
    }
}

impl<B: QLoraBackend> ClipLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_masked(x, None)
    }

    /// With a key mask (true = may not be attended, broadcast to `[batch, heads, q, k]`),
    /// e.g. padding in a text batch.
    pub fn forward_masked(
        &self,
        x: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, burn::tensor::Bool>>,
    ) -> Tensor<B, 3> {
        let h = self.layer_norm1.forward(x.clone());
        let x = x + self.self_attn(h, mask);
        let h = self.layer_norm2.forward(x.clone());
        x.clone()
            + self
                .fc2
                .forward_flat(self.act.forward(self.fc1.forward_flat(h)))
    }

    fn self_attn(
        &self,
        x: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, burn::tensor::Bool>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let heads = |y: Tensor<B, 3>| {
            y.reshape([b, t, self.num_heads, d / self.num_heads])
                .swap_dims(1, 2)
        };
        let q = heads(self.q_proj.forward_flat(x.clone()));
        let k = heads(self.k_proj.forward_flat(x.clone()));
        let v = heads(self.v_proj.forward_flat(x));
        let o = attention(q, k, v, mask).swap_dims(1, 2).reshape([b, t, d]);
        self.out_proj.forward_flat(o)
    }
}

#[derive(Module, Debug)]
pub struct ClipVision<B: Backend> {
    pub patch_embedding: Conv2d<B>,
    pub class_embedding: Param<Tensor<B, 1>>,
    pub position_embedding: Embedding<B>,
    pub pre_layrnorm: LayerNorm<B>,
    pub layers: Vec<ClipLayer<B>>,
    pub post_layernorm: LayerNorm<B>,
}

impl<B: Backend> ClipVision<B> {
    /// Loads an HF checkpoint folder: `CLIPVisionModel` or full `CLIPModel` (only the
    /// `vision_model.` tensors are read).
    pub fn from_dir(dir: &Path, device: &B::Device) -> anyhow::Result<(Self, ClipVisionConfig)> {
        let cfg = ClipVisionConfig::load(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Ok((Self::load(&ckpt, &cfg, device)?, cfg))
    }

    /// Builds the tower from checkpoint tensors. HF key names are spelled out here, the one
    /// place they are mapped.
    pub fn load(
        ckpt: &Checkpoint,
        cfg: &ClipVisionConfig,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        // CLIPVisionModel and CLIPModel both nest the tower under `vision_model.`; accept a
        // bare tower too.
        let p = if ckpt.contains("embeddings.class_embedding")
            && !ckpt.contains("vision_model.embeddings.class_embedding")
        {
            String::new()
        } else {
            "vision_model.".to_string()
        };
        let (d, f, c, ps) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_channels,
            cfg.patch_size,
        );
        let eps = cfg.layer_norm_eps;
        let mut m = cfg.init::<B>(device);
        m.patch_embedding.weight = Param::from_tensor(ckpt.tensor(
            &format!("{p}embeddings.patch_embedding.weight"),
            [d, c, ps, ps],
            device,
        )?);
        m.class_embedding = Param::from_tensor(ckpt.tensor(
            &format!("{p}embeddings.class_embedding"),
            [d],
            device,
        )?);
        m.position_embedding = ckpt.embedding(
            &format!("{p}embeddings.position_embedding"),
            cfg.num_positions(),
            d,
            device,
        )?;
        m.pre_layrnorm = ckpt.layer_norm(&format!("{p}pre_layrnorm"), d, eps, device)?;
        for (i, l) in m.layers.iter_mut().enumerate() {
            let q = format!("{p}encoder.layers.{i}");
            l.q_proj = ckpt.linear(&format!("{q}.self_attn.q_proj"), d, d, true, device)?;
            l.k_proj = ckpt.linear(&format!("{q}.self_attn.k_proj"), d, d, true, device)?;
            l.v_proj = ckpt.linear(&format!("{q}.self_attn.v_proj"), d, d, true, device)?;
            l.out_proj = ckpt.linear(&format!("{q}.self_attn.out_proj"), d, d, true, device)?;
            l.layer_norm1 = ckpt.layer_norm(&format!("{q}.layer_norm1"), d, eps, device)?;
            l.layer_norm2 = ckpt.layer_norm(&format!("{q}.layer_norm2"), d, eps, device)?;
            l.fc1 = ckpt.linear(&format!("{q}.mlp.fc1"), d, f, true, device)?;
            l.fc2 = ckpt.linear(&format!("{q}.mlp.fc2"), f, d, true, device)?;
        }
        m.post_layernorm = ckpt.layer_norm(&format!("{p}post_layernorm"), d, eps, device)?;
        Ok(m)
    }

    /// The tower's tensors under the HF `CLIPVisionModel` names [`Self::load`] reads, in
    /// PyTorch layout (Linear `[out, in]`, conv `[out, 3, p, p]`), as f32. The inverse of
    /// `load`, kept beside it so the key names live in one place; a saved tower loads back
    /// bit for bit (tests/it/pretrain.rs).
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let p = "vision_model.";
        let mut o = HfTensors::default();
        o.tensor(
            format!("{p}embeddings.patch_embedding.weight"),
            self.patch_embedding.weight.val(),
        );
        o.tensor(
            format!("{p}embeddings.class_embedding"),
            self.class_embedding.val(),
        );
        o.tensor(
            format!("{p}embeddings.position_embedding.weight"),
            self.position_embedding.weight.val(),
        );
        o.layer_norm(&format!("{p}pre_layrnorm"), &self.pre_layrnorm);
        for (i, l) in self.layers.iter().enumerate() {
            let q = format!("{p}encoder.layers.{i}");
            o.linear(&format!("{q}.self_attn.q_proj"), &l.q_proj);
            o.linear(&format!("{q}.self_attn.k_proj"), &l.k_proj);
            o.linear(&format!("{q}.self_attn.v_proj"), &l.v_proj);
            o.linear(&format!("{q}.self_attn.out_proj"), &l.out_proj);
            o.layer_norm(&format!("{q}.layer_norm1"), &l.layer_norm1);
            o.layer_norm(&format!("{q}.layer_norm2"), &l.layer_norm2);
            o.linear(&format!("{q}.mlp.fc1"), &l.fc1);
            o.linear(&format!("{q}.mlp.fc2"), &l.fc2);
        }
        o.layer_norm(&format!("{p}post_layernorm"), &self.post_layernorm);
        o.0
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (f32) in the HF
    /// `CLIPVisionModel` layout, loadable by [`Self::from_dir`].
    pub fn save_hf(&self, cfg: &ClipVisionConfig, dir: &Path) -> anyhow::Result<()> {
        super::checkpoint::save_hf_folder(dir, &self.hf_tensors(), &cfg.to_hf_json())
    }
}

impl<B: QLoraBackend> ClipVision<B> {
    /// HF `hidden_states[0]`: embeddings after `pre_layrnorm`. `pixels`: `[batch, 3, H, W]`.
    pub fn embed(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        // Pixels arrive as f32; the weights may be bf16 (GPU runs).
        let pixels = pixels.cast(self.class_embedding.val().dtype());
        let patches = self.patch_embedding.forward(pixels); // [b, d, gh, gw]
        let [b, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let pos = self.position_embedding.weight.val().unsqueeze_dim::<3>(0);
        self.pre_layrnorm.forward(x + pos)
    }

    /// All HF `hidden_states`: `num_layers + 1` tensors of `[batch, tokens, d]`.
    pub fn hidden_states(&self, pixels: Tensor<B, 4>) -> Vec<Tensor<B, 3>> {
        let mut out = vec![self.embed(pixels)];
        for l in &self.layers {
            let next = l.forward(out.last().unwrap().clone());
            out.push(next);
        }
        out
    }

    /// HF `hidden_states[k]` (negative k counts from the end), running only the layers needed.
    pub fn hidden_state(&self, pixels: Tensor<B, 4>, k: i64) -> Tensor<B, 3> {
        let n = self.layers.len() as i64;
        let idx = if k < 0 { n + 1 + k } else { k };
        assert!(
            (0..=n).contains(&idx),
            "hidden state {k} out of range for {n} layers"
        );
        let mut x = self.embed(pixels);
        for l in &self.layers[..idx as usize] {
            x = l.forward(x);
        }
        x
    }

    /// LLaVA's image features: `[batch, patches (+1 with CLS), d]`.
    pub fn features(&self, pixels: Tensor<B, 4>, select: &FeatureSelect) -> Tensor<B, 3> {
        let h = self.hidden_state(pixels, select.layer);
        if select.with_cls {
            h
        } else {
            let [b, t, d] = h.dims();
            h.slice([0..b, 1..t, 0..d])
        }
    }

    /// HF `pooler_output`: `post_layernorm` of the last layer's CLS token, `[batch, d]`.
    pub fn pooled(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let h = self.hidden_state(pixels, -1);
        let [b, _, d] = h.dims();
        self.post_layernorm
            .forward(h.slice([0..b, 0..1, 0..d]).reshape([b, d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_variants_give_the_design_numbers() {
        // vision_config of openai/clip-vit-large-patch14-336 (full CLIPModel form).
        let l14: Value = serde_json::json!({"model_type": "clip", "vision_config": {
            "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
            "projection_dim": 768}});
        let c = ClipVisionConfig::from_hf_json(&l14).unwrap();
        assert_eq!((c.num_patches(), c.hidden_size), (576, 1024));
        assert_eq!(c.hidden_act, Activation::QuickGelu);
        // B/16 saved as a diff against the defaults (B/32 numbers): only the patch differs.
        let b16 = serde_json::json!({"vision_config": {"patch_size": 16}});
        let c = ClipVisionConfig::from_hf_json(&b16).unwrap();
        assert_eq!(
            (c.num_patches(), c.hidden_size, c.num_hidden_layers),
            (196, 768, 12)
        );
        let bad = serde_json::json!({"hidden_size": 100, "num_attention_heads": 12});
        assert!(ClipVisionConfig::from_hf_json(&bad).is_err());
    }
}
