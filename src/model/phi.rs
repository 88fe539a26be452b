//! Phi (`PhiForCausalLM`, microsoft/phi-2) with Hugging Face semantics.
//!
//! Block: `x + attn(ln(x)) + mlp(ln(x))` with one `input_layernorm` (parallel attention and
//! MLP). Attention: biased q/k/v projections, rotary embedding on the first
//! `head_dim * partial_rotary_factor` dims of each head in the rotate_half (NeoX) layout, the
//! rest passed through; output projection `dense`. MLP: fc1 -> gelu_new (tanh) -> fc2.
//! Then `final_layernorm` and a biased `lm_head`.

use std::path::Path;

use anyhow::{bail, Context};
use burn::module::{Initializer, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::prelude::*;
use burn::tensor::Bool;
use serde_json::Value;

use super::attention::mask_bias;
use super::checkpoint::{read_json, Checkpoint, HfTensors};
use super::lora::{LoraAdapter, LoraConfig, LoraLinear, QLoraBackend};
use super::{Activation, FlatForward};

/// The LM config, from `config.json`. `rope_theta` and `partial_rotary_factor` are read from
/// the top level (the microsoft/phi-2 file) or from `rope_parameters` (current transformers).
#[derive(Config, Debug, PartialEq)]
pub struct PhiConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    #[config(default = 0.5)]
    pub partial_rotary_factor: f64,
    #[config(default = "Activation::GeluTanh")]
    pub hidden_act: Activation,
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<usize>,
    pub eos_token_id: Option<usize>,
    pub pad_token_id: Option<usize>,
    /// Dropout on the attention and MLP outputs before the residual sum (HF `resid_dropout`,
    /// 0.1 in microsoft/phi-2), while training only (HF trains with the model in train mode,
    /// frozen base included).
    #[config(default = 0.0)]
    pub resid_pdrop: f64,
    /// Dropout on the input embeddings (image features spliced in), while training only.
    #[config(default = 0.0)]
    pub embd_pdrop: f64,
}

impl PhiConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        Self::from_hf_json(&json).with_context(|| format!("reading {}", path.display()))
    }

    pub fn from_hf_json(v: &Value) -> anyhow::Result<Self> {
        let get = |k: &str| -> anyhow::Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .with_context(|| format!("missing or non-integer `{k}`"))
        };
        let id = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let rope = v.get("rope_parameters").filter(|r| r.is_object());
        let rope_f = |k: &str, d: f64| {
            rope.and_then(|r| r.get(k))
                .or_else(|| v.get(k))
                .and_then(Value::as_f64)
                .unwrap_or(d)
        };
        if let Some(t) = rope
            .and_then(|r| r.get("rope_type"))
            .and_then(Value::as_str)
        {
            if t != "default" {
                bail!("rope_type `{t}` is not supported (only default)");
            }
        }
        if v.get("qk_layernorm").and_then(Value::as_bool) == Some(true) {
            bail!("qk_layernorm = true is not supported");
        }
        // The legacy key: a scaled rotary (linear, dynamic, ...) would change every position's
        // angles, and silently ignoring it would compute another model.
        if let Some(rs) = v.get("rope_scaling").filter(|r| !r.is_null()) {
            bail!("rope_scaling = {rs} is not supported (only null: unscaled rotary)");
        }
        let pdrop = |k: &str| -> anyhow::Result<f64> {
            let p = v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            anyhow::ensure!((0.0..1.0).contains(&p), "`{k}` = {p} is not in [0, 1)");
            Ok(p)
        };
        let attention_dropout = pdrop("attention_dropout")?;
        if attention_dropout > 0.0 {
            bail!("attention_dropout = {attention_dropout} is not supported (only 0, as microsoft/phi-2 has it)");
        }
        let heads = get("num_attention_heads")?;
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        Ok(Self {
            vocab_size: get("vocab_size")?,
            hidden_size: get("hidden_size")?,
            intermediate_size: get("intermediate_size")?,
            num_hidden_layers: get("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: id("num_key_value_heads").unwrap_or(heads),
            max_position_embeddings: id("max_position_embeddings").unwrap_or(2048),
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_theta: rope_f("rope_theta", 10000.0),
            partial_rotary_factor: rope_f("partial_rotary_factor", 0.5),
            hidden_act: Activation::from_hf(act)?,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: id("bos_token_id"),
            eos_token_id: id("eos_token_id"),
            pad_token_id: id("pad_token_id"),
            resid_pdrop: pdrop("resid_pdrop")?,
            embd_pdrop: pdrop("embd_pdrop")?,
        })
    }

    /// HF `PhiForCausalLM` `config.json` (the fields transformers writes; rope settings
    /// both at the top level, as microsoft/phi-2 has them, and in `rope_parameters`, as
    /// current transformers reads them).
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["PhiForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "dtype": "float32",
            "embd_pdrop": self.embd_pdrop,
            "eos_token_id": self.eos_token_id,
            "hidden_act": self.hidden_act.hf_name(),
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "phi",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pad_token_id": self.pad_token_id,
            "partial_rotary_factor": self.partial_rotary_factor,
            "qk_layernorm": false,
            "resid_pdrop": self.resid_pdrop,
            "rope_parameters": {
                "partial_rotary_factor": self.partial_rotary_factor,
                "rope_theta": self.rope_theta,
                "rope_type": "default"
            },
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Dims per head that get the rotary embedding (HF truncates with `int()`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.partial_rotary_factor) as usize
    }

    /// A randomly initialised model (tests, demos); real runs use [`Phi::load`]. Every
    /// parameter is trainable until frozen ([`Phi::freeze_base`], `no_grad`); `lora` adds
    /// adapters and NF4 bases as in stage 2.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Phi<B> {
        self.init_with(device, &LoraConfig::frozen())
    }

    /// [`PhiConfig::init`] with LoRA adapters (and an NF4 base when `lora.quant` is set).
    pub fn init_with<B: Backend>(&self, device: &B::Device, lora: &LoraConfig) -> Phi<B> {
        self.build(device, lora, None)
    }

    /// HF's initialisation for training from scratch (`PhiPreTrainedModel._init_weights`):
    /// linear and embedding weights N(0, `std`), biases 0, LayerNorms 1 and 0.
    pub fn init_hf<B: Backend>(&self, device: &B::Device, std: f64) -> Phi<B> {
        self.build(device, &LoraConfig::frozen(), Some(std))
    }

    fn build<B: Backend>(
        &self,
        device: &B::Device,
        lora: &LoraConfig,
        hf_std: Option<f64>,
    ) -> Phi<B> {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let kv = self.num_key_value_heads * hd;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| match hf_std {
            None => LinearConfig::new(i, o).init(device),
            Some(std) => {
                let mut l = LinearConfig::new(i, o)
                    .with_initializer(Initializer::Normal { mean: 0.0, std })
                    .init(device);
                l.bias = Some(Param::from_tensor(Tensor::zeros([o], device)));
                l
            }
        };
        let lin = |i, o, path: String| LoraLinear::from_linear(linear(i, o), &path, lora);
        let embed = match hf_std {
            None => EmbeddingConfig::new(self.vocab_size, d),
            Some(std) => EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std }),
        };
        Phi {
            embed_tokens: embed.init(device),
            layers: (0..self.num_hidden_layers)
                .map(|i| {
                    let p = format!("model.layers.{i}");
                    PhiLayer {
                        input_layernorm: ln(),
                        q_proj: lin(d, d, format!("{p}.self_attn.q_proj")),
                        k_proj: lin(d, kv, format!("{p}.self_attn.k_proj")),
                        v_proj: lin(d, kv, format!("{p}.self_attn.v_proj")),
                        dense: lin(d, d, format!("{p}.self_attn.dense")),
                        fc1: lin(d, f, format!("{p}.mlp.fc1")),
                        fc2: lin(f, d, format!("{p}.mlp.fc2")),
                        num_heads: self.num_attention_heads,
                        num_kv_heads: self.num_key_value_heads,
                        act: self.hidden_act,
                        resid_dropout: DropoutConfig::new(self.resid_pdrop).init(),
                    }
                })
                .collect(),
            final_layernorm: ln(),
            lm_head: linear(d, self.vocab_size),
            embed_dropout: DropoutConfig::new(self.embd_pdrop).init(),
            rotary_dim: self.rotary_dim(),
            rope_theta: self.rope_theta,
        }
    }
}

/// Bytes a loaded [`Phi`] holds, by part (what bitsandbytes' `get_memory_footprint` and
/// `torch.cuda.memory_allocated` compare with).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ModelMemory {
    /// NF4 codes and block scales of the layers' linear weights.
    pub packed_base: usize,
    /// Linear weights kept dense (`quant = "none"`).
    pub dense_base: usize,
    /// Everything else of the base: embeddings, `lm_head`, layer norms, biases.
    pub dense_other: usize,
    /// LoRA adapters.
    pub adapters: usize,
}

impl ModelMemory {
    pub fn total(&self) -> usize {
        self.packed_base + self.dense_base + self.dense_other + self.adapters
    }
}

/// Keys and values of every layer for incremental decoding, `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Tokens already cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reorders (and repeats) batch rows: row `i` afterwards is row `rows[i]` before. Beam
    /// search keeps each surviving beam's keys and values this way.
    pub fn select_rows(&mut self, rows: &[usize]) {
        for (k, v) in self.layers.iter_mut().flatten() {
            let device = k.device();
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx);
        }
    }
}

#[derive(Module, Debug)]
pub struct PhiLayer<B: Backend> {
    pub input_layernorm: LayerNorm<B>,
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub dense: LoraLinear<B>,
    pub fc1: LoraLinear<B>,
    pub fc2: LoraLinear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    #[module(skip)]
    pub act: Activation,
    /// `resid_pdrop` on both branches (identity outside training).
    pub resid_dropout: Dropout,
}

/// cos and sin over whole heads (HF `PhiRotaryEmbedding` for the rotary dims; 1 and 0 for
/// the dims passed through), one row `[1, tokens * heads * head_dim]` per head count, for
/// `[b, t, heads, hd]` flattened to `[b, t * heads * hd]`: a row shared by the batch is the
/// broadcast the CPU backend runs as a SIMD loop (a `[1, t, 1, hd]` one it walks element by
/// element).
struct Rope<B: Backend> {
    /// `(heads, cos, sin)`: Phi's query and key head counts differ with grouped queries.
    rows: Vec<(usize, Tensor<B, 2>, Tensor<B, 2>)>,
    rotary_dim: usize,
}

impl<B: Backend> Rope<B> {
    fn new(
        (rotary_dim, head_dim): (usize, usize),
        head_counts: &[usize],
        theta: f64,
        (start, len): (usize, usize),
        device: &B::Device,
        dtype: burn::tensor::DType,
    ) -> Self {
        // f32 like HF: inv_freq = 1 / theta^(2i/dim), angles = pos * inv_freq, duplicated.
        let half = rotary_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        let mut rows = Vec::new();
        for &h in head_counts {
            if rows.iter().any(|(n, _, _)| *n == h) {
                continue;
            }
            let n = len * h * head_dim;
            let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
            // One head's values per position, repeated for every head.
            let (mut c, mut s) = (vec![1.0f32; head_dim], vec![0.0f32; head_dim]);
            for p in start..start + len {
                for j in 0..rotary_dim {
                    let a = p as f32 * inv[j % half];
                    (c[j], s[j]) = (a.cos(), a.sin());
                }
                for _ in 0..h {
                    cos.extend_from_slice(&c);
                    sin.extend_from_slice(&s);
                }
            }
            // Computed in f32 like HF, then stored in the model's dtype (bf16 on GPU).
            let t = |v: Vec<f32>| {
                Tensor::<B, 2>::from_data(TensorData::new(v, [1, n]), (device, dtype))
            };
            rows.push((h, t(cos), t(sin)));
        }
        Self { rows, rotary_dim }
    }

    /// Rotates the first `rotary_dim` dims of `[b, t, h, head_dim]`, NeoX layout:
    /// `x cos + rotate_half(x) sin` over whole heads, the passed-through dims having cos 1
    /// and sin 0 (so they come out exactly as they went in).
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, t, h, hd] = x.dims();
        let r = self.rotary_dim;
        if r == 0 {
            return x;
        }
        let (_, cos, sin) = self
            .rows
            .iter()
            .find(|(n, _, _)| *n == h)
            .expect("rope rows built for every head count");
        let x1 = x.clone().slice([0..b, 0..t, 0..h, 0..r / 2]);
        let x2 = x.clone().slice([0..b, 0..t, 0..h, r / 2..r]);
        let mut halves = vec![x2.neg(), x1];
        if r < hd {
            // Multiplied by sin = 0: any finite values do.
            halves.push(Tensor::<B, 4>::zeros([b, t, h, hd - r], &x.device()).cast(x.dtype()));
        }
        let flat = |y: Tensor<B, 4>| y.reshape([b, t * h * hd]);
        let rotated = flat(Tensor::cat(halves, 3));
        (flat(x) * cos.clone() + rotated * sin.clone()).reshape([b, t, h, hd])
    }
}

/// The six linears of a layer (the LoRA targets) as HF and peft name them below the layer,
/// in the order [`PhiLayer::linears`] and [`LayerAdapters::slots`] list them.
pub const LINEAR_NAMES: [&str; 6] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.dense",
    "mlp.fc1",
    "mlp.fc2",
];

/// `[(name, REF.field); 6]` over the six linear fields, `REF` being `&self` or `&mut self`:
/// the one place that pairs each of [`LINEAR_NAMES`] with its field, for [`PhiLayer`] and
/// [`LayerAdapters`] alike.
macro_rules! by_linear_name {
    ($($r:tt)+) => {{
        let n = LINEAR_NAMES;
        [
            (n[0], $($r)+.q_proj),
            (n[1], $($r)+.k_proj),
            (n[2], $($r)+.v_proj),
            (n[3], $($r)+.dense),
            (n[4], $($r)+.fc1),
            (n[5], $($r)+.fc2),
        ]
    }};
}

impl<B: Backend> PhiLayer<B> {
    /// The six linears (the LoRA targets) with their module names below the layer, as HF
    /// and peft name them: the one list every walk over them uses.
    pub fn linears(&self) -> [(&'static str, &LoraLinear<B>); 6] {
        by_linear_name!(&self)
    }

    /// [`Self::linears`], mutable.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut LoraLinear<B>); 6] {
        by_linear_name!(&mut self)
    }
}

impl<B: QLoraBackend> PhiLayer<B> {
    /// The block `x + attn(ln(x)) + mlp(ln(x))`, appending to `cache` when given.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerContext<B>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let (rope, bias) = (&ctx.rope, ctx.bias.clone());
        let h = self.input_layernorm.forward(x.clone());
        let a = super::dropout(&self.resid_dropout, self.attn(h.clone(), rope, bias, cache));
        let m = self.fc2.forward(self.act.forward_lm(self.fc1.forward(h)));
        a + super::dropout(&self.resid_dropout, m) + x
    }

    fn attn(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let hd = d / self.num_heads;
        // `[b, t, heads, hd]`, rotated in that layout, then `[b, heads, t, hd]`.
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]);
        let q = rope
            .apply(heads(self.q_proj.forward(x.clone()), self.num_heads))
            .swap_dims(1, 2);
        let mut k = rope
            .apply(heads(self.k_proj.forward(x.clone()), self.num_kv_heads))
            .swap_dims(1, 2);
        let mut v = heads(self.v_proj.forward(x), self.num_kv_heads).swap_dims(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let o = <B as QLoraBackend>::attention(q, k, v, bias)
            .swap_dims(1, 2)
            .reshape([b, t, d]);
        self.dense.forward(o)
    }

    /// Grouped-query attention: each kv head serves `heads / kv_heads` query heads.
    fn repeat_kv(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let n = self.num_heads / self.num_kv_heads;
        if n == 1 {
            return x;
        }
        let [b, kvh, s, hd] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([b, kvh, n, s, hd])
            .reshape([b, kvh * n, s, hd])
    }
}

#[derive(Module, Debug)]
pub struct Phi<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<PhiLayer<B>>,
    pub final_layernorm: LayerNorm<B>,
    pub lm_head: Linear<B>,
    /// `embd_pdrop` on the input embeddings (identity outside training).
    pub embed_dropout: Dropout,
    pub rotary_dim: usize,
    pub rope_theta: f64,
}

impl<B: Backend> Phi<B> {
    /// Loads an HF checkpoint folder (single file or sharded; f32/f16/bf16 weights are
    /// converted to the device's float dtype, or `ckpt.dtype`).
    pub fn from_dir(dir: &Path, device: &B::Device) -> anyhow::Result<(Self, PhiConfig)> {
        let cfg = PhiConfig::load(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Ok((Self::load(&ckpt, &cfg, device)?, cfg))
    }

    /// Builds the model from checkpoint tensors; the HF key names are spelled out here.
    pub fn load(ckpt: &Checkpoint, cfg: &PhiConfig, device: &B::Device) -> anyhow::Result<Self> {
        Self::load_with(ckpt, cfg, device, &LoraConfig::frozen())
    }

    /// [`Phi::load`] with LoRA adapters on `lora.targets` and, when `lora.quant` is set, the
    /// layer weights NF4-packed as they are read: tensors stream from the memory-mapped file
    /// one at a time, so the full-precision model never exists in memory.
    pub fn load_with(
        ckpt: &Checkpoint,
        cfg: &PhiConfig,
        device: &B::Device,
        lora: &LoraConfig,
    ) -> anyhow::Result<Self> {
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let kv = cfg.num_key_value_heads * cfg.head_dim();
        let eps = cfg.layer_norm_eps;
        let lin = |name: String, i, o| LoraLinear::load(ckpt, &name, i, o, lora, device);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(PhiLayer {
                input_layernorm: ckpt.layer_norm(
                    &format!("{p}.input_layernorm"),
                    d,
                    eps,
                    device,
                )?,
                q_proj: lin(format!("{p}.self_attn.q_proj"), d, d)?,
                k_proj: lin(format!("{p}.self_attn.k_proj"), d, kv)?,
                v_proj: lin(format!("{p}.self_attn.v_proj"), d, kv)?,
                dense: lin(format!("{p}.self_attn.dense"), d, d)?,
                fc1: lin(format!("{p}.mlp.fc1"), d, f)?,
                fc2: lin(format!("{p}.mlp.fc2"), f, d)?,
                num_heads: cfg.num_attention_heads,
                num_kv_heads: cfg.num_key_value_heads,
                act: cfg.hidden_act,
                resid_dropout: DropoutConfig::new(cfg.resid_pdrop).init(),
            });
        }
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") {
            let mut head = ckpt.linear("model.embed_tokens", d, v, false, device)?;
            head.bias = Some(Param::from_tensor(ckpt.tensor(
                "lm_head.bias",
                [v],
                device,
            )?));
            head
        } else {
            ckpt.linear("lm_head", d, v, true, device)?
        };
        Ok(Phi {
            embed_tokens: ckpt.embedding("model.embed_tokens", v, d, device)?,
            layers,
            final_layernorm: ckpt.layer_norm("model.final_layernorm", d, eps, device)?,
            lm_head,
            embed_dropout: DropoutConfig::new(cfg.embd_pdrop).init(),
            rotary_dim: cfg.rotary_dim(),
            rope_theta: cfg.rope_theta,
        })
    }

    /// The model's tensors under the HF names [`Self::load_with`] reads, PyTorch layout
    /// (Linear `[out, in]`), f32; NF4 bases dequantized, LoRA adapters left out (not
    /// merged). The inverse of `load`, beside it so the key names live in one place.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let dev = self.embed_tokens.weight.device();
        let mut o = HfTensors::default();
        o.tensor(
            "model.embed_tokens.weight".into(),
            self.embed_tokens.weight.val(),
        );
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            for (name, lin) in l.linears() {
                let w = lin.base.weight(&dev, burn::tensor::DType::F32);
                o.linear_parts(&format!("{p}.{name}"), w, lin.base.bias());
            }
            o.layer_norm(&format!("{p}.input_layernorm"), &l.input_layernorm);
        }
        o.layer_norm("model.final_layernorm", &self.final_layernorm);
        o.linear("lm_head", &self.lm_head);
        o.0
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (f32) in the HF
    /// `PhiForCausalLM` layout, loadable by [`Self::from_dir`] and by transformers.
    pub fn save_hf(&self, cfg: &PhiConfig, dir: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.layers
                .iter()
                .all(|l| l.linears().iter().all(|(_, x)| x.lora.is_none())),
            "saving a Phi with LoRA adapters would drop them (merge or export them instead)"
        );
        super::checkpoint::save_hf_folder(dir, &self.hf_tensors(), &cfg.to_hf_json())
    }

    /// Freezes every parameter except the LoRA adapters' (stage 2 trains only those).
    pub fn freeze_base(self) -> Self {
        let mut m = self.no_grad();
        for l in &mut m.layers {
            for (_, lin) in l.linears_mut() {
                lin.lora = lin.lora.take().map(|a| a.trainable());
            }
        }
        m
    }

    /// Token embeddings `[batch, tokens, d]` for ids `[batch, tokens]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }
}

impl<B: QLoraBackend> Phi<B> {
    /// Logits `[batch, tokens, vocab]` for every position.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        self.forward_embeds(self.embed(ids), mask, None)
    }

    /// Logits `[batch, tokens, vocab]` from input embeddings `[batch, tokens, d]` (what the
    /// VLM feeds, image features spliced in).
    ///
    /// `mask`: `[batch, cached + tokens]`, true for real tokens, false for padding (HF's
    /// `attention_mask`); `None` means no padding. Positions are `cached .. cached + tokens`
    /// for every row, as HF does when no `position_ids` are given, so pad on the right.
    /// With `cache`, the new keys/values are appended and only the new tokens are computed.
    pub fn forward_embeds(
        &self,
        embeds: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Bool>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.head(self.hidden_embeds(embeds, mask, cache))
    }

    /// [`Self::forward_embeds`] up to the last layer's output `[batch, tokens, d]`, before
    /// [`Self::head`]: training applies the head only where there is a target.
    pub fn hidden_embeds(
        &self,
        embeds: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Bool>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let ctx = self.context(&embeds, past, mask);
        let mut x = self.embed_input(embeds);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &ctx, slot);
        }
        x
    }

    /// What every layer of one forward pass shares: the rotary tables for positions
    /// `past .. past + tokens` and the attention mask as an additive bias, built once.
    pub fn context(
        &self,
        embeds: &Tensor<B, 3>,
        past: usize,
        mask: Option<Tensor<B, 2, Bool>>,
    ) -> LayerContext<B> {
        let [b, t, d] = embeds.dims();
        let device = embeds.device();
        // Every layer has the config's head counts.
        let (heads, kv_heads) = self
            .layers
            .first()
            .map_or((1, 1), |l| (l.num_heads, l.num_kv_heads));
        let rope = Rope::new(
            (self.rotary_dim, d / heads),
            &[heads, kv_heads],
            self.rope_theta,
            (past, t),
            &device,
            embeds.dtype(),
        );
        let bias = attention_mask(b, t, past, mask, &device)
            .map(|m| mask_bias(m, [b, heads, t, past + t], embeds.dtype()));
        LayerContext { rope, bias }
    }

    /// The input embeddings as the first layer takes them (`embd_pdrop` while training).
    pub fn embed_input(&self, embeds: Tensor<B, 3>) -> Tensor<B, 3> {
        super::dropout(&self.embed_dropout, embeds)
    }

    /// Logits from the last layer's output: `final_layernorm`, then `lm_head`.
    pub fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head.forward_flat(self.final_layernorm.forward(x))
    }
}

/// The per-forward constants of every layer ([`Phi::context`]).
pub struct LayerContext<B: Backend> {
    rope: Rope<B>,
    bias: Option<Tensor<B, 4>>,
}

impl<B: QLoraBackend> Phi<B> {
    /// Greedy decoding for one sequence from its prompt embeddings `[1, tokens, d]` (image
    /// features already spliced in): the KV cache makes each new token one short forward
    /// pass. Returns the generated ids (prompt excluded), stopping after `eos` (included) or
    /// `max_new` tokens.
    pub fn generate_greedy(
        &self,
        prompt: Tensor<B, 3>,
        max_new: usize,
        eos: Option<u32>,
    ) -> Vec<u32> {
        assert_eq!(prompt.dims()[0], 1, "generate_greedy takes one sequence");
        let device = prompt.device();
        let mut cache = KvCache::new(self.layers.len());
        let mut out = Vec::new();
        let mut logits = self.forward_embeds(prompt, None, Some(&mut cache));
        while out.len() < max_new {
            let [_, t, v] = logits.dims();
            let last = logits.slice([0..1, t - 1..t, 0..v]).reshape([v]);
            let next = last.argmax(0).into_scalar().elem::<i64>() as u32;
            out.push(next);
            if Some(next) == eos || out.len() == max_new {
                break;
            }
            let ids =
                Tensor::<B, 2, Int>::from_data(TensorData::new(vec![next as i64], [1, 1]), &device);
            logits = self.forward_embeds(self.embed(ids), None, Some(&mut cache));
        }
        out
    }
}

/// True where attention is forbidden: future keys (causal) and padded keys;
/// `[batch or 1, 1, tokens, past + tokens]`. `None` when nothing is masked (one new token,
/// no padding).
fn attention_mask<B: Backend>(
    b: usize,
    t: usize,
    past: usize,
    keep: Option<Tensor<B, 2, Bool>>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let s = past + t;
    let causal: Vec<bool> = (0..t)
        .flat_map(|i| (0..s).map(move |j| j > past + i))
        .collect();
    let causal = Tensor::<B, 4, Bool>::from_data(TensorData::new(causal, [1, 1, t, s]), device);
    match keep {
        None => Some(causal),
        Some(keep) => {
            assert_eq!(
                keep.dims(),
                [b, s],
                "attention mask must be [batch, cached + tokens]"
            );
            let pad = keep.bool_not().reshape([b, 1, 1, s]).expand([b, 1, t, s]);
            Some(causal.expand([b, 1, t, s]).bool_or(pad))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of microsoft/phi-2's config.json that matter here (top-level rope form).
    const PHI2: &str = r#"{"architectures": ["PhiForCausalLM"], "bos_token_id": 50256,
        "eos_token_id": 50256, "hidden_act": "gelu_new", "hidden_size": 2560,
        "intermediate_size": 10240, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
        "model_type": "phi", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 32, "partial_rotary_factor": 0.4, "qk_layernorm": false,
        "rope_scaling": null, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "torch_dtype": "float16", "vocab_size": 51200}"#;

    #[test]
    fn phi2_config_gives_the_design_numbers() {
        let c = PhiConfig::from_hf_json(&serde_json::from_str(PHI2).unwrap()).unwrap();
        assert_eq!((c.head_dim(), c.rotary_dim()), (80, 32));
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
            (2560, 10240, 32)
        );
        assert_eq!((c.eos_token_id, c.pad_token_id), (Some(50256), None));
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        // The same numbers from the `rope_parameters` form.
        let mut v: Value = serde_json::from_str(PHI2).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("partial_rotary_factor");
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0,
                "partial_rotary_factor": 0.4}),
        );
        assert_eq!(PhiConfig::from_hf_json(&v).unwrap(), c);
    }
}

/// The LoRA adapters of one layer (`None` where the linear has none).
#[derive(Module, Debug)]
pub struct LayerAdapters<B: Backend> {
    pub q_proj: Option<LoraAdapter<B>>,
    pub k_proj: Option<LoraAdapter<B>>,
    pub v_proj: Option<LoraAdapter<B>>,
    pub dense: Option<LoraAdapter<B>>,
    pub fc1: Option<LoraAdapter<B>>,
    pub fc2: Option<LoraAdapter<B>>,
}

impl<B: Backend> LayerAdapters<B> {
    /// The adapter slots with their module names, in [`PhiLayer::linears`]' order.
    pub fn slots(&self) -> [(&'static str, &Option<LoraAdapter<B>>); 6] {
        by_linear_name!(&self)
    }

    /// [`Self::slots`], mutable.
    pub fn slots_mut(&mut self) -> [(&'static str, &mut Option<LoraAdapter<B>>); 6] {
        by_linear_name!(&mut self)
    }
}

/// Every adapter of a model, apart from the frozen base: what stage-2 checkpoints save.
#[derive(Module, Debug)]
pub struct PhiAdapters<B: Backend> {
    pub layers: Vec<LayerAdapters<B>>,
}

impl<B: Backend> Phi<B> {
    /// A copy of the adapters (parameter ids kept, so optimizer state still matches).
    pub fn adapters(&self) -> PhiAdapters<B> {
        PhiAdapters {
            layers: self
                .layers
                .iter()
                .map(|l| LayerAdapters {
                    q_proj: l.q_proj.lora.clone(),
                    k_proj: l.k_proj.lora.clone(),
                    v_proj: l.v_proj.lora.clone(),
                    dense: l.dense.lora.clone(),
                    fc1: l.fc1.lora.clone(),
                    fc2: l.fc2.lora.clone(),
                })
                .collect(),
        }
    }

    /// Puts adapters (e.g. loaded from a checkpoint) back into the model.
    pub fn with_adapters(mut self, a: PhiAdapters<B>) -> Self {
        for (l, a) in self.layers.iter_mut().zip(a.layers) {
            l.q_proj.lora = a.q_proj;
            l.k_proj.lora = a.k_proj;
            l.v_proj.lora = a.v_proj;
            l.dense.lora = a.dense;
            l.fc1.lora = a.fc1;
            l.fc2.lora = a.fc2;
        }
        self
    }

    /// Bytes held by the frozen layer weights (NF4-packed or dense), for memory reports.
    /// What the loaded model holds, by part (bytes, each tensor in its dtype).
    pub fn memory(&self) -> ModelMemory {
        fn bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> usize {
            t.dtype().size() * t.shape().num_elements()
        }
        let mut m = ModelMemory {
            dense_other: bytes(&self.embed_tokens.weight.val())
                + bytes(&self.lm_head.weight.val())
                + self.lm_head.bias.as_ref().map_or(0, |b| bytes(&b.val()))
                + ln_bytes(&self.final_layernorm),
            ..Default::default()
        };
        fn ln_bytes<B: Backend>(ln: &LayerNorm<B>) -> usize {
            let g = ln.gamma.val();
            g.dtype().size() * g.shape().num_elements() * (1 + usize::from(ln.beta.is_some()))
        }
        for l in &self.layers {
            m.dense_other += ln_bytes(&l.input_layernorm);
            for (_, x) in l.linears() {
                let w = x.base.weight_bytes();
                if x.base.nf4().is_some() {
                    m.packed_base += w;
                } else {
                    m.dense_base += w;
                }
                m.dense_other += x.base.bias_bytes();
                if let Some(a) = &x.lora {
                    m.adapters += bytes(&a.a.val()) + bytes(&a.b.val());
                }
            }
        }
        m
    }

    pub fn base_linear_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.linears())
            .map(|(_, x)| x.base.memory_bytes())
            .sum()
    }
}
