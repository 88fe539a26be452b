//! Scaled dot-product attention on `[batch, heads, tokens, head_dim]` tensors, with the
//! mask as an additive bias, and its training form that keeps no `[tokens, tokens]` matrix
//! for the backward pass.
//!
//! The plain form ([`attention_biased`]) is burn's ops composed: under autodiff every score,
//! exponential and probability matrix of every layer stays alive until the backward pass (in
//! f32 beside the bf16 scores on a GPU), which at Phi-2's batch 16 x 512 tokens is ~1 GB a
//! layer. [`lean_attention`] is one autodiff op instead: the forward keeps `q`, `k`, `v` and
//! each row's log-sum-exp, and the backward recomputes the probabilities from them, as
//! FlashAttention's backward does (with whole matrices, one layer at a time, not tiles).
//! Its softmax steps go through [`QLoraBackend`] (`softmax_stats`, `softmax_probs`,
//! `softmax_grad`): burn's ops by default, one fused pass each on the CPU
//! ([`super::kernels`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorPrimitive};

use super::lora::QLoraBackend;

/// Multi-head scaled dot-product attention on `[batch, heads, tokens, head_dim]` tensors.
/// `mask` is true where attention is *not* allowed, broadcast to `[batch, heads, q, k]`.
/// Softmax rows that are fully masked become uniform instead of NaN (the fill is finite).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, burn::tensor::Bool>>,
) -> Tensor<B, 4> {
    let [b, h, t, _] = q.dims();
    let s = k.dims()[2];
    let bias = mask.map(|m| mask_bias(m, [b, h, t, s], q.dtype()));
    attention_biased(q, k, v, bias)
}

/// The additive form of an attention mask (true = forbidden), materialised at the scores'
/// full shape `[batch, heads, q, k]`: `-1e30` where forbidden, 0 elsewhere. Adding it gives
/// the same softmax as filling the scores (a real score vanishes beside -1e30 in f32 and in
/// bf16, and a fully masked row stays uniform), and at the full shape the add is a plain
/// contiguous one: on the CPU backend a broadcast over heads, or a masked fill, walks the
/// scores element by element, forward and again backward. Phi builds it once per forward
/// for all its layers; [`attention`] builds it per call.
pub fn mask_bias<B: Backend>(
    mask: Tensor<B, 4, burn::tensor::Bool>,
    shape: [usize; 4],
    dtype: burn::tensor::DType,
) -> Tensor<B, 4> {
    Tensor::<B, 4>::zeros(shape, &mask.device())
        .cast(dtype)
        .mask_fill(mask.expand(shape), -1.0e30)
}

/// [`attention`] with the mask already in [`mask_bias`] form.
pub fn attention_biased<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let head_dim = q.dims()[3];
    let mut scores = q.matmul(k.swap_dims(2, 3)) * (head_dim as f64).powf(-0.5);
    if let Some(bias) = bias {
        scores = scores + bias;
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

/// Softmax in f32 as HF does (`softmax(..., dtype=float32)`), whatever the compute dtype,
/// of the scores `raw * scale + bias`: the probabilities in f32, and each row's max and
/// log-sum-exp of the shifted scores (`[.., q, 1]` each) that the backward rebuilds them
/// from. Kept apart, not summed: in a fully masked row the max is -1e30 and `max + ln(n)`
/// would round the `ln(n)` away. Composed of burn's ops: the default of
/// [`QLoraBackend::softmax_stats`], which the CPU build fuses.
pub(crate) fn softmax_stats_ops<B: Backend>(
    raw: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> [Tensor<B, 4>; 3] {
    let s = scaled(raw, bias, scale).cast(DType::F32);
    let max = s.clone().max_dim(3);
    let e = (s - max.clone()).exp();
    let sum = e.clone().sum_dim(3);
    [e / sum.clone(), max, sum.log()]
}

/// The probabilities again from [`softmax_stats_ops`]' row statistics (f32).
pub(crate) fn softmax_probs_ops<B: Backend>(
    raw: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
    [max, lse]: [Tensor<B, 4>; 2],
) -> Tensor<B, 4> {
    (scaled(raw, bias, scale).cast(DType::F32) - max - lse).exp()
}

/// The softmax backward in f32, times the scores' scale: `scale * P (dP - rowsum(P dP))`.
pub(crate) fn softmax_grad_ops<B: Backend>(
    p: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    let row = (p.clone() * dp.clone()).sum_dim(3);
    p * (dp - row) * scale
}

fn scaled<B: Backend>(raw: Tensor<B, 4>, bias: Option<Tensor<B, 4>>, scale: f64) -> Tensor<B, 4> {
    let s = raw * scale;
    match bias {
        Some(b) => s + b,
        None => s,
    }
}

/// [`attention_biased`] as one autodiff op on `Autodiff<B>`: same forward values (the
/// softmax through its log-sum-exp), and a backward that recomputes the probabilities
/// instead of keeping them. `bias` is a constant (the mask); no gradient flows into it.
pub fn lean_attention<B: QLoraBackend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<B, C>, 4>,
    k: Tensor<Autodiff<B, C>, 4>,
    v: Tensor<Autodiff<B, C>, 4>,
    bias: Option<Tensor<Autodiff<B, C>, 4>>,
) -> Tensor<Autodiff<B, C>, 4> {
    #[derive(Debug)]
    struct Lean;

    /// `q`, `k`, `v`, the bias, and the rows' max and log-sum-exp, on the inner backend.
    type State<B> = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        Option<FloatTensor<B>>,
        (FloatTensor<B>, FloatTensor<B>),
    );

    impl<B: QLoraBackend> Backward<B, 3> for Lean {
        type State = State<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let t = |p: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(p));
            let (q, k, v, bias, (max, lse)) = ops.state;
            let (q, k, v, max, lse) = (t(q), t(k), t(v), t(max), t(lse));
            let bias = bias.map(t);
            let d_o = t(grads.consume::<B>(&ops.node));
            let dtype = q.dtype();
            let scale = (q.dims()[3] as f64).powf(-0.5);
            // P again, from the scores and the saved row statistics (f32).
            let raw = B::matmul(q.clone(), k.clone().swap_dims(2, 3));
            let p = B::softmax_probs(raw, bias, scale, [max, lse]);
            let dv = B::matmul(p.clone().cast(dtype).swap_dims(2, 3), d_o.clone());
            let dp = B::matmul(d_o, v.swap_dims(2, 3)).cast(DType::F32);
            // Softmax backward: dS = scale P (dP - rowsum(P dP)).
            let ds = B::softmax_grad(p, dp, scale).cast(dtype);
            let dq = B::matmul(ds.clone(), k);
            let dk = B::matmul(ds.swap_dims(2, 3), q);
            let [pq, pk, pv] = ops.parents;
            for (parent, g) in [(pq, dq), (pk, dk), (pv, dv)] {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, g.into_primitive().tensor());
                }
            }
        }
    }

    let inner = |x: &Tensor<Autodiff<B, C>, 4>| x.clone().inner();
    let (qi, ki, vi) = (inner(&q), inner(&k), inner(&v));
    let bi = bias.as_ref().map(inner);
    let dtype = qi.dtype();
    let scale = (qi.dims()[3] as f64).powf(-0.5);
    let raw = B::matmul(qi.clone(), ki.clone().swap_dims(2, 3));
    let [p, max, lse] = B::softmax_stats(raw, bi.clone(), scale);
    let out = B::matmul(p.cast(dtype), vi.clone());
    let prim = |x: Tensor<Autodiff<B, C>, 4>| x.into_primitive().tensor();
    let nodes = [q, k, v].map(|x| prim(x).node);
    let out = out.into_primitive().tensor();
    let y = match Lean.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let pr = |x: Tensor<B, 4>| x.into_primitive().tensor();
            let state = (pr(qi), pr(ki), pr(vi), bi.map(pr), (pr(max), pr(lse)));
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Compute, Train};
    use burn::tensor::{Bool, Distribution, TensorData};

    #[test]
    fn mask_bias_gives_the_masked_softmax_and_uniform_fully_masked_rows() {
        let dev = Default::default();
        let r = |s: [usize; 4]| Tensor::<Compute, 4>::random(s, Distribution::Default, &dev);
        let (q, k, v) = (r([2, 3, 4, 5]), r([2, 3, 4, 5]), r([2, 3, 4, 5]));
        // Row 1 of batch 0 may attend to nothing; otherwise key j > query i is forbidden.
        let m: Vec<bool> = (0..2 * 4 * 4)
            .map(|n| {
                let (b, i, j) = (n / 16, (n / 4) % 4, n % 4);
                j > i || (b == 0 && i == 1)
            })
            .collect();
        let mask = Tensor::<Compute, 4, Bool>::from_data(TensorData::new(m, [2, 1, 4, 4]), &dev);
        let got = attention(q.clone(), k.clone(), v.clone(), Some(mask.clone()));
        let scores = q.matmul(k.swap_dims(2, 3)) / (5f64).sqrt();
        let probs = activation::softmax(scores.mask_fill(mask.expand([2, 3, 4, 4]), -1e30), 3);
        let want = probs.matmul(v.clone());
        let diff: f32 = (got.clone() - want).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
        // The fully masked row averages every value.
        let row = got.slice([0..1, 0..3, 1..2, 0..5]);
        let mean = v.slice([0..1, 0..3, 0..4, 0..5]).mean_dim(2);
        let diff: f32 = (row - mean).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn lean_attention_equals_the_composed_ops_and_their_gradients() {
        let dev = Default::default();
        let r = |s: [usize; 4]| Tensor::<Train, 4>::random(s, Distribution::Default, &dev);
        let (q, k, v) = (r([2, 3, 5, 4]), r([2, 3, 5, 4]), r([2, 3, 5, 4]));
        // Causal plus one padded key in batch 1, at the scores' full shape as Phi builds it.
        let m: Vec<bool> = (0..2 * 5 * 5)
            .map(|n| {
                let (b, i, j) = (n / 25, (n / 5) % 5, n % 5);
                j > i || (b == 1 && j == 0)
            })
            .collect();
        let mask = Tensor::<Train, 4, Bool>::from_data(TensorData::new(m, [2, 1, 5, 5]), &dev);
        let bias = mask_bias(mask, [2, 3, 5, 5], q.dtype());
        let w = r([2, 3, 5, 4]).detach();
        let run = |lean: bool| {
            let (q, k, v) = (
                q.clone().detach().require_grad(),
                k.clone().detach().require_grad(),
                v.clone().detach().require_grad(),
            );
            let o = if lean {
                lean_attention(q.clone(), k.clone(), v.clone(), Some(bias.clone()))
            } else {
                attention_biased(q.clone(), k.clone(), v.clone(), Some(bias.clone()))
            };
            let g = (o.clone() * w.clone()).sum().backward();
            let grads = [&q, &k, &v].map(|x| x.grad(&g).unwrap());
            (o.inner(), grads)
        };
        let ((o1, g1), (o2, g2)) = (run(true), run(false));
        let diff = |a: Tensor<Compute, 4>, b: Tensor<Compute, 4>| -> f32 {
            (a - b).abs().max().into_scalar()
        };
        assert!(diff(o1, o2) < 1e-6, "forward");
        let ds: Vec<f32> = g1.into_iter().zip(g2).map(|(a, b)| diff(a, b)).collect();
        assert!(ds.iter().all(|&d| d < 1e-5), "dq, dk, dv: {ds:?}");
    }
}
