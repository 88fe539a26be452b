//! Activation checkpointing per layer: a micro-batch's forward pass keeps only each layer's
//! input, and its backward pass recomputes one layer at a time, so a training step holds the
//! activations of one layer instead of all of them (torch's `gradient_checkpointing`).
//!
//! burn 0.21 has no recompute-a-region op (its checkpointing strategies decide op by op, and
//! a backward nested inside another deadlocks on the autodiff graph's lock), so the step is
//! split into top-level backward passes instead, each a vector-Jacobian product:
//! - forward: the embeddings with the image spliced in (their graph kept: the projector's),
//!   then every layer on untracked tensors with its parameters untracked too, so no graph is
//!   recorded; only the layer outputs are kept;
//! - the head (final norm, `lm_head`, loss) from a fresh leaf on the last output: its
//!   backward gives `dL/dx` there;
//! - each layer from the last, again from a fresh leaf on its input: the backward of
//!   `sum(layer(x) * dL/dy)` gives `dL/dx` and the layer's adapter gradients;
//! - the embeddings: the backward of `sum(x0 * dL/dx0)` gives the projector's gradients.
//!
//! Dropout draws the same masks twice: the backend's generator is reseeded before a layer's
//! forward and again before its recomputation, with a seed derived from the micro-batch's
//! seed and the layer's index. The gradients equal the plain step's (the tests compare them)
//! up to the order of float sums.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::backend::Train;
use crate::data::batch::LlavaBatch;
use crate::model::phi::Phi;
use crate::model::projector::Projector;
use crate::model::vlm::{llava_embeds, mask_from_int};

use super::loss::masked_lm_loss;

/// One micro-batch's loss and gradients.
pub struct MicroStep {
    /// The unscaled mean loss over the micro-batch's target tokens.
    pub loss: f64,
    pub targets: usize,
    pub projector: GradientsParams,
    /// The LM's adapter gradients (empty unless `train_lm`).
    pub lm: GradientsParams,
}

/// Forward and backward of one micro-batch with per-layer recomputation; the gradients are
/// those of `loss / divisor`. `seed` decides the dropout masks (the same for a resumed run).
pub fn micro_step(
    projector: &Projector<Train>,
    lm: &Phi<Train>,
    batch: &LlavaBatch<Train>,
    divisor: f64,
    train_lm: bool,
    seed: u64,
) -> MicroStep {
    let device = batch.input_ids.device();
    let layer_seed = |i: usize| {
        seed ^ (i as u64 + 1)
            .wrapping_mul(0xD1B5_4A32_D192_ED03)
            .rotate_left(17)
    };
    let embeds = llava_embeds(
        lm,
        projector,
        batch.input_ids.clone(),
        batch.image_features.clone(),
        &batch.image_start,
    );
    let ctx = lm.context(
        &embeds,
        0,
        Some(mask_from_int(batch.attention_mask.clone())),
    );
    let x0 = lm.embed_input(embeds);

    // Forward, nothing recorded: each layer's output is all that is kept.
    let mut inputs = vec![x0.clone().detach()];
    for (i, layer) in lm.layers.iter().enumerate() {
        <Train as Backend>::seed(&device, layer_seed(i));
        let frozen = layer.clone().no_grad();
        let y = frozen.forward(inputs[i].clone(), &ctx, None);
        inputs.push(y.detach());
    }

    // The head: dL/dx at the last layer's output.
    let last = inputs
        .pop()
        .expect("the embeddings at least")
        .require_grad();
    let (loss, targets) = masked_lm_loss(lm.head(last.clone()), batch.labels.clone());
    let value = loss.clone().into_scalar().elem::<f64>();
    let g = (loss / divisor).backward();
    let mut dx = last.grad(&g).expect("the head depends on its input");

    // Each layer, from the last: recompute, then its vector-Jacobian product.
    let mut grads_lm = GradientsParams::new();
    for (i, layer) in lm.layers.iter().enumerate().rev() {
        <Train as Backend>::seed(&device, layer_seed(i));
        let x = inputs.pop().expect("one input per layer").require_grad();
        let y = layer.forward(x.clone(), &ctx, None);
        let mut g = (y * Tensor::from_inner(dx)).sum().backward();
        if train_lm {
            super::grads::accumulate::<Train, _>(
                lm,
                &mut grads_lm,
                GradientsParams::from_module(&mut g, layer),
            );
        }
        dx = x.grad(&g).expect("a layer depends on its input");
    }

    // The embeddings: the projector's gradients through the image slots.
    let mut g = (x0 * Tensor::from_inner(dx)).sum().backward();
    MicroStep {
        loss: value,
        targets,
        projector: GradientsParams::from_module(&mut g, projector),
        lm: grads_lm,
    }
}

/// The same micro-batch through one plain backward pass, every activation recorded (dropout
/// masks drawn from the generator as the step left it): the default, and the reference
/// [`micro_step`] is tested against.
pub fn micro_step_plain(
    projector: &Projector<Train>,
    lm: &Phi<Train>,
    batch: &LlavaBatch<Train>,
    divisor: f64,
    train_lm: bool,
) -> MicroStep {
    let (loss, targets) =
        masked_lm_loss(super::forward(projector, lm, batch), batch.labels.clone());
    let value = loss.clone().into_scalar().elem::<f64>();
    let mut g = (loss / divisor).backward();
    let projector = GradientsParams::from_module(&mut g, projector);
    let lm = if train_lm {
        GradientsParams::from_module(&mut g, lm)
    } else {
        GradientsParams::new()
    };
    MicroStep {
        loss: value,
        targets,
        projector,
        lm,
    }
}
