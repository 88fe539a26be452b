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

use std::sync::{Mutex, MutexGuard};

use crate::backend::{Compute, Train};
use crate::data::batch::LlavaBatch;
use crate::model::phi::Phi;
use crate::model::projector::Projector;
use crate::model::vlm::{llava_embeds, mask_from_int};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::loss::summed_loss_at;

/// Where random draws are serialized. burn's backends draw from one process-wide generator,
/// so workers of a data-parallel step that seed and then draw must not interleave: with a
/// lock, each seeding and the draws that follow it run under it, so every worker gets the
/// masks its seed decides whatever the others do. `None` (one worker, or no dropout): no
/// lock.
#[derive(Clone, Copy, Default)]
pub struct Draws<'a>(pub Option<&'a Mutex<()>>);

impl<'a> Draws<'a> {
    fn hold(&self) -> Option<MutexGuard<'a, ()>> {
        self.0.map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One micro-batch's loss and gradients.
pub struct MicroStep {
    /// The cross-entropy summed over the micro-batch's target tokens, left on the device:
    /// the loop reads the step's total once.
    pub loss_sum: Tensor<Compute, 1>,
    pub projector: GradientsParams,
    /// The LM's adapter gradients (empty unless `train_lm`).
    pub lm: GradientsParams,
}

impl MicroStep {
    /// The summed loss, read back (a host sync).
    pub fn loss(&self) -> f64 {
        self.loss_sum.clone().into_scalar().elem::<f64>()
    }
}

/// Forward and backward of one micro-batch with per-layer recomputation; the gradients are
/// those of `summed loss / norm` (the loop passes the global batch's target count). `seed`
/// decides the dropout masks (the same for a resumed run).
pub fn micro_step(
    projector: &Projector<Train>,
    lm: &Phi<Train>,
    batch: &LlavaBatch<Train>,
    norm: f64,
    train_lm: bool,
    seed: u64,
    draws: Draws,
) -> MicroStep {
    let device = batch.input_ids.device();
    let layer_seed = |i: usize| {
        seed ^ (i as u64 + 1)
            .wrapping_mul(0xD1B5_4A32_D192_ED03)
            .rotate_left(17)
    };
    let (ctx, x0) = {
        let _held = draws.hold();
        <Train as Backend>::seed(&device, seed);
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
        (ctx, lm.embed_input(embeds))
    };

    // Forward, nothing recorded: each layer's output is all that is kept.
    let mut inputs = vec![x0.clone().detach()];
    for (i, layer) in lm.layers.iter().enumerate() {
        let _held = draws.hold();
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
    let loss = summed_loss_at(last.clone(), |x| lm.head(x), &batch.targets);
    let loss_sum = loss.clone().detach().inner();
    let g = (loss / norm).backward();
    let mut dx = last.grad(&g).expect("the head depends on its input");

    // Each layer, from the last: recompute, then its vector-Jacobian product.
    let mut grads_lm = GradientsParams::new();
    for (i, layer) in lm.layers.iter().enumerate().rev() {
        let x = inputs.pop().expect("one input per layer").require_grad();
        let y = {
            let _held = draws.hold();
            <Train as Backend>::seed(&device, layer_seed(i));
            layer.forward(x.clone(), &ctx, None)
        };
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
        loss_sum,
        projector: GradientsParams::from_module(&mut g, projector),
        lm: grads_lm,
    }
}

/// The same micro-batch through one plain backward pass, every activation recorded (dropout
/// masks drawn from `seed`): the default, and the reference [`micro_step`] is tested
/// against.
pub fn micro_step_plain(
    projector: &Projector<Train>,
    lm: &Phi<Train>,
    batch: &LlavaBatch<Train>,
    norm: f64,
    train_lm: bool,
    seed: u64,
    draws: Draws,
) -> MicroStep {
    let loss = {
        let _held = draws.hold();
        <Train as Backend>::seed(&batch.input_ids.device(), seed);
        super::summed_loss(projector, lm, batch)
    };
    let loss_sum = loss.clone().detach().inner();
    let mut g = (loss / norm).backward();
    let projector = GradientsParams::from_module(&mut g, projector);
    let lm = if train_lm {
        GradientsParams::from_module(&mut g, lm)
    } else {
        GradientsParams::new()
    };
    MicroStep {
        loss_sum,
        projector,
        lm,
    }
}
