//! Training: both stages in one loop, readable top to bottom.
//!
//! Stage 1 learns only the projector: CLIP features come from the shared cache (the tower
//! is frozen, so they are constants) and Phi is frozen. Stage 2 starts from stage 1's
//! projector and keeps training it. The loop is our own rather than burn-train's `Learner`:
//! the Learner checkpoints per epoch, and resuming at any step interval with the data
//! position, optimizer and schedule restored exactly needs the loop in hand.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod evaluate;
pub mod grads;
pub mod loss;
pub mod parallel;
pub mod recompute;
pub mod schedule;
pub mod stage;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, Optimizer};
use burn::prelude::*;

use crate::backend::Train;
use crate::config::StageConfig;
use crate::data::batch::{cached_items, epoch_batches, LlavaBatch};
use crate::model::assembly;
use crate::model::lora::QLoraBackend;
use crate::model::phi::Phi;
use crate::model::projector::Projector;
use crate::model::tokenizer::Tokenizer;

use self::checkpoint::{TrainState, Trained};
use self::data::StageData;
use self::parallel::{Job, StepPlan, Team};
use self::schedule::LrSchedule;
use self::stage::{Interrupted, RunContext, StageContext, StageRunner};

/// The stage runner that trains for real.
pub struct Trainer;

impl StageRunner for Trainer {
    fn name(&self) -> &'static str {
        "train"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        run_stage(ctx)
    }
    /// The experiment's benchmarks, on the stage-2 model (resuming their answers).
    fn after_stages(&self, ctx: &mut RunContext) -> Result<()> {
        let done =
            crate::eval::bench::run::configured(ctx.store, ctx.run_id, ctx.exp, ctx.metrics)?;
        if done.iter().any(|o| o.interrupted()) {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// Projects the batch's image features and splices them into the token embeddings at each
/// row's image slot; returns the LM's logits for every position.
pub fn forward<B: QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    batch: &LlavaBatch<B>,
) -> Tensor<B, 3> {
    lm.head(hidden(projector, lm, batch))
}

/// [`forward`] before the LM's head: the last layer's output `[b, L, d]`.
fn hidden<B: QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    batch: &LlavaBatch<B>,
) -> Tensor<B, 3> {
    crate::model::vlm::llava_hidden(
        lm,
        projector,
        batch.input_ids.clone(),
        batch.attention_mask.clone(),
        batch.image_features.clone(),
        &batch.image_start,
    )
}

/// The batch's cross-entropy summed over its target tokens ([`loss::summed_loss_at`] its
/// host-side targets: the LM's head only where a target is), the same value as
/// [`loss::summed_lm_loss`] of [`forward`]'s logits.
pub fn summed_loss<B: QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    batch: &LlavaBatch<B>,
) -> Tensor<B, 1> {
    loss::summed_loss_at(hidden(projector, lm, batch), |x| lm.head(x), &batch.targets)
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
        sum += summed_loss(projector, lm, &b).into_scalar().elem::<f64>();
        count += b.target_tokens();
    }
    (count > 0).then(|| sum / count as f64)
}

/// Everything a stage's loop works with besides what it trains, set up by [`set_up`].
struct Stage {
    data: Arc<StageData>,
    tok: Tokenizer,
    /// One per worker; rank 0's first.
    devices: Vec<Device>,
    /// Whether any dropout is on (several workers then serialize their draws).
    dropout: bool,
    state: TrainState,
    total: u64,
    micro_per_epoch: usize,
    sched_projector: LrSchedule,
    sched_lm: LrSchedule,
}

impl Stage {
    /// Rank 0's device: where the loop, validation and evaluation run.
    fn device(&self) -> &Device {
        &self.devices[0]
    }
}

/// Trains one stage of `ctx.exp` (resuming from its latest checkpoint when there is one),
/// on every device of `devices` (data parallel when there are several).
pub fn run_stage(ctx: &mut StageContext) -> Result<()> {
    let (s, t) = set_up(ctx)?;
    let job = job(ctx, &s);
    if s.devices.len() == 1 {
        return drive(ctx, s, t, &job, &Team::solo());
    }
    let devices = s.devices.clone();
    parallel::with_team(&job, &devices, t, |team, t| drive(ctx, s, t, &job, team))
}

fn job(ctx: &StageContext, s: &Stage) -> Job {
    Job {
        data: s.data.clone(),
        opt: ctx.opt().clone(),
        seed: ctx.exp.seed,
        workers: s.devices.len(),
        dropout: s.dropout,
    }
}

/// The stage's loop on rank 0 (the other workers follow its plans), then its evaluation.
fn drive<OP, OL>(
    ctx: &mut StageContext,
    mut s: Stage,
    mut t: Trained<OP, OL>,
    job: &Job,
    team: &Team,
) -> Result<()>
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let (stage, opt) = (ctx.name(), ctx.opt().clone());
    let bar = progress(&stage, s.total, s.state.step);
    let mut order = EpochOrder::new(&s.data, &opt, ctx.exp.seed, team.workers);
    let mut mem = Memory::default();
    let t_stage = Instant::now();
    while s.state.step < s.total {
        let t0 = Instant::now();
        let step;
        (t, step) = train_step(&mut s, t, &mut order, job, team);
        let dt = t0.elapsed().as_secs_f64();
        log_step(ctx, &s, &step, dt, &mut mem)?;
        bar.set_position(s.state.step);
        bar.set_message(format!("loss {:.4}", step.loss));
        progress_line(&stage, &s, step.loss, t_stage);
        if let Err(e) = end_of_step(ctx, &s, &t, &opt) {
            if e.downcast_ref::<Interrupted>().is_some() {
                bar.abandon_with_message(format!("interrupted at step {}", s.state.step));
            }
            return Err(e);
        }
    }
    bar.finish_with_message("done");
    checkpoint::save_final(&ctx.checkpoint_dir, &t)?;
    let t_eval = Instant::now();
    let evaluation = evaluate::run(
        ctx.stage,
        ctx.exp,
        &t.projector.valid(),
        &t.lm.valid(),
        &s.tok,
        &s.data.eval,
        &s.data.cache,
        ctx.metrics,
        s.state.step,
        ctx.run_id,
    )?;
    for table in &evaluation.items {
        crate::store::items::write(&ctx.run_dir, table)?;
    }
    // What scoring costs (generation dominates it), for sizing `eval.*` against a budget.
    let scored: Vec<String> = evaluation
        .items
        .iter()
        .filter_map(|t| Some(format!("{} {}", t.len(), t.first()?.task)))
        .collect();
    let line = format!(
        "{stage}: evaluation of {} took {:.1} s",
        if scored.is_empty() {
            "nothing".into()
        } else {
            scored.join(", ")
        },
        t_eval.elapsed().as_secs_f64()
    );
    eprintln!("{line}");
    crate::store::log_line(&ctx.run_dir, &line);
    evaluate::write_samples(&ctx.run_dir, ctx.stage, evaluation.gallery)?;
    Ok(())
}

/// The stage's data (what was skipped goes into the metrics), its models (Phi frozen: in
/// stage 2 with the NF4 base when configured and LoRA adapters trainable; the projector
/// trainable, in stage 2 from stage 1's), optimizers and schedules, restored from the
/// latest checkpoint when resuming.
// The CPU's device is Copy, CUDA's is not: the clones serve both builds.
#[allow(clippy::type_complexity, clippy::clone_on_copy)]
fn set_up(
    ctx: &mut StageContext,
) -> Result<(
    Stage,
    Trained<impl Optimizer<Projector<Train>, Train>, impl Optimizer<Phi<Train>, Train>>,
)> {
    let exp = ctx.exp;
    let opt = ctx.opt().clone();
    let stage = ctx.name();
    crate::backend::check_choice(exp.backend)?;
    crate::backend::check_devices(&exp.devices)?;
    let devices: Vec<Device> = exp
        .devices
        .iter()
        .map(|&d| crate::backend::device(d))
        .collect();
    let device = devices[0].clone();
    let workers = devices.len();
    let dirs = assembly::backbone_dirs(exp)?;
    let tok = Tokenizer::from_dir(&dirs.lm)
        .with_context(|| format!("tokenizer of {}", dirs.lm.display()))?;

    let data = data::prepare(exp, ctx.stage, &dirs.vision, &tok)?;
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

    let lora = assembly::lora_config(exp, ctx.stage);
    <Train as Backend>::seed(&device, exp.seed);
    let (lm, lm_cfg) = assembly::load_lm::<Train>(exp, &dirs.lm, &lora, &device)?;
    let lm = lm.freeze_base();
    let mut projector: Projector<Train> =
        assembly::projector_config(exp, data.cache.dim(), lm_cfg.hidden_size).init(&device);
    // Drawn now, from the experiment's seed, not at the first forward.
    parallel::materialize(&lm);
    parallel::materialize(&projector);
    if let Some(dir) = &ctx.stage1_dir {
        projector = assembly::load_projector(projector, &dir.join("final"), &device)?;
    }
    if ctx.stage == 2 {
        let m = &mut *ctx.metrics;
        let base = lm.base_linear_bytes() as f64;
        m.log(&stage, "data", 0, 0.0, "lm_base_linear_bytes", base)?;
        let adapters = lm.adapters().num_params() as f64;
        m.log(&stage, "data", 0, 0.0, "adapter_params", adapters)?;
    }
    let mut t = Trained {
        projector,
        optim_projector: adamw(&opt).init::<Train, Projector<Train>>(),
        lm,
        optim_lm: (ctx.stage == 2).then(|| adamw(&opt).init::<Train, Phi<Train>>()),
    };

    // A micro-batch spans every worker: `batch` sequences each.
    let micro_per_epoch = data.train.len().div_ceil(opt.batch as usize * workers);
    let total = total_steps(&opt, micro_per_epoch);
    // Stage 1's projector learns at `lr`; in stage 2 `lr` is the adapters' and the
    // projector has `projector_lr`.
    let (lr_projector, lr_lm) = if ctx.stage == 2 {
        (exp.stage2.projector_lr, opt.lr)
    } else {
        (opt.lr, 0.0)
    };
    let mut state = TrainState::new(total, workers);
    if ctx.resume {
        if let Some(ck) = checkpoint::latest(&ctx.checkpoint_dir)? {
            (t, state) = checkpoint::load(&ck, t, &device)?;
            checkpoint::check_workers(&ck, &state, workers)?;
            eprintln!(
                "{stage}: resuming at step {} from {}",
                state.step,
                ck.display()
            );
        }
    }
    let dropout = lora.dropout > 0.0 || lm_cfg.resid_pdrop > 0.0 || lm_cfg.embd_pdrop > 0.0;
    let stage = Stage {
        data: Arc::new(data),
        tok,
        devices,
        dropout,
        state,
        total,
        micro_per_epoch,
        sched_projector: LrSchedule::new(&opt, lr_projector, total),
        sched_lm: LrSchedule::new(&opt, lr_lm, total),
    };
    Ok((stage, t))
}

/// Which training sequences each micro-batch holds: epoch `e`'s batches (grouped by length
/// unless the stage says not), drawn from (seed, e) when the loop first reaches that epoch,
/// so a resumed run sees the batches an uninterrupted one would.
struct EpochOrder {
    lengths: Vec<usize>,
    batch: usize,
    by_length: bool,
    seed: u64,
    epoch: u64,
    batches: Vec<Vec<usize>>,
}

impl EpochOrder {
    /// Global micro-batches of `batch x workers` sequences.
    fn new(data: &StageData, opt: &StageConfig, seed: u64, workers: usize) -> Self {
        EpochOrder {
            lengths: data.train.iter().map(|s| s.len()).collect(),
            batch: opt.batch as usize * workers,
            by_length: opt.group_by_length,
            seed,
            epoch: u64::MAX,
            batches: vec![],
        }
    }

    /// The sequences of global micro-batch `micro`.
    fn micro_batch(&mut self, micro: usize, per_epoch: usize) -> &[usize] {
        let epoch = (micro / per_epoch) as u64;
        if epoch != self.epoch {
            self.batches = epoch_batches(
                &self.lengths,
                self.batch,
                self.seed,
                epoch,
                self.by_length,
                false,
            );
            self.epoch = epoch;
        }
        &self.batches[micro % per_epoch]
    }
}

/// What one optimizer step did.
struct StepStats {
    /// Mean loss over the global batch's target tokens.
    loss: f64,
    grad_norm: f64,
    lr_projector: f64,
    lr_lm: f64,
    targets: usize,
    tokens: usize,
    samples: usize,
    /// Seconds rank 0 spent in the all-reduce (none with one worker).
    allreduce_s: Option<f64>,
}

/// One optimizer step: `grad_accum` global micro-batches, each split over the workers,
/// forward and backward, gradients summed and all-reduced, one global norm clipped over
/// everything trained, both optimizers stepped on every replica.
fn train_step<OP, OL>(
    s: &mut Stage,
    t: Trained<OP, OL>,
    order: &mut EpochOrder,
    job: &Job,
    team: &Team,
) -> (Trained<OP, OL>, StepStats)
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let accum = job.opt.grad_accum as usize;
    let micro: Vec<Vec<usize>> = (0..accum)
        .map(|k| {
            let m = s.state.step as usize * accum + k;
            order.micro_batch(m, s.micro_per_epoch).to_vec()
        })
        .collect();
    // Counted on the host, so every micro-batch's gradients can be scaled before any
    // forward and nothing is read back per micro-batch.
    let seqs = || micro.iter().flatten().map(|&i| &s.data.train[i]);
    let targets = seqs().map(|q| q.loss_targets()).sum();
    let tokens = seqs().map(|q| q.len()).sum();
    let samples = seqs().count();
    let plan = Arc::new(StepPlan {
        step: s.state.step,
        micro,
        targets,
        lr_projector: s.sched_projector.lr(s.state.step),
        lr_lm: s.sched_lm.lr(s.state.step),
    });
    team.send(&plan);
    let (t, out) = parallel::local_step(0, job, s.device(), t, &plan);
    s.state.step += 1;
    s.state.epoch = (s.state.step as usize * accum) as f64 / s.micro_per_epoch as f64;
    let stats = StepStats {
        loss: out.loss,
        grad_norm: out.grad_norm,
        lr_projector: plan.lr_projector,
        lr_lm: plan.lr_lm,
        targets,
        tokens,
        samples,
        allreduce_s: (team.workers > 1).then_some(out.allreduce_s),
    };
    (t, stats)
}

/// The highest device memory the allocator reserved so far (GPU only).
#[derive(Default)]
struct Memory {
    peak_device: f64,
}

/// The step's metrics: loss, learning rates, gradient norm, throughput and memory.
fn log_step(
    ctx: &mut StageContext,
    s: &Stage,
    st: &StepStats,
    dt: f64,
    mem: &mut Memory,
) -> Result<()> {
    let stage = ctx.name();
    let (step, e) = (s.state.step, s.state.epoch);
    let two = ctx.stage == 2;
    let m = &mut *ctx.metrics;
    let mut log = |name: &str, v: f64| m.log(&stage, "train", step, e, name, v);
    log("loss", st.loss)?;
    if two {
        log("lr/projector", st.lr_projector)?;
        log("lr/lora", st.lr_lm)?;
    } else {
        log("lr", st.lr_projector)?;
    }
    log("grad_norm", st.grad_norm)?;
    log("target_tokens", st.targets as f64)?;
    log("tokens_per_s", st.tokens as f64 / dt)?;
    log("samples_per_s", st.samples as f64 / dt)?;
    log("step_time_s", dt)?;
    if let Some(a) = st.allreduce_s {
        log("allreduce_s", a)?;
    }
    // Peak memory: the GPU allocator's reserved bytes on a GPU, else the process RSS.
    let rss = crate::backend::peak_rss_bytes();
    match crate::backend::device_memory(s.device()) {
        Some((in_use, reserved)) => {
            mem.peak_device = mem.peak_device.max(reserved as f64);
            log("peak_mem_bytes", mem.peak_device)?;
            log("device_mem_in_use_bytes", in_use as f64)?;
            log("peak_rss_bytes", rss)?;
        }
        None => log("peak_mem_bytes", rss)?,
    }
    // Every other worker's device, on GPUs (the CPU's workers share the process's RSS).
    for (rank, d) in s.devices.iter().enumerate().skip(1) {
        if let Some((_, reserved)) = crate::backend::device_memory(d) {
            log(&format!("peak_mem_bytes/worker{rank}"), reserved as f64)?;
        }
    }
    Ok(())
}

/// Without a terminal (logs, parallel sweep workers) the bar is hidden: a line every tenth
/// of the stage instead.
fn progress_line(stage: &str, s: &Stage, loss: f64, t_stage: Instant) {
    let (step, total) = (s.state.step, s.total);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr())
        && (step % (total / 10).max(1) == 0 || step == total)
    {
        eprintln!(
            "{stage}: step {step}/{total} loss {loss:.4} ({:.0}s)",
            t_stage.elapsed().as_secs_f64()
        );
    }
}

/// Validation and checkpoints when due; [`Interrupted`] after checkpointing when a signal
/// asked the run to stop.
fn end_of_step<OP, OL>(
    ctx: &mut StageContext,
    s: &Stage,
    t: &Trained<OP, OL>,
    opt: &StageConfig,
) -> Result<()>
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let stage = ctx.name();
    let (step, e) = (s.state.step, s.state.epoch);
    let last = step == s.total;
    if (opt.eval_every > 0 && step % opt.eval_every == 0) || last {
        let (p, lm) = (t.projector.valid(), t.lm.valid());
        if let Some(v) = validate(&p, &lm, &s.data, opt.batch as usize, s.device()) {
            ctx.metrics.log(&stage, "val", step, e, "loss", v)?;
            ctx.metrics
                .log(&stage, "val", step, e, "perplexity", v.exp())?;
        }
    }
    let interrupted = crate::store::interrupted();
    if (opt.checkpoint_every > 0 && step % opt.checkpoint_every == 0) || interrupted || last {
        // Metrics first: a checkpoint never claims steps whose metrics were lost.
        ctx.metrics.flush()?;
        checkpoint::save(
            &ctx.checkpoint_dir,
            t,
            &s.state,
            opt.keep_checkpoints as usize,
        )?;
    }
    if interrupted && !last {
        return Err(Interrupted.into());
    }
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
