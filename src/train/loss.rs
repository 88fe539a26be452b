//! The masked next-token loss: position t predicts label t+1; labels of -100 (image slots,
//! prompts, padding) are ignored; the mean is over the target tokens of the batch, as
//! PyTorch's `CrossEntropyLoss(ignore_index=-100)` computes it in HF's causal LM loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

pub use crate::data::batch::Targets;
use crate::data::sequence::IGNORE;

/// Mean cross-entropy over target tokens, and their count, from the logits of every
/// position (the form HF computes; training takes [`summed_loss_at`], which applies the
/// head only where a target is).
pub fn masked_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, usize) {
    let keep = labels.clone().slice_dim(1, 1..).not_equal_elem(IGNORE);
    let count = keep.int().sum().into_scalar().elem::<i64>() as usize;
    let loss = summed_lm_loss(logits, labels) / (count.max(1) as f64);
    (loss, count)
}

/// The cross-entropy summed over the target tokens (no host read): the training loop
/// divides by the target count of the whole global batch, which it knows from the host
/// labels, so micro-batches and workers weigh every token alike.
pub fn summed_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, l, v] = logits.dims();
    // In f32 whatever the compute dtype, as HF upcasts logits before the loss.
    let logits = logits
        .cast(burn::tensor::DType::F32)
        .slice([0..b, 0..l - 1, 0..v]);
    let labels = labels.slice([0..b, 1..l]);
    let keep = labels.clone().not_equal_elem(IGNORE);
    let safe = labels.mask_fill(keep.clone().bool_not(), 0);
    let logp = log_softmax(logits, 2);
    let picked = logp
        .gather(2, safe.unsqueeze_dim::<3>(2))
        .reshape([b, l - 1]);
    (picked * keep.float()).sum().neg()
}

/// [`summed_lm_loss`] from the last layer's output `hidden` `[b, L, d]` at the batch's
/// targets `t`, with `head` (final norm, `lm_head`) applied only at the positions that
/// predict a target: the same loss and gradients without the logits of image, prompt and
/// padding positions, which the loss ignores (at stage 1 about half the head's work and of
/// the `[b, L, vocab]` logits' memory; HF computes them all).
pub fn summed_loss_at<B: Backend>(
    hidden: Tensor<B, 3>,
    head: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
    t: &Targets,
) -> Tensor<B, 1> {
    let [b, l, d] = hidden.dims();
    let n = t.ids.len();
    if n == 0 {
        // Nothing to learn from: a zero that still depends on every input (zero gradients).
        return hidden.sum() * 0.0;
    }
    let device = hidden.device();
    let int = |v: Vec<i64>, shape: [usize; 1]| {
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, shape), &device)
    };
    let picked = hidden
        .reshape([b * l, d])
        .select(0, int(t.positions.clone(), [n]))
        .reshape([1, n, d]);
    let logits = head(picked);
    let v = logits.dims()[2];
    // In f32 whatever the compute dtype, as HF upcasts logits before the loss.
    let logp = log_softmax(logits.cast(burn::tensor::DType::F32).reshape([n, v]), 1);
    logp.gather(1, int(t.ids.clone(), [n]).reshape([n, 1]))
        .sum()
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::backend::Compute;

    #[test]
    fn matches_hand_computed_cross_entropy() {
        let dev = Default::default();
        // One row, three positions, vocab 2; only label at position 2 counts.
        let logits = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 0.0, 5.0, 5.0], [1, 3, 2]),
            &dev,
        );
        let labels =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![-100i64, -100, 1], [1, 3]), &dev);
        // The logits themselves are the hidden states, the head the identity.
        let t = Targets::of(&labels);
        let n = t.ids.len();
        let loss = summed_loss_at(logits, |x| x, &t) / n as f64;
        assert_eq!(n, 1);
        // Position 1 predicts label 1: logits [2, 0] -> -log softmax[1].
        let expect = -(0f64 - (2f64.exp() + 1.0).ln());
        assert!((loss.into_scalar().elem::<f64>() - expect).abs() < 1e-6);
    }

    #[test]
    fn the_loss_at_target_positions_equals_the_loss_over_all_logits_and_its_gradient() {
        use crate::backend::Train;
        use burn::tensor::Distribution;
        let dev = Default::default();
        let (b, l, d, v) = (3, 6, 4, 7);
        let hidden = Tensor::<Train, 3>::random([b, l, d], Distribution::Default, &dev);
        let w = Tensor::<Train, 2>::random([d, v], Distribution::Default, &dev).detach();
        let head = |x: Tensor<Train, 3>| crate::model::linear_flat(x, w.clone(), None);
        // Row 0: targets at 2..6; row 1: none; row 2: only its last label.
        let mut labels = vec![IGNORE; b * l];
        for (t, y) in labels.iter_mut().enumerate().take(l).skip(2) {
            *y = (t % v) as i64;
        }
        labels[2 * l + l - 1] = 3;
        let labels = Tensor::<Train, 2, Int>::from_data(TensorData::new(labels, [b, l]), &dev);
        let run = |at_targets: bool| {
            let h = hidden.clone().detach().require_grad();
            let loss = if at_targets {
                summed_loss_at(h.clone(), head, &Targets::of(&labels))
            } else {
                summed_lm_loss(head(h.clone()), labels.clone())
            };
            let g = loss.backward();
            (loss.into_scalar(), h.grad(&g).unwrap())
        };
        let ((l1, g1), (l2, g2)) = (run(true), run(false));
        assert!((l1 - l2).abs() <= 1e-6 * l2.abs(), "{l1} vs {l2}");
        let diff: f32 = (g1 - g2).abs().max().into_scalar();
        assert!(diff < 1e-6, "gradient {diff}");
        // No target at all: zero, and zero gradients.
        let none =
            Tensor::<Train, 2, Int>::from_data(TensorData::new(vec![IGNORE; b * l], [b, l]), &dev);
        let h = hidden.clone().detach().require_grad();
        let loss = summed_loss_at(h.clone(), head, &Targets::of(&none));
        let g = loss.clone().backward();
        assert_eq!(loss.into_scalar(), 0.0);
        let g: f32 = h.grad(&g).unwrap().abs().max().into_scalar();
        assert_eq!(g, 0.0);
    }
}
