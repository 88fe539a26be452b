//! Training: both stages in one loop, readable top to bottom.
//!
//! Stage 1 learns only the projector: CLIP features come from the shared cache (the tower
//! is frozen, so they are constants) and Phi is frozen. Stage 2 starts from stage 1's
//! projector and keeps training it. The loop is our own rather than burn-train's `Learner`:
//! the Learner checkpoints per epoch, and resuming at any step interval with the data
//! position, optimizer and schedule restored exactly needs the loop in hand.

pub mod checkpoint;
pub mod data;
pub mod evaluate;
pub mod grads;
pub mod loss;
pub mod schedule;

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;

use crate::backend::Train;
use crate::config::{Experiment, ProjectorKind as KindCfg, StageConfig};
use crate::data::batch::{cached_items, epoch_batches, LlavaBatch};
use crate::model::checkpoint::Checkpoint;
use crate::model::lora::{LoraConfig, QLoraBackend};
use crate::model::phi::{Phi, PhiConfig};
use crate::model::projector::{Projector, ProjectorConfig, ProjectorKind};
use crate::model::tokenizer::Tokenizer;
use crate::stage::{Interrupted, StageContext, StageRunner};

use self::checkpoint::{TrainState, Trained};
use self::data::StageData;
use self::schedule::LrSchedule;

/// The stage runner that trains for real.
pub struct Trainer;

impl StageRunner for Trainer {
    fn name(&self) -> &'static str {
        "train"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        run_stage(ctx)
    }
}

/// The projector an experiment describes, for features of width `d_vision`.
pub fn projector_config(exp: &Experiment, d_vision: usize, d_lm: usize) -> ProjectorConfig {
    let kind = match exp.model.projector {
        KindCfg::Residual => ProjectorKind::Residual,
        KindCfg::Mlp2xGelu => ProjectorKind::Mlp2xGelu,
    };
    ProjectorConfig::new(d_vision, d_lm)
        .with_depth(exp.model.projector_depth as usize)
        .with_kind(kind)
}

/// Projects the batch's image features and splices them into the token embeddings at each
/// row's image slot; returns the LM's logits for every position.
pub fn forward<B: QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    batch: &LlavaBatch<B>,
) -> Tensor<B, 3> {
    let embeds = lm.embed(batch.input_ids.clone());
    // The projector keeps f32 weights; its output joins the LM's compute dtype (bf16 on GPU).
    let images = projector
        .forward(batch.image_features.clone())
        .cast(embeds.dtype());
    let embeds = splice(embeds, images, &batch.image_start);
    let keep = batch.attention_mask.clone().equal_elem(1);
    lm.forward_embeds(embeds, Some(keep), None)
}

/// Replaces positions `start .. start + patches` of each row with that row's image.
pub fn splice<B: Backend>(
    embeds: Tensor<B, 3>,
    images: Tensor<B, 3>,
    starts: &[Option<usize>],
) -> Tensor<B, 3> {
    let [b, l, d] = embeds.dims();
    let p = images.dims()[1];
    let row = |r: usize, s: Option<usize>| -> Tensor<B, 3> {
        let e = embeds.clone().slice([r..r + 1, 0..l, 0..d]);
        match s {
            None => e,
            Some(s) => {
                let img = images.clone().slice([r..r + 1, 0..p, 0..d]);
                let mut parts = vec![];
                if s > 0 {
                    parts.push(e.clone().slice([0..1, 0..s, 0..d]));
                }
                parts.push(img);
                if s + p < l {
                    parts.push(e.slice([0..1, s + p..l, 0..d]));
                }
                Tensor::cat(parts, 1)
            }
        }
    };
    // Common case (every row's image at the same place): one batched cat.
    if let Some(&Some(s)) = starts.first() {
        if starts.iter().all(|&x| x == Some(s)) {
            let mut parts = vec![];
            if s > 0 {
                parts.push(embeds.clone().slice([0..b, 0..s, 0..d]));
            }
            parts.push(images);
            if s + p < l {
                parts.push(embeds.slice([0..b, s + p..l, 0..d]));
            }
            return Tensor::cat(parts, 1);
        }
    }
    Tensor::cat((0..b).map(|r| row(r, starts[r])).collect(), 0)
}

/// The LM's checkpoint, read into the experiment's compute dtype (`auto`: bf16 on a GPU).
pub fn lm_checkpoint(exp: &Experiment, lm_dir: &std::path::Path) -> Result<Checkpoint> {
    let ckpt = Checkpoint::open(lm_dir)?;
    Ok(match crate::backend::lm_dtype(exp.model.dtype) {
        Some(d) => ckpt.with_dtype(d),
        None => ckpt,
    })
}

/// Optimizer steps in a stage: `max_steps`, else `epochs` passes of `grad_accum` micro-batches.
pub fn total_steps(opt: &StageConfig, micro_per_epoch: usize) -> u64 {
    if opt.max_steps > 0 {
        return opt.max_steps;
    }
    let per_epoch = (micro_per_epoch as u64 / opt.grad_accum).max(1);
    (opt.epochs * per_epoch as f64).ceil().max(1.0) as u64
}

fn adamw(opt: &StageConfig) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(opt.beta1 as f32)
        .with_beta_2(opt.beta2 as f32)
        .with_epsilon(opt.eps as f32)
        .with_weight_decay(opt.weight_decay as f32)
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(f64::NAN)
}

/// Mean loss over the validation sequences (inference backend, no graph).
fn validate<B: QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    data: &StageData,
    batch: usize,
    device: &B::Device,
) -> Option<f64> {
    if data.val.is_empty() {
        return None;
    }
    let (mut sum, mut count) = (0.0, 0usize);
    let idx: Vec<usize> = (0..data.val.len()).collect();
    for chunk in idx.chunks(batch) {
        let b = data
            .batcher
            .batch::<B>(cached_items(&data.val, chunk, &data.cache), device);
        let (loss, n) = loss::masked_lm_loss(forward(projector, lm, &b), b.labels.clone());
        sum += loss.into_scalar().elem::<f64>() * n as f64;
        count += n;
    }
    (count > 0).then(|| sum / count as f64)
}

/// Trains one stage of `ctx.exp` (resuming from its latest checkpoint when there is one).
pub fn run_stage(ctx: &mut StageContext) -> Result<()> {
    let exp = ctx.exp;
    let opt = ctx.opt().clone();
    let stage = ctx.name();
    crate::backend::check_choice(exp.backend)?;
    let device = crate::backend::device(exp.devices[0]);
    let vision_dir = data::backbone_dir(&exp.model.vision, exp.data.coco_root.as_ref())?;
    let lm_dir = data::backbone_dir(&exp.model.lm, exp.data.coco_root.as_ref())?;
    let tok = Tokenizer::from_dir(&lm_dir)
        .with_context(|| format!("tokenizer of {}", lm_dir.display()))?;

    // Data: sequences and cached CLIP features; what was skipped goes into the metrics.
    let data = data::prepare(exp, ctx.stage, &vision_dir, &tok)?;
    for (name, v) in data.skips.metrics() {
        ctx.metrics.log(&stage, "data", 0, 0.0, &name, v)?;
    }
    let tr = &data.truncation;
    for (name, v) in [
        ("sequences", tr.sequences as f64),
        ("truncated_sequences", tr.truncated_sequences as f64),
        ("truncated_tokens", tr.truncated_tokens as f64),
        ("train_samples", data.train.len() as f64),
        ("val_samples", data.val.len() as f64),
        ("clip_forward_images", data.extracted as f64),
    ] {
        ctx.metrics.log(&stage, "data", 0, 0.0, name, v)?;
    }

    // Models: Phi frozen (stage 2: NF4 base when configured, LoRA adapters trainable), the
    // projector trainable (stage 2 starts from stage 1's).
    let lora = if ctx.stage == 2 {
        LoraConfig::from_stage2(&exp.stage2)
    } else {
        LoraConfig::frozen()
    };
    let lm_cfg = PhiConfig::load(&lm_dir)?;
    let ckpt = lm_checkpoint(exp, &lm_dir)?;
    <Train as Backend>::seed(&device, exp.seed);
    let lm = Phi::<Train>::load_with(&ckpt, &lm_cfg, &device, &lora)?.freeze_base();
    drop(ckpt);
    let mut projector: Projector<Train> =
        projector_config(exp, data.cache.dim(), lm_cfg.hidden_size).init(&device);
    if let Some(dir) = &ctx.stage1_dir {
        projector = checkpoint::load_projector(projector, &dir.join("final"), &device)?;
    }
    if ctx.stage == 2 {
        let m = &mut *ctx.metrics;
        m.log(
            &stage,
            "data",
            0,
            0.0,
            "lm_base_linear_bytes",
            lm.base_linear_bytes() as f64,
        )?;
        m.log(
            &stage,
            "data",
            0,
            0.0,
            "adapter_params",
            lm.adapters().num_params() as f64,
        )?;
    }
    let mut t = Trained {
        projector,
        optim_projector: adamw(&opt).init::<Train, Projector<Train>>(),
        lm,
        optim_lm: (ctx.stage == 2).then(|| adamw(&opt).init::<Train, Phi<Train>>()),
    };

    let micro_per_epoch = data.train.len().div_ceil(opt.batch as usize);
    let total = total_steps(&opt, micro_per_epoch);
    // Stage 1's projector learns at `lr`; in stage 2 `lr` is the adapters' and the
    // projector has `projector_lr`.
    let (lr_projector, lr_lm) = if ctx.stage == 2 {
        (exp.stage2.projector_lr, opt.lr)
    } else {
        (opt.lr, 0.0)
    };
    let sched_p = LrSchedule::new(&opt, lr_projector, total);
    let sched_l = LrSchedule::new(&opt, lr_lm, total);
    let mut state = TrainState::new(total);
    if ctx.resume {
        if let Some(ck) = checkpoint::latest(&ctx.checkpoint_dir)? {
            (t, state) = checkpoint::load(&ck, t, &device)?;
            eprintln!(
                "{stage}: resuming at step {} from {}",
                state.step,
                ck.display()
            );
        }
    }

    let lengths: Vec<usize> = data.train.iter().map(|s| s.len()).collect();
    let mut order_epoch = u64::MAX;
    let mut order: Vec<Vec<usize>> = vec![];
    let bar = progress(&stage, total, state.step);
    let log_lines = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t_stage = std::time::Instant::now();
    let accum = opt.grad_accum as usize;
    let mut peak_device = 0f64;
    while state.step < total {
        let t0 = Instant::now();
        // Dropout and any other randomness depend on (seed, step) only, so a resumed run
        // draws what an uninterrupted one would.
        <Train as Backend>::seed(
            &device,
            exp.seed ^ (state.step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let (mut gp, mut gl) = (GradientsParams::new(), GradientsParams::new());
        let (mut loss_sum, mut targets, mut tokens, mut samples) = (0.0, 0usize, 0usize, 0usize);
        for k in 0..accum {
            let micro = state.step as usize * accum + k;
            let epoch = (micro / micro_per_epoch) as u64;
            if epoch != order_epoch {
                order = epoch_batches(&lengths, opt.batch as usize, exp.seed, epoch, false, false);
                order_epoch = epoch;
            }
            let idx = &order[micro % micro_per_epoch];
            let batch = data
                .batcher
                .batch::<Train>(cached_items(&data.train, idx, &data.cache), &device);
            tokens += batch.lengths.iter().sum::<usize>();
            samples += idx.len();
            let (loss, n) =
                loss::masked_lm_loss(forward(&t.projector, &t.lm, &batch), batch.labels.clone());
            loss_sum += loss.clone().into_scalar().elem::<f64>();
            targets += n;
            let mut g = (loss / accum as f64).backward();
            grads::accumulate::<Train, _>(
                &t.projector,
                &mut gp,
                GradientsParams::from_module(&mut g, &t.projector),
            );
            if t.optim_lm.is_some() {
                grads::accumulate::<Train, _>(
                    &t.lm,
                    &mut gl,
                    GradientsParams::from_module(&mut g, &t.lm),
                );
            }
        }
        // One global norm over everything trained, as torch's clip_grad_norm_ over all params.
        let np = grads::global_norm::<Train, _>(&t.projector, &gp);
        let nl = if t.optim_lm.is_some() {
            grads::global_norm::<Train, _>(&t.lm, &gl)
        } else {
            0.0
        };
        let grad_norm = (np * np + nl * nl).sqrt();
        if opt.clip_grad_norm > 0.0 && grad_norm > opt.clip_grad_norm {
            let f = opt.clip_grad_norm / (grad_norm + 1e-6);
            grads::scale::<Train, _>(&t.projector, &mut gp, f);
            grads::scale::<Train, _>(&t.lm, &mut gl, f);
        }
        let (lr_p, lr_l) = (sched_p.lr(state.step), sched_l.lr(state.step));
        t.projector = t.optim_projector.step(lr_p, t.projector, gp);
        if let Some(o) = &mut t.optim_lm {
            t.lm = o.step(lr_l, t.lm, gl);
        }
        state.step += 1;
        state.epoch = (state.step as usize * accum) as f64 / micro_per_epoch as f64;

        let dt = t0.elapsed().as_secs_f64();
        let loss = loss_sum / accum as f64;
        let (s, e) = (state.step, state.epoch);
        let m = &mut *ctx.metrics;
        m.log(&stage, "train", s, e, "loss", loss)?;
        if ctx.stage == 2 {
            m.log(&stage, "train", s, e, "lr/projector", lr_p)?;
            m.log(&stage, "train", s, e, "lr/lora", lr_l)?;
        } else {
            m.log(&stage, "train", s, e, "lr", lr_p)?;
        }
        m.log(&stage, "train", s, e, "grad_norm", grad_norm)?;
        m.log(&stage, "train", s, e, "target_tokens", targets as f64)?;
        m.log(&stage, "train", s, e, "tokens_per_s", tokens as f64 / dt)?;
        m.log(&stage, "train", s, e, "samples_per_s", samples as f64 / dt)?;
        m.log(&stage, "train", s, e, "step_time_s", dt)?;
        // Peak memory: the GPU allocator's reserved bytes on a GPU, else the process RSS.
        let rss = peak_rss_bytes();
        match crate::backend::device_memory(&device) {
            Some((in_use, reserved)) => {
                peak_device = peak_device.max(reserved as f64);
                m.log(&stage, "train", s, e, "peak_mem_bytes", peak_device)?;
                m.log(
                    &stage,
                    "train",
                    s,
                    e,
                    "device_mem_in_use_bytes",
                    in_use as f64,
                )?;
                m.log(&stage, "train", s, e, "peak_rss_bytes", rss)?;
            }
            None => m.log(&stage, "train", s, e, "peak_mem_bytes", rss)?,
        }
        bar.set_position(s);
        bar.set_message(format!("loss {loss:.4}"));
        // Without a terminal (logs, parallel sweep workers) the bar is hidden: a line every
        // tenth of the stage instead.
        if log_lines && (s % (total / 10).max(1) == 0 || s == total) {
            eprintln!(
                "{stage}: step {s}/{total} loss {loss:.4} ({:.0}s)",
                t_stage.elapsed().as_secs_f64()
            );
        }

        let last = state.step == total;
        if (opt.eval_every > 0 && s % opt.eval_every == 0) || last {
            if let Some(v) = validate(
                &t.projector.valid(),
                &t.lm.valid(),
                &data,
                opt.batch as usize,
                &device,
            ) {
                m.log(&stage, "val", s, e, "loss", v)?;
                m.log(&stage, "val", s, e, "perplexity", v.exp())?;
            }
        }
        let interrupted = crate::store::interrupted();
        if (opt.checkpoint_every > 0 && s % opt.checkpoint_every == 0) || interrupted || last {
            // Metrics first: a checkpoint never claims steps whose metrics were lost.
            ctx.metrics.flush()?;
            checkpoint::save(
                &ctx.checkpoint_dir,
                &t,
                &state,
                opt.keep_checkpoints as usize,
            )?;
        }
        if interrupted && !last {
            bar.abandon_with_message(format!("interrupted at step {s}"));
            return Err(Interrupted.into());
        }
    }
    bar.finish_with_message("done");
    checkpoint::save_final(&ctx.checkpoint_dir, &t)?;
    let gallery = evaluate::run(
        ctx.stage,
        exp,
        &t.projector.valid(),
        &t.lm.valid(),
        &tok,
        &data.eval,
        &data.cache,
        ctx.metrics,
        state.step,
    )?;
    evaluate::write_samples(&ctx.run_dir, ctx.stage, gallery)?;
    Ok(())
}

fn progress(stage: &str, total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    bar.set_position(at);
    bar
}

/// Used by checkpoints to name the autodiff backend's inner device type.
pub type Device = burn::tensor::Device<Train>;
