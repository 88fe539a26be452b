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
//! - [`vlm`], splices image features into token embeddings (the one splice) and LLaVA's forward
//! - [`assembly`], the VLM of an experiment: backbones resolved, projector and LM built, a
//!   run's trained weights loaded
//! - [`tokenizer`], `tokenizer.json` with the LM's special ids
//! - [`probe`], the library side of `harness probe`
//! - [`kernels`], fused CPU kernels (softmax with its statistics, GELU)
//! - [`nf4`], NF4 quantization (bitsandbytes numerics); [`lora`], LoRA / QLoRA linears
//! - [`synth_backbone`], real-size random checkpoints in the hub's exact layout
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

pub mod assembly;
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod jpeg;
pub mod kernels;
pub mod lora;
pub mod nf4;
pub mod peft;
pub mod phi;
pub mod preprocess;
pub mod probe;
pub mod projector;
pub mod synth_backbone;
pub mod tokenizer;
pub mod vlm;

use burn::nn::{Dropout, Linear};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use lora::QLoraBackend;

/// `x w + b` over the last dim, the leading dims flattened into one 2-D matmul. burn's
/// `linear` broadcasts `w` to `[1, .., in, out]` instead: in the backward that reshape of the
/// transposed weight copies the whole weight on the CPU backend (11% of a d-1024 step), and
/// a trainable weight's gradient comes as one product per batch row, summed after.
pub fn linear_flat<B: QLoraBackend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let d_out = w.dims()[1];
    on_rows(x, d_out, b, |x2| B::matmul(x2, w))
}

/// burn's `Dropout::forward` (identity without autodiff or at p = 0; else `x * mask /
/// keep`) with the mask of [`QLoraBackend::bernoulli`]: burn draws it element by element
/// through its distribution sampler, 10-15% of a demo stage-2 step on the CPU.
pub fn dropout<B: QLoraBackend, const D: usize>(d: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) || d.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - d.prob;
    let mask = B::bernoulli(x.dims(), keep, &x.device()).cast(x.dtype());
    x * mask * (1.0 / keep)
}

/// `[.., in]` -> `[n, in]` -> `matmul` (to `[n, out]`) -> `+ b` -> `[.., out]`: the shape
/// work of every linear here, dense ([`linear_flat`]) or NF4-packed.
pub(crate) fn on_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    d_out: usize,
    b: Option<Tensor<B, 1>>,
    matmul: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let n = dims[..D - 1].iter().product();
    let y = matmul(x.reshape([n, dims[D - 1]]));
    let y = match b {
        Some(b) => y + b.unsqueeze(),
        None => y,
    };
    dims[D - 1] = d_out;
    y.reshape(dims)
}

/// [`linear_flat`] for burn's `Linear` modules.
pub trait FlatForward<B: Backend> {
    fn forward_flat<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>;
}

impl<B: QLoraBackend> FlatForward<B> for Linear<B> {
    fn forward_flat<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear_flat(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

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
            Self::GeluTanh => gelu_tanh(x),
        }
    }
}

/// `gelu_new`: `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed as
/// the identical `x * sigmoid(2u)`. burn's `gelu_approximate` takes `powf` and `tanh`, both
/// scalar libm calls on the CPU backend, and autodiff records eight ops; here five
/// elementwise ops and one fused sigmoid (forward and backward).
pub(crate) fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let (a, b3) = GELU_TANH;
    let inner = x.clone() * (x.clone() * x.clone() * b3 + a);
    x * activation::sigmoid(inner)
}

/// `gelu_new`'s `(A, B)` in `x * sigmoid(A x + B x^3)`: `2 sqrt(2/pi)` and
/// `2 sqrt(2/pi) 0.044715`.
pub(crate) const GELU_TANH: (f64, f64) = {
    const A: f64 = 2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
    (A, A * 0.044715)
};

impl Activation {
    /// [`Self::forward`] through the backend's own GELU op where it has one (the LM's MLP:
    /// one fused op on the CPU, and under autodiff one op that keeps only its input).
    pub fn forward_lm<B: lora::QLoraBackend, const D: usize>(
        &self,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self {
            Self::GeluTanh => lora::gelu_lm(x),
            _ => self.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Compute;
    use burn::tensor::Distribution;

    #[test]
    fn gelu_tanh_is_the_tanh_formula() {
        let dev = Default::default();
        let x = Tensor::<Compute, 2>::random([16, 64], Distribution::Normal(0.0, 3.0), &dev);
        let want = activation::gelu_approximate(x.clone());
        let diff: f32 = (gelu_tanh(x) - want).abs().max().into_scalar();
        assert!(diff < 2e-6, "{diff}");
    }

    #[test]
    fn linear_flat_matches_burns_linear_and_its_gradients() {
        use crate::backend::Train;
        let dev = Default::default();
        let r = |s: [usize; 3]| Tensor::<Train, 3>::random(s, Distribution::Default, &dev);
        let x = r([2, 3, 4]).require_grad();
        let w = r([1, 4, 5]).reshape([4, 5]).require_grad();
        let b = r([1, 1, 5]).reshape([5]).require_grad();
        let ours = linear_flat(x.clone(), w.clone(), Some(b.clone()));
        let theirs = burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()));
        let diff: f32 = (ours.clone() - theirs.clone()).abs().max().into_scalar();
        assert!(diff < 1e-6, "forward {diff}");
        // A loss that weighs every output differently, so each gradient entry is checked.
        let weights = r([2, 3, 5]).detach();
        let g1 = (ours * weights.clone()).sum().backward();
        let g2 = (theirs * weights).sum().backward();
        let close = |a: Tensor<Compute, 2>, b: Tensor<Compute, 2>, what: &str| {
            let d: f32 = (a - b).abs().max().into_scalar();
            assert!(d < 1e-6, "{what} {d}");
        };
        let flat = |t: Tensor<Compute, 3>| t.reshape([6, 4]);
        close(flat(x.grad(&g1).unwrap()), flat(x.grad(&g2).unwrap()), "dx");
        close(w.grad(&g1).unwrap(), w.grad(&g2).unwrap(), "dw");
        let row = |t: Tensor<Compute, 1>| t.reshape([1, 5]);
        close(row(b.grad(&g1).unwrap()), row(b.grad(&g2).unwrap()), "db");
    }

    #[test]
    fn the_lms_gelu_op_equals_the_composed_one_and_its_gradient() {
        use crate::backend::Train;
        let dev = Default::default();
        let x = Tensor::<Train, 3>::random([3, 5, 4_000], Distribution::Normal(0.0, 3.0), &dev);
        let w = Tensor::<Train, 3>::random([3, 5, 4_000], Distribution::Default, &dev);
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fused {
                Activation::GeluTanh.forward_lm(x.clone())
            } else {
                gelu_tanh(x.clone())
            };
            let g = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&g).unwrap())
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        let diff = |a: Tensor<Compute, 3>, b: Tensor<Compute, 3>| -> f32 {
            (a - b).abs().max().into_scalar()
        };
        assert!(diff(y1, y2) < 2e-6, "forward");
        assert!(diff(g1, g2) < 2e-6, "gradient");
    }
}
