//! The masked next-token loss: position t predicts label t+1; labels of -100 (image slots,
//! prompts, padding) are ignored; the mean is over the target tokens of the batch, as
//! PyTorch's `CrossEntropyLoss(ignore_index=-100)` computes it in HF's causal LM loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::data::sequence::IGNORE;

/// Mean cross-entropy over target tokens, and their count. `logits` `[b, L, V]`, `labels`
/// `[b, L]` (unshifted, as in the batch).
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
        let (loss, n) = masked_lm_loss(logits, labels);
        assert_eq!(n, 1);
        // Position 1 predicts label 1: logits [2, 0] -> -log softmax[1].
        let expect = -(0f64 - (2f64.exp() + 1.0).ln());
        assert!((loss.into_scalar().elem::<f64>() - expect).abs() < 1e-6);
    }
}
