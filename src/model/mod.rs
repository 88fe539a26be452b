//! Models: the CLIP vision tower, the projector, Phi-2, their assembly, checkpoint loading.
//!
//! Every model follows the Hugging Face checkpoint it loads exactly (DESIGN.md section 2):
//! weights are read from an HF folder unchanged ([`checkpoint`]), configs from its
//! `config.json`, and the parity tests compare against transformers on tiny random models
//! (`scripts/ref_models.py`, fixtures under `tests/fixtures/models/`).
//!
//! - [`clip`], `CLIPVisionModel` (hidden states, LLaVA feature selection)
//! - [`preprocess`], `CLIPImageProcessor` (PIL bicubic resize, crop, normalize, pad-to-square)
//! - [`jpeg`], JPEG decoding bit-exact with libjpeg-turbo (what PIL uses)
//! - [`phi`], `PhiForCausalLM` (partial rotary, parallel block, KV cache)
//! - [`projector`], vision features to LM embeddings (residual MLP or `mlp2x_gelu`)
//! - [`vlm`], splices image features into token embeddings
//! - [`tokenizer`], `tokenizer.json` with the LM's special ids
//! - [`probe`], the library side of `harness probe`
//! - [`nf4`], NF4 quantization (bitsandbytes numerics); [`lora`], LoRA / QLoRA linears
//!
//! How they fit (the names a training loop calls):
//!
//! ```text
//! let (tower, vcfg) = clip::ClipVision::<B>::from_dir(clip_dir, &dev)?;   // frozen
//! let pcfg = preprocess::PreprocessConfig::load(clip_dir)?;               // + pad_to_square
//! let px = preprocess::preprocess(&preprocess::load_image(path)?, &pcfg); // [3, H, W] f32
//! let feats = tower.features(pixels, &clip::FeatureSelect::new());        // [b, patches, dv]
//! let (lm, lcfg) = phi::Phi::<B>::from_dir(phi_dir, &dev)?;               // any dtype file
//! let proj = projector::ProjectorConfig::new(vcfg.hidden_size, lcfg.hidden_size)
//!     .with_depth(2).init::<B>(&dev);
//! // batch with expanded image slots (data::batch::LlavaBatch):
//! let logits = vlm::llava_logits(&lm, &proj, ids, mask, feats, &image_start); // [b, L, V]
//! // or splice at IMAGE_TOKEN markers: vlm::splice(..) then lm.forward_embeds(..)
//! // generation: lm.generate_greedy(prompt_embeds, max_new, tokenizer.eos_id)
//! ```
//!
//! Compute dtype: tensors are created in the device's default float dtype, or in the dtype
//! given to [`checkpoint::Checkpoint::with_dtype`] (bf16 on GPU); f16/bf16/f32 files all load.

pub mod checkpoint;
pub mod clip;
pub mod jpeg;
pub mod lora;
pub mod nf4;
pub mod peft;
pub mod phi;
pub mod preprocess;
pub mod probe;
pub mod projector;
pub mod tokenizer;
pub mod vlm;

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The activations the HF configs name (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU with erf (`gelu`, PyTorch `nn.GELU()`).
    Gelu,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`; Phi).
    GeluTanh,
}

impl Activation {
    pub fn from_hf(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            other => anyhow::bail!("unsupported hidden_act `{other}`"),
        })
    }

    /// The name HF configs use for it.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::QuickGelu => "quick_gelu",
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_new",
        }
    }

    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
        }
    }
}

/// Multi-head scaled dot-product attention on `[batch, heads, tokens, head_dim]` tensors.
/// `mask` is true where attention is *not* allowed, broadcast to `[batch, heads, q, k]`.
/// Softmax rows that are fully masked become uniform instead of NaN (the fill is finite).
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, burn::tensor::Bool>>,
) -> Tensor<B, 4> {
    let head_dim = q.dims()[3];
    let mut scores = q.matmul(k.swap_dims(2, 3)) * (head_dim as f64).powf(-0.5);
    if let Some(mask) = mask {
        // Finite so it survives bf16; far below any real score.
        let mask = mask.expand(scores.dims());
        scores = scores.mask_fill(mask, -1.0e30);
    }
    // Softmax in f32 as HF does (`softmax(..., dtype=float32)`), whatever the compute dtype.
    let dtype = scores.dtype();
    let probs = if dtype == burn::tensor::DType::F32 {
        activation::softmax(scores, 3)
    } else {
        activation::softmax(scores.cast(burn::tensor::DType::F32), 3).cast(dtype)
    };
    probs.matmul(v)
}
