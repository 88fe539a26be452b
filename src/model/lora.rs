//! LoRA adapters on frozen linear layers, the base either full precision or NF4 (QLoRA),
//! DESIGN.md section 3 and issue 5.
//!
//! `y = base(x) + (alpha / r) * B(A(dropout(x)))` with peft's semantics: A starts
//! kaiming-uniform (`a = sqrt(5)`, i.e. uniform in `±1/sqrt(in)`), B starts at zero, so a fresh
//! adapter leaves the base output unchanged; dropout applies to the adapter input only and
//! only while training (burn's `Dropout` is the identity on a backend without autodiff, i.e.
//! after `valid()`).
//!
//! An f32 base is a `Param` so that a Phi trained from scratch (`harness pretrain lm`)
//! trains it; the stages freeze it with `no_grad` ([`crate::model::phi::Phi::freeze_base`]),
//! after which no gradient is kept for it and the optimizer never updates it. An NF4 weight
//! is never a parameter: it is kept packed on the host ([`Nf4Tensor`], ~0.52 byte per weight
//! with double quantization) and dequantized for each forward, and again in the backward
//! pass ([`QLoraBackend`]), so the dequantized copy lives only while one layer computes.
//!
//! Layouts: adapter weights use burn's `[in, out]` convention (`a`: `[in, r]`, `b`:
//! `[r, out]`), the transposes of peft's `lora_A.weight` `[r, in]` and `lora_B.weight`
//! `[out, r]`. The NF4 base is quantized in PyTorch's `[out, in]` order, like bitsandbytes,
//! so its blocks match a bitsandbytes-quantized checkpoint.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::{Initializer, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorCreationOptions, TensorPrimitive};

use super::attention::{
    attention_biased, lean_attention, softmax_grad_ops, softmax_probs_ops, softmax_stats_ops,
};
use super::checkpoint::Checkpoint;
use super::nf4::{Nf4Config, Nf4Tensor};
use super::{linear_flat, on_rows};

/// Phi's LoRA targets by default (issue 5): attention projections and both MLP layers.
pub const PHI_TARGETS: [&str; 6] = crate::config::LORA_TARGETS;

/// Adapter and base settings for stage 2.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    /// r, the adapter rank.
    pub rank: usize,
    /// The adapter output is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter input (training only).
    pub dropout: f64,
    /// Module names that get an adapter, matched against the last component of a module
    /// path (peft's `target_modules` list semantics).
    pub targets: Vec<String>,
    /// How frozen base weights are stored: `None` keeps f32 (`quant = "none"`), `Some`
    /// packs them in NF4.
    pub quant: Option<Nf4Config>,
}

impl Default for LoraConfig {
    /// QLoRA paper defaults: r 64, alpha 16, dropout 0.05, NF4 with double quantization.
    fn default() -> Self {
        Self {
            rank: 64,
            alpha: 16.0,
            dropout: 0.05,
            targets: PHI_TARGETS.iter().map(|s| s.to_string()).collect(),
            quant: Some(Nf4Config::default()),
        }
    }
}

impl LoraConfig {
    /// The adapter settings of an experiment's stage 2 (`quant`, `double_quant`, `lora_*`).
    pub fn from_stage2(s2: &crate::config::Stage2Config) -> Self {
        Self {
            rank: s2.lora_rank.max(0) as usize,
            alpha: s2.lora_alpha,
            dropout: s2.lora_dropout,
            targets: s2.lora_targets.clone(),
            quant: match s2.quant {
                crate::config::Quant::None => None,
                crate::config::Quant::Nf4 => {
                    Some(Nf4Config::default().with_double_quant(s2.double_quant))
                }
            },
        }
    }

    /// No adapters and an f32 base: Phi frozen as in stage 1 (or for probes and parity).
    pub fn frozen() -> Self {
        Self {
            rank: 0,
            alpha: 0.0,
            dropout: 0.0,
            targets: Vec::new(),
            quant: None,
        }
    }

    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the module at `path` (e.g. `model.layers.3.self_attn.q_proj`) gets an adapter.
    pub fn is_target(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        self.rank > 0 && self.targets.iter().any(|t| t == last)
    }
}

/// The base linear layer `y = x W^T + b`: either an f32 weight (a parameter, burn
/// `[in, out]` layout; frozen by `no_grad`) or NF4 codes of PyTorch's `[out, in]` weight
/// kept on the host (always frozen).
#[derive(Module, Debug)]
pub struct FrozenLinear<B: Backend> {
    /// `[in, out]`; `None` when the weight is NF4-packed.
    weight: Option<Param<Tensor<B, 2>>>,
    /// `[out, in]` packed; dequantized on the fly. Shared, so cloning a model (e.g. burn's
    /// `valid()`) does not copy it.
    #[module(skip)]
    nf4: Option<Arc<Nf4Tensor>>,
    /// `[out]`, kept in full precision (as bitsandbytes does).
    bias: Option<Param<Tensor<B, 1>>>,
    d_in: usize,
    d_out: usize,
}

impl<B: Backend> FrozenLinear<B> {
    /// From PyTorch's row-major `[out, in]` weight (as stored in HF checkpoints) and bias.
    pub fn from_torch(
        weight: &[f32],
        bias: Option<&[f32]>,
        d_in: usize,
        d_out: usize,
        quant: Option<&Nf4Config>,
        device: &B::Device,
    ) -> Self {
        assert_eq!(
            weight.len(),
            d_in * d_out,
            "weight is not [{d_out}, {d_in}]"
        );
        let bias = bias.map(|b| {
            assert_eq!(b.len(), d_out, "bias is not [{d_out}]");
            Param::from_tensor(Tensor::<B, 1>::from_data(
                TensorData::new(b.to_vec(), [d_out]),
                device,
            ))
        });
        let (weight, nf4) = match quant {
            Some(cfg) => (
                None,
                Some(Arc::new(Nf4Tensor::quantize(weight, &[d_out, d_in], cfg))),
            ),
            None => {
                // Transposed once here, so the forward reads a contiguous [in, out].
                let mut t = vec![0f32; weight.len()];
                for (o, row) in weight.chunks_exact(d_in).enumerate() {
                    for (i, &v) in row.iter().enumerate() {
                        t[i * d_out + o] = v;
                    }
                }
                let w = Tensor::<B, 2>::from_data(TensorData::new(t, [d_in, d_out]), device);
                (Some(Param::from_tensor(w)), None)
            }
        };
        Self {
            weight,
            nf4,
            bias,
            d_in,
            d_out,
        }
    }

    /// From a burn `Linear` (weight `[in, out]`): its parameters are kept (ids included),
    /// or the weight is NF4-packed.
    pub fn from_linear(lin: Linear<B>, quant: Option<&Nf4Config>) -> Self {
        let [d_in, d_out] = lin.weight.dims();
        let bias = lin.bias;
        match quant {
            None => Self {
                weight: Some(lin.weight),
                nf4: None,
                bias,
                d_in,
                d_out,
            },
            Some(cfg) => {
                // Quantize in PyTorch's [out, in] order so blocks match bitsandbytes.
                let w = lin.weight.val().detach();
                let torch = w.transpose().into_data().convert::<f32>();
                let values = torch.to_vec::<f32>().expect("f32 weight");
                Self {
                    weight: None,
                    nf4: Some(Arc::new(Nf4Tensor::quantize(&values, &[d_out, d_in], cfg))),
                    bias,
                    d_in,
                    d_out,
                }
            }
        }
    }

    /// Loads `{prefix}.weight` `[out, in]` and `{prefix}.bias` from a checkpoint, one tensor
    /// at a time, so a quantized model never holds its full f32 weights.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        quant: Option<&Nf4Config>,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let name = format!("{prefix}.weight");
        // The checkpoint's compute dtype (e.g. bf16 on a GPU) applies to what stays dense;
        // NF4 dequantizes into the input's dtype.
        let (weight, nf4) = match quant {
            // PyTorch's [out, in] order, so blocks match bitsandbytes.
            Some(cfg) => {
                let w = ckpt.read_f32(&name, &[d_out, d_in])?;
                (
                    None,
                    Some(Arc::new(Nf4Tensor::quantize(&w, &[d_out, d_in], cfg))),
                )
            }
            None => {
                let t = ckpt.read_f32_transposed(&name, d_out, d_in)?;
                let w = Tensor::<B, 2>::from_data(TensorData::new(t, [d_in, d_out]), device);
                (Some(Param::from_tensor(cast_to(w, ckpt.dtype))), None)
            }
        };
        let bias = if bias {
            let b = ckpt.read_f32(&format!("{prefix}.bias"), &[d_out])?;
            let b = Tensor::<B, 1>::from_data(TensorData::new(b, [d_out]), device);
            Some(Param::from_tensor(cast_to(b, ckpt.dtype)))
        } else {
            None
        };
        Ok(Self {
            weight,
            nf4,
            bias,
            d_in,
            d_out,
        })
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The packed weight, if NF4.
    pub fn nf4(&self) -> Option<&Nf4Tensor> {
        self.nf4.as_deref()
    }

    /// An NF4 weight dequantized once on the host into a dense f32 one (the reference the
    /// packed path is checked against); a dense weight is returned as it is.
    pub fn dequantized(self, device: &B::Device) -> Self {
        let Some(q) = &self.nf4 else { return self };
        let bias = self.bias.as_ref().map(|b| {
            b.val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 bias")
        });
        Self::from_torch(
            &q.dequantize(),
            bias.as_deref(),
            self.d_in,
            self.d_out,
            None,
            device,
        )
    }

    /// The weight as a `[in, out]` tensor on `device` in `dtype` (dequantized if NF4).
    pub fn weight(&self, device: &B::Device, dtype: DType) -> Tensor<B, 2> {
        match (&self.weight, &self.nf4) {
            (Some(w), _) => w.val(),
            (None, Some(q)) => dequantized::<B>(q, device, dtype).transpose(),
            (None, None) => unreachable!("a frozen linear has a weight"),
        }
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<Tensor<B, 1>> {
        self.bias.as_ref().map(|b| b.val())
    }

    /// Bytes held by the base weight and bias on the host or device, each in its dtype.
    pub fn memory_bytes(&self) -> usize {
        self.weight_bytes() + self.bias_bytes()
    }

    /// Bytes of the weight alone: packed when NF4, else dense in its dtype.
    pub fn weight_bytes(&self) -> usize {
        match (&self.nf4, &self.weight) {
            (Some(q), _) => q.memory_bytes(),
            (None, Some(w)) => w.val().dtype().size() * self.d_in * self.d_out,
            (None, None) => 0,
        }
    }

    /// Bytes of the bias (dense in its dtype, as bitsandbytes keeps it).
    pub fn bias_bytes(&self) -> usize {
        self.bias
            .as_ref()
            .map_or(0, |b| b.val().dtype().size() * self.d_out)
    }
}

impl<B: QLoraBackend> FrozenLinear<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // Constants follow the input's dtype (a no-op when they already match, e.g. loaded
        // with the checkpoint's compute dtype).
        let dtype = x.dtype();
        let bias = self.bias.as_ref().map(|b| b.val().cast(dtype));
        let Some(q) = &self.nf4 else {
            let w = self.weight.as_ref().expect("a frozen linear has a weight");
            return linear_flat(x, w.val().cast(dtype), bias);
        };
        on_rows(x, self.d_out, bias, |x2| {
            let y = B::nf4_matmul(x2.into_primitive().tensor(), q.clone());
            Tensor::from_primitive(TensorPrimitive::Float(y))
        })
    }
}

/// Backends that multiply by an NF4-packed weight. The provided method dequantizes and
/// multiplies; the autodiff implementation keeps only the packed weight (an `Arc`) for the
/// backward pass and dequantizes again there, so a training step never holds the
/// dequantized base weights of all layers at once (burn's own matmul would save the f32 /
/// bf16 weight for `dL/dx`). Implemented for the build's compute backend and its autodiff
/// wrapper; another backend opts in with an empty `impl`.
///
/// It carries the LM's other op with a training form of its own: attention, which under
/// autodiff keeps no `[tokens, tokens]` matrix for the backward ([`lean_attention`]).
pub trait QLoraBackend: Backend {
    /// `x` `[n, in]` times the transpose of the packed `[out, in]` weight: `[n, out]`.
    fn nf4_matmul(x: FloatTensor<Self>, w: Arc<Nf4Tensor>) -> FloatTensor<Self> {
        let x = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(x));
        let wt = dequantized::<Self>(&w, &x.device(), x.dtype()).transpose();
        Self::matmul(x, wt).into_primitive().tensor()
    }

    /// `lhs @ rhs` over the last two dims; the batch dims must be equal (no broadcasting).
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        lhs.matmul(rhs)
    }

    /// A dropout mask: 1 with probability `keep`, else 0 (f32, untracked), drawn from the
    /// backend's seeded generator (so reseeding it redraws the same mask).
    fn bernoulli<const D: usize>(
        shape: [usize; D],
        keep: f64,
        device: &Self::Device,
    ) -> Tensor<Self, D> {
        Tensor::random(shape, burn::tensor::Distribution::Bernoulli(keep), device)
    }

    /// Attention on `[batch, heads, tokens, head_dim]` with an additive mask bias.
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
    ) -> Tensor<Self, 4> {
        attention_biased(q, k, v, bias)
    }

    /// The softmax over the last dim of the scores `raw * scale + bias`, in f32, with each
    /// row's max and log-sum-exp (`[.., q, 1]`): the forward of [`lean_attention`].
    fn softmax_stats(
        raw: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
    ) -> [Tensor<Self, 4>; 3] {
        softmax_stats_ops(raw, bias, scale)
    }

    /// The probabilities again from [`Self::softmax_stats`]' max and log-sum-exp.
    fn softmax_probs(
        raw: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
        scale: f64,
        stats: [Tensor<Self, 4>; 2],
    ) -> Tensor<Self, 4> {
        softmax_probs_ops(raw, bias, scale, stats)
    }

    /// The softmax backward (f32), times the scores' scale: `scale * p (dp - rowsum(p dp))`.
    fn softmax_grad(p: Tensor<Self, 4>, dp: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
        softmax_grad_ops(p, dp, scale)
    }

    /// Phi's `gelu_new` on a flattened tensor (see [`gelu_lm`] for any rank).
    fn gelu_tanh(x: Tensor<Self, 1>) -> Tensor<Self, 1> {
        super::gelu_tanh(x)
    }

    /// `dy * gelu_new'(x)`: the backward of [`Self::gelu_tanh`] as its own op.
    fn gelu_tanh_grad(x: Tensor<Self, 1>, dy: Tensor<Self, 1>) -> Tensor<Self, 1> {
        gelu_tanh_grad_ops(x, dy)
    }
}

/// `gelu_new'(x) dy = (s + x s (1 - s) (A + 3 B x^2)) dy` with `s = sigmoid(A x + B x^3)`
/// ([`super::gelu_tanh`]'s constants), by tensor ops.
pub(crate) fn gelu_tanh_grad_ops<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    dy: Tensor<B, D>,
) -> Tensor<B, D> {
    let (a, b3) = super::GELU_TANH;
    let s = burn::tensor::activation::sigmoid(x.clone() * (x.clone() * x.clone() * b3 + a));
    let du = x.clone() * x.clone() * (3.0 * b3) + a;
    let one_minus = s.clone().neg() + 1.0;
    (s.clone() + x * s * one_minus * du) * dy
}

/// [`QLoraBackend::gelu_tanh`] at any rank (flattened and back: views, no copies).
pub fn gelu_lm<B: QLoraBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let n: usize = dims.iter().product();
    B::gelu_tanh(x.reshape([n])).reshape(dims)
}

fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: Option<DType>) -> Tensor<B, D> {
    match dtype {
        Some(dt) => t.cast(dt),
        None => t,
    }
}

/// The packed `[out, in]` weight as a tensor. On the CPU the host loop is the device; on a
/// GPU the weight is unpacked there ([`dequantized_on_device`]), so a pass moves no
/// full-size weight across the bus.
///
/// `HARNESS_NF4_DEQUANT=host|device` overrides the default (device on a GPU, host on the
/// CPU): the device path has not run on a GPU yet, so `host` is the way back if it fails
/// there, and `device` runs it on the CPU backend for checks.
fn dequantized<B: Backend>(w: &Nf4Tensor, device: &B::Device, dtype: DType) -> Tensor<B, 2> {
    static ON_DEVICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on_device =
        *ON_DEVICE.get_or_init(|| match std::env::var("HARNESS_NF4_DEQUANT").as_deref() {
            Ok("host") => false,
            Ok("device") => true,
            Ok(other) => panic!("HARNESS_NF4_DEQUANT is `host` or `device`, not `{other}`"),
            Err(_) => cfg!(feature = "cuda"),
        });
    if on_device && w.numel().is_multiple_of(w.blocksize) {
        return dequantized_on_device(w, device, dtype);
    }
    let data = TensorData::new(w.dequantize(), [w.shape[0], w.shape[1]]);
    Tensor::from_data(
        data,
        TensorCreationOptions::new(device.clone()).with_dtype(dtype),
    )
}

/// An NF4 weight resident on `B`'s device: the packed codes (u8, two per byte, as on the
/// host), the first-level absmax (f32, double quantization resolved once) and the code book.
struct Nf4OnDevice<B: Backend> {
    codes: Tensor<B, 1, Int>,
    absmax: Tensor<B, 1>,
    book: Tensor<B, 1>,
}

/// [`Nf4Tensor::dequantize`] by tensor ops on `device`: codes and scales are uploaded on first
/// use and kept (0.56 bytes a weight), then each call unpacks the nibbles, looks the codes up
/// and scales each block. Same f32 products as the host loop.
pub(crate) fn dequantized_on_device<B: Backend>(
    w: &Nf4Tensor,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 2> {
    let (n, bs) = (w.numel(), w.blocksize);
    assert!(
        n.is_multiple_of(bs),
        "{n} weights are not whole blocks of {bs}"
    );
    let on = w
        .device_copy
        .get_or_init(format!("{device:?}"), || Nf4OnDevice::<B> {
            codes: Tensor::from_data(
                TensorData::new(w.codes.clone(), [w.codes.len()]),
                TensorCreationOptions::new(device.clone()).with_dtype(DType::U8),
            ),
            absmax: Tensor::from_data(TensorData::new(w.absmax(), [n / bs]), device),
            book: Tensor::from_data(TensorData::new(super::nf4::NF4_CODE.to_vec(), [16]), device),
        });
    let codes = on.codes.clone().cast(DType::I32);
    // Element 2k is the high nibble, 2k + 1 the low one.
    let hi = codes.clone().div_scalar(16);
    let lo = codes.remainder_scalar(16);
    let idx = Tensor::stack::<2>(vec![hi, lo], 1).reshape([n]);
    let values = on.book.clone().select(0, idx).reshape([n / bs, bs]);
    let w2 = values * on.absmax.clone().reshape([n / bs, 1]);
    w2.reshape([w.shape[0], w.shape[1]]).cast(dtype)
}

/// On a GPU every op keeps its default; the CPU build's fused kernels are in [`super::kernels`].
#[cfg(feature = "cuda")]
impl QLoraBackend for crate::backend::Compute {}

impl<B: QLoraBackend, C: CheckpointStrategy> QLoraBackend for Autodiff<B, C> {
    fn attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 4>>,
    ) -> Tensor<Self, 4> {
        lean_attention(q, k, v, bias)
    }

    /// One op under autodiff: keeps `x` alone for the backward (the composed form keeps
    /// four intermediates), which is [`QLoraBackend::gelu_tanh_grad`] on the inner backend.
    fn gelu_tanh(x: Tensor<Self, 1>) -> Tensor<Self, 1> {
        #[derive(Debug)]
        struct Gelu;

        impl<B: QLoraBackend> Backward<B, 1> for Gelu {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let x = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(ops.state));
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    let dy = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(grad));
                    B::gelu_tanh_grad(x, dy).into_primitive().tensor()
                });
            }
        }

        let xi = x.clone().inner();
        let y = B::gelu_tanh(xi.clone()).into_primitive().tensor();
        let node = x.into_primitive().tensor().node;
        let out = match Gelu.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(xi.into_primitive().tensor(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn bernoulli<const D: usize>(
        shape: [usize; D],
        keep: f64,
        device: &Self::Device,
    ) -> Tensor<Self, D> {
        Tensor::from_inner(B::bernoulli(shape, keep, device))
    }

    /// The inner backend's [`QLoraBackend::matmul`] forward and backward (burn's autodiff
    /// matmul would call the inner backend's plain matmul for both). Broadcast batch dims
    /// take burn's op.
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        #[derive(Debug)]
        struct Matmul<const D: usize>;

        impl<B: QLoraBackend, const D: usize> Backward<B, 2> for Matmul<D> {
            /// `lhs` when `rhs` needs a gradient, `rhs` when `lhs` does.
            type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (lhs, rhs) = ops.state;
                let t = |p: Option<FloatTensor<B>>| {
                    Tensor::<B, D>::from_primitive(TensorPrimitive::Float(p.expect("kept")))
                        .swap_dims(D - 2, D - 1)
                };
                let g = |p| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(p));
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |grad| B::matmul(g(grad), t(rhs)).into_primitive().tensor(),
                    |grad| B::matmul(t(lhs), g(grad)).into_primitive().tensor(),
                );
            }
        }

        let (ld, rd) = (lhs.dims(), rhs.dims());
        if D < 2 || ld[..D - 2] != rd[..D - 2] {
            return lhs.matmul(rhs);
        }
        let (l, r) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
        let (l_tracked, r_tracked) = (l.is_tracked(), r.is_tracked());
        let y = |l: FloatTensor<B>, r: FloatTensor<B>| {
            let f = |p| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(p));
            B::matmul(f(l), f(r)).into_primitive().tensor()
        };
        let out = match Matmul::<D>
            .prepare::<C>([l.node.clone(), r.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    r_tracked.then(|| l.primitive.clone()),
                    l_tracked.then(|| r.primitive.clone()),
                );
                prep.finish(state, y(l.primitive, r.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(y(l.primitive, r.primitive)),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    fn nf4_matmul(x: FloatTensor<Self>, w: Arc<Nf4Tensor>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Nf4Matmul;

        impl<B: QLoraBackend> Backward<B, 1> for Nf4Matmul {
            /// The packed weight, not its dequantized copy.
            type State = Arc<Nf4Tensor>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let w = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    // dL/dx = dL/dy W, with W dequantized again here.
                    let g = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grad));
                    let wm = dequantized::<B>(&w, &g.device(), g.dtype());
                    B::matmul(g, wm).into_primitive().tensor()
                });
            }
        }

        match Nf4Matmul
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(w.clone(), B::nf4_matmul(x.primitive, w)),
            OpsKind::UnTracked(prep) => prep.finish(B::nf4_matmul(x.primitive, w)),
        }
    }
}

/// The trainable part: `scaling * B(A(dropout(x)))`.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[in, r]` (peft's `lora_A.weight` transposed).
    pub a: Param<Tensor<B, 2>>,
    /// `[r, out]` (peft's `lora_B.weight` transposed).
    pub b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    pub scaling: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter: A kaiming-uniform like peft, B zero.
    pub fn init(d_in: usize, d_out: usize, cfg: &LoraConfig, device: &B::Device) -> Self {
        // kaiming_uniform_(a=sqrt(5)) on [r, in]: gain sqrt(2/6), bound gain*sqrt(3/in).
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([d_in, cfg.rank], device),
            b: Initializer::Zeros.init([cfg.rank, d_out], device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scaling: cfg.scaling(),
        }
    }

    /// From peft's row-major `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`.
    pub fn from_peft(
        lora_a: &[f32],
        lora_b: &[f32],
        d_in: usize,
        d_out: usize,
        cfg: &LoraConfig,
        device: &B::Device,
    ) -> Self {
        let r = cfg.rank;
        assert_eq!(lora_a.len(), r * d_in, "lora_A is not [{r}, {d_in}]");
        assert_eq!(lora_b.len(), d_out * r, "lora_B is not [{d_out}, {r}]");
        let t = |v: &[f32], rows, cols| {
            Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device).transpose()
        };
        Self {
            a: Param::from_tensor(t(lora_a, r, d_in)),
            b: Param::from_tensor(t(lora_b, d_out, r)),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scaling: cfg.scaling(),
        }
    }

    /// The same adapter with gradients on (after the model around it was frozen).
    pub fn trainable(self) -> Self {
        Self {
            a: self.a.set_require_grad(true),
            b: self.b.set_require_grad(true),
            ..self
        }
    }

    /// peft's `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`, row-major.
    pub fn to_peft(&self) -> (Vec<f32>, Vec<f32>) {
        let v = |t: Tensor<B, 2>| {
            t.transpose()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 adapter")
        };
        (v(self.a.val()), v(self.b.val()))
    }
}

impl<B: QLoraBackend> LoraAdapter<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // A and B keep their own dtype (f32 master weights) whatever the compute dtype: the
        // input is cast in and the output back (no-ops when they agree).
        let dtype = x.dtype();
        let x = x.cast(self.a.val().dtype());
        let h = linear_flat(super::dropout(&self.dropout, x), self.a.val(), None);
        (linear_flat(h, self.b.val(), None) * self.scaling).cast(dtype)
    }
}

/// A frozen linear layer with an optional LoRA adapter: the drop-in for Phi's targets.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub base: FrozenLinear<B>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    /// Wraps a base; adds a fresh adapter when `path` is one of `cfg`'s targets.
    pub fn new(base: FrozenLinear<B>, path: &str, cfg: &LoraConfig, device: &B::Device) -> Self {
        let lora = cfg
            .is_target(path)
            .then(|| LoraAdapter::init(base.d_in(), base.d_out(), cfg, device));
        Self { base, lora }
    }

    /// A Phi-style linear from a checkpoint: base frozen (NF4 when `cfg.quant` is set),
    /// adapter when `prefix` is a target.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        cfg: &LoraConfig,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let base = FrozenLinear::load(ckpt, prefix, d_in, d_out, true, cfg.quant.as_ref(), device)?;
        Ok(Self::new(base, prefix, cfg, device))
    }

    /// Replaces an NF4 base by its host-dequantized f32 weight ([`FrozenLinear::dequantized`]).
    pub fn dequantize_base(&mut self, device: &B::Device) {
        let empty = FrozenLinear {
            weight: None,
            nf4: None,
            bias: None,
            d_in: 0,
            d_out: 0,
        };
        let base = std::mem::replace(&mut self.base, empty);
        self.base = base.dequantized(device);
    }

    /// Converts an already-loaded burn `Linear` (e.g. a field of Phi) at `path`.
    pub fn from_linear(lin: Linear<B>, path: &str, cfg: &LoraConfig) -> Self {
        let device = lin.weight.device();
        let base = FrozenLinear::from_linear(lin, cfg.quant.as_ref());
        Self::new(base, path, cfg, &device)
    }
}

impl<B: QLoraBackend> LoraLinear<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lora {
            None => self.base.forward(x),
            Some(l) => self.base.forward(x.clone()) + l.forward(x),
        }
    }
}

/// Module paths of Phi's linears that are LoRA targets under `cfg`, in load order
/// (`model.layers.{i}.self_attn.{q_proj,k_proj,v_proj,dense}`, `model.layers.{i}.mlp.{fc1,fc2}`).
pub fn phi_target_paths(num_layers: usize, cfg: &LoraConfig) -> Vec<String> {
    (0..num_layers)
        .flat_map(|i| {
            let p = format!("model.layers.{i}");
            [
                format!("{p}.self_attn.q_proj"),
                format!("{p}.self_attn.k_proj"),
                format!("{p}.self_attn.v_proj"),
                format!("{p}.self_attn.dense"),
                format!("{p}.mlp.fc1"),
                format!("{p}.mlp.fc2"),
            ]
        })
        .filter(|path| cfg.is_target(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Compute;

    /// The GPU path, run on the CPU backend: bitwise the host loop, with and without double
    /// quantization, on first use and when the device copy is reused.
    #[test]
    fn device_dequantization_equals_the_host_loop() {
        let dev = Default::default();
        // Blocks of different magnitudes, so every block has its own scale.
        let values: Vec<f32> = (0..96 * 64)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i / 64) as f32)
            .collect();
        for double_quant in [false, true] {
            let cfg = Nf4Config::default().with_double_quant(double_quant);
            let q = Nf4Tensor::quantize(&values, &[96, 64], &cfg);
            let host = q.dequantize();
            for _ in 0..2 {
                let got = dequantized_on_device::<Compute>(&q, &dev, DType::F32);
                assert_eq!(got.dims(), [96, 64]);
                assert_eq!(got.into_data().to_vec::<f32>().unwrap(), host);
            }
        }
    }
}
