//! Data parallelism over the devices of one machine (`devices = [0, 1, ..]`): one worker
//! thread per entry, each with a full replica (the frozen base on its device, NF4 packed on
//! each), each computing its share of every micro-batch of every optimizer step. The
//! trainable gradients and the summed loss travel in one flat buffer through one
//! burn-collective all-reduce per step, so every replica applies the same update.
//!
//! The loss is normalized by the target tokens of the whole global batch (the loop knows
//! them from the host labels before any forward), never a mean of per-device or
//! per-micro-batch means: N workers give the update one device gives with the whole batch,
//! up to the order of float sums. Rank 0 runs in the caller's thread and alone writes
//! checkpoints, metrics and evaluations; the others follow its step plans.
//!
//! burn-collective's peers are threads of one process and it reduces with ordinary backend
//! ops (device-to-device copies), so the same code runs on the CPU (`devices = [0, 0]`:
//! two workers sharing the one CPU device) and on GPUs. It is not NCCL.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::backend::{Compute, Train};
use crate::config::StageConfig;
use crate::data::batch::cached_items;
use crate::model::phi::Phi;
use crate::model::projector::Projector;

use super::checkpoint::Trained;
use super::data::StageData;
use super::grads;
use super::recompute::{self, Draws};
use super::Device;

/// What every worker of a stage shares.
pub struct Job {
    pub data: Arc<StageData>,
    pub opt: StageConfig,
    pub seed: u64,
    pub workers: usize,
    /// Whether any dropout is on: then several workers serialize their random draws.
    pub dropout: bool,
}

/// One optimizer step, as rank 0 plans it for everyone.
pub struct StepPlan {
    /// Optimizer steps taken before this one.
    pub step: u64,
    /// The step's global micro-batches (sample indices), `grad_accum` of them; worker r
    /// takes its [`share`] of each.
    pub micro: Vec<Vec<usize>>,
    /// Target tokens in the whole global batch: what the summed loss is divided by.
    pub targets: usize,
    pub lr_projector: f64,
    pub lr_lm: f64,
}

/// What a step computed, the same on every worker after the all-reduce.
pub struct StepOut {
    /// Mean loss over the global batch's target tokens.
    pub loss: f64,
    /// Global norm of the (normalized) gradients, before clipping.
    pub grad_norm: f64,
    /// Seconds the all-reduce took on this worker (waiting for the others included).
    pub allreduce_s: f64,
}

/// Worker `rank`'s part of a global micro-batch: a contiguous slice, sizes differing by at
/// most one (empty only when the batch has fewer sequences than workers).
pub fn share(idx: &[usize], rank: usize, workers: usize) -> &[usize] {
    let n = idx.len();
    &idx[rank * n / workers..(rank + 1) * n / workers]
}

/// burn's backends draw from one process-wide generator; see [`Draws`].
static DRAWS: Mutex<()> = Mutex::new(());

/// burn-collective keeps one set of peers per backend and process: one data-parallel stage
/// at a time.
static SESSION: Mutex<()> = Mutex::new(());

/// Worker `rank`'s share of one optimizer step on its replica `t`: forward and backward of
/// its part of every micro-batch, the gradients and loss all-reduced with the other
/// workers, one global norm clipped, both optimizers stepped.
pub fn local_step<OP, OL>(
    rank: usize,
    job: &Job,
    device: &Device,
    t: Trained<OP, OL>,
    plan: &StepPlan,
) -> (Trained<OP, OL>, StepOut)
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let (opt, data, n) = (&job.opt, &*job.data, job.workers);
    let accum = plan.micro.len();
    let train_lm = t.optim_lm.is_some();
    let norm = plan.targets.max(1) as f64;
    let draws = Draws((n > 1 && job.dropout).then_some(&DRAWS));
    let (mut gp, mut gl) = (GradientsParams::new(), GradientsParams::new());
    let mut loss_sum = Tensor::<Compute, 1>::zeros([1], device);
    for (k, idx) in plan.micro.iter().enumerate() {
        let mine = share(idx, rank, n);
        if mine.is_empty() {
            continue;
        }
        let batch = data
            .batcher
            .batch::<Train>(cached_items(&data.train, mine, &data.cache), device);
        // Dropout depends on (seed, micro-batch, rank) only, so a resumed run draws what an
        // uninterrupted one would.
        let micro = (plan.step as usize * accum + k) * n + rank;
        let micro_seed = job.seed ^ (micro as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
        let micro_step = if opt.activation_checkpointing {
            recompute::micro_step
        } else {
            recompute::micro_step_plain
        };
        let m = micro_step(
            &t.projector,
            &t.lm,
            &batch,
            norm,
            train_lm,
            micro_seed,
            draws,
        );
        loss_sum = loss_sum + m.loss_sum;
        grads::accumulate::<Train, _>(&t.projector, &mut gp, m.projector);
        if train_lm {
            grads::accumulate::<Train, _>(&t.lm, &mut gl, m.lm);
        }
    }

    let acc = Accumulated {
        projector: gp,
        lm: gl,
        loss_sum,
    };
    let lr = (plan.lr_projector, plan.lr_lm);
    apply(rank, n, t, acc, norm, opt.clip_grad_norm, lr)
}

/// A step's gradients, summed over its micro-batches, and its summed loss (on the device).
pub struct Accumulated {
    pub projector: GradientsParams,
    /// Empty when the LM is frozen (stage 1).
    pub lm: GradientsParams,
    pub loss_sum: Tensor<Compute, 1>,
}

/// The end of every optimizer step, with one worker or several (and `harness bench`'s):
/// everything trained laid in one buffer with the loss at its end, all-reduced across the
/// `workers`, one host read of [squared norm, loss], one global norm clipped (as torch's
/// `clip_grad_norm_` over all parameters; `clip <= 0` only measures), both optimizers
/// stepped at `lr` (projector, LM). `norm` is what the summed loss is divided by.
pub fn apply<OP, OL>(
    rank: usize,
    workers: usize,
    mut t: Trained<OP, OL>,
    acc: Accumulated,
    norm: f64,
    clip: f64,
    lr: (f64, f64),
) -> (Trained<OP, OL>, StepOut)
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let train_lm = t.optim_lm.is_some();
    let fp = grads::flatten::<Train, _>(&t.projector, acc.projector);
    let np = fp.dims()[0];
    let mut parts = vec![fp];
    if train_lm {
        parts.push(grads::flatten::<Train, _>(&t.lm, acc.lm));
    }
    parts.push(acc.loss_sum);
    let buffer = Tensor::cat(parts, 0);
    let r = reduce(rank, workers, buffer, clip);
    let values = r.grads;
    let total = values.dims()[0];
    let gp = grads::unflatten::<Train, _>(&t.projector, values.clone().slice(0..np));
    t.projector = t.optim_projector.step(lr.0, t.projector, gp);
    if let Some(o) = &mut t.optim_lm {
        let gl = grads::unflatten::<Train, _>(&t.lm, values.slice(np..total));
        t.lm = o.step(lr.1, t.lm, gl);
    }
    let out = StepOut {
        loss: r.loss_sum / norm,
        grad_norm: r.grad_norm,
        allreduce_s: r.allreduce_s,
    };
    (t, out)
}

/// A step's flat buffer after [`reduce`].
pub struct Reduced {
    /// The gradients summed over the workers, clipped.
    pub grads: Tensor<Compute, 1>,
    /// Global norm before clipping.
    pub grad_norm: f64,
    /// The loss entry summed over the workers.
    pub loss_sum: f64,
    pub allreduce_s: f64,
}

/// `buffer` (gradients laid end to end, the summed loss last) all-reduced across the
/// `workers`, one host read of [squared norm, loss], the gradients clipped to global norm
/// `clip` (as torch's `clip_grad_norm_` over all parameters; `clip <= 0` only measures).
pub fn reduce(rank: usize, workers: usize, mut buffer: Tensor<Compute, 1>, clip: f64) -> Reduced {
    let mut allreduce_s = 0.0;
    if workers > 1 {
        let t0 = Instant::now();
        buffer = all_reduce(rank, buffer);
        allreduce_s = t0.elapsed().as_secs_f64();
    }
    let total = buffer.dims()[0];
    let values = buffer.clone().slice(0..total - 1);
    let read = Tensor::cat(
        vec![
            values.clone().square().sum(),
            buffer.slice(total - 1..total),
        ],
        0,
    )
    .into_data()
    .convert::<f64>()
    .to_vec::<f64>()
    .expect("two f64");
    let grad_norm = read[0].sqrt();
    let grads = if clip > 0.0 && grad_norm > clip {
        values.mul_scalar(clip / (grad_norm + 1e-6))
    } else {
        values
    };
    Reduced {
        grads,
        grad_norm,
        loss_sum: read[1],
        allreduce_s,
    }
}

/// The sum over all workers of each worker's `buffer`.
fn all_reduce(rank: usize, buffer: Tensor<Compute, 1>) -> Tensor<Compute, 1> {
    let prim = buffer.into_primitive().tensor();
    match collective::all_reduce::<Compute>(PeerId(rank as u32), prim, ReduceOperation::Sum) {
        Ok(t) => Tensor::from_primitive(TensorPrimitive::Float(t)),
        // Only when a worker died mid-step (its panic follows) or the peers disagree.
        Err(e) => panic!("all-reduce of the gradients failed on worker {rank}: {e:?}"),
    }
}

struct Materialize;

impl burn::module::ModuleVisitor<Train> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Train, D>>) {
        let _ = param.val();
    }
}

/// Initializes every lazily initialized parameter of `m` now. burn draws a lazy
/// parameter's values on first use, and each clone of a module draws its own: replicas
/// made before that would start from different weights, and the draws would depend on
/// what ran before the first forward.
pub fn materialize<M: Module<Train>>(m: &M) {
    m.visit(&mut Materialize);
}

/// The workers besides rank 0, as rank 0 sees them.
pub struct Team {
    pub workers: usize,
    followers: Vec<Sender<Arc<StepPlan>>>,
}

impl Drop for Team {
    /// Rank 0 failing mid-step would leave the others waiting in the all-reduce forever:
    /// forgetting the collective's peers makes their calls fail, so their threads end too.
    fn drop(&mut self) {
        if std::thread::panicking() && self.workers > 1 {
            collective::reset_collective::<Compute>();
        }
    }
}

impl Team {
    /// Rank 0 alone: no threads, no all-reduce.
    pub fn solo() -> Self {
        Team {
            workers: 1,
            followers: vec![],
        }
    }

    /// Hands `plan` to every other worker (they compute their shares while rank 0 does).
    pub fn send(&self, plan: &Arc<StepPlan>) {
        for f in &self.followers {
            // A follower that stopped has panicked; the all-reduce reports it.
            let _ = f.send(plan.clone());
        }
    }
}

/// Runs `lead` as rank 0 with workers 1.. on `devices[1..]` following its plans, each on a
/// replica of `t` (same parameters and parameter ids, optimizer state included, moved to
/// its device; `t`'s parameters must be [`materialize`]d, or each replica would draw its
/// own initial values). The followers stop when `lead` returns.
pub fn with_team<OP, OL, R>(
    job: &Job,
    devices: &[Device],
    t: Trained<OP, OL>,
    lead: impl FnOnce(&Team, Trained<OP, OL>) -> R,
) -> R
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let _session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    let n = devices.len();
    std::thread::scope(|scope| {
        let mut followers = vec![];
        for (rank, device) in devices.iter().enumerate().skip(1) {
            let replica = Trained {
                projector: t.projector.clone().fork(device),
                optim_projector: t.optim_projector.clone(),
                lm: t.lm.clone().fork(device),
                optim_lm: t.optim_lm.clone(),
            };
            let (tx, rx) = channel::<Arc<StepPlan>>();
            followers.push(tx);
            scope.spawn(move || follow(rank, n, job, device, replica, rx));
        }
        register(0, n, &devices[0]);
        let team = Team {
            workers: n,
            followers,
        };
        let out = lead(&team, t);
        drop(team);
        let _ = collective::finish_collective::<Compute>(PeerId(0));
        out
    })
}

/// Runs `work(rank, device)` on one thread per entry of `devices` (rank 0 on the caller's
/// thread), all joined in one burn-collective session so that [`reduce`] sums across them,
/// and returns rank 0's result. Every worker must make the same sequence of [`reduce`]
/// calls, and decide to stop only from what a reduce returned (the same on all). A worker
/// that panics makes the others' all-reduce fail, so they end too, and the panic is raised
/// here.
pub fn with_peers<R: Send>(devices: &[Device], work: impl Fn(usize, &Device) -> R + Sync) -> R {
    if devices.len() == 1 {
        return work(0, &devices[0]);
    }
    let _session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    let n = devices.len();
    let work = &work;
    let threads = cpu_threads(n);
    let work = move |rank: usize, device: &Device| threads.run(|| work(rank, device));
    let work = &work;
    std::thread::scope(|scope| {
        for (rank, device) in devices.iter().enumerate().skip(1) {
            scope.spawn(move || {
                register(rank, n, device);
                let run = std::panic::AssertUnwindSafe(|| drop(work(rank, device)));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    collective::reset_collective::<Compute>();
                    std::panic::resume_unwind(panic);
                }
                let _ = collective::finish_collective::<Compute>(PeerId(rank as u32));
            });
        }
        register(0, n, &devices[0]);
        // Resets the collective if rank 0 panics, so the others' all-reduce fails too.
        let guard = Team {
            workers: n,
            followers: vec![],
        };
        let out = work(0, &devices[0]);
        drop(guard);
        let _ = collective::finish_collective::<Compute>(PeerId(0));
        out
    })
}

/// Where each of `n` workers runs its backend's parallel loops.
struct WorkerThreads(Option<usize>);

impl WorkerThreads {
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self
            .0
            .map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build())
        {
            Some(Ok(pool)) => pool.install(f),
            _ => f(),
        }
    }
}

/// On the CPU, each of `n` workers gets a thread pool of its own with its share of the
/// cores: sharing the global one, a worker waits while the other's loops run (two workers
/// on two cores kept 163% CPU busy, against 174% with a core each).
fn cpu_threads(n: usize) -> WorkerThreads {
    if cfg!(feature = "cuda") {
        return WorkerThreads(None);
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    WorkerThreads(Some((cores / n).max(1)))
}

// The CPU's device is Copy, CUDA's is not: the clones serve both builds.
#[allow(clippy::clone_on_copy)]
fn register(rank: usize, n: usize, device: &Device) {
    let cfg = CollectiveConfig::default().with_num_devices(n);
    if let Err(e) = collective::register::<Compute>(PeerId(rank as u32), device.clone(), cfg) {
        panic!("worker {rank} could not join the all-reduce: {e:?}");
    }
}

/// A follower's loop: one [`local_step`] per plan until rank 0 stops sending.
fn follow<OP, OL>(
    rank: usize,
    n: usize,
    job: &Job,
    device: &Device,
    mut t: Trained<OP, OL>,
    plans: Receiver<Arc<StepPlan>>,
) where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    register(rank, n, device);
    let run = std::panic::AssertUnwindSafe(|| {
        while let Ok(plan) = plans.recv() {
            t = local_step(rank, job, device, t, &plan).0;
        }
    });
    if let Err(panic) = std::panic::catch_unwind(run) {
        // Unblocks rank 0's pending all-reduce (it fails and says so), then re-raises.
        collective::reset_collective::<Compute>();
        std::panic::resume_unwind(panic);
    }
    let _ = collective::finish_collective::<Compute>(PeerId(rank as u32));
}

/// Times one all-reduce (sum) of `params` f32 values between one worker thread per entry
/// of `devices`, as the training step makes it: seconds on rank 0 for each of `repeats`
/// rounds (after one untimed), each ending when the result can be read back.
pub fn time_all_reduce(params: usize, devices: &[Device], repeats: usize) -> Vec<f64> {
    let _session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    let n = devices.len();
    let round = |rank: usize, device: &Device| {
        // Worker r sends r + 1 everywhere: the sum is n (n + 1) / 2, whoever reduces.
        let x = Tensor::<Compute, 1>::full([params], (rank + 1) as f32, device);
        let t0 = Instant::now();
        let y = all_reduce(rank, x);
        // Waits for the device: the sum's last element is read back (and checked).
        let last = y.slice(params - 1..params).into_data().to_vec::<f32>();
        let dt = t0.elapsed().as_secs_f64();
        let want = (n * (n + 1) / 2) as f32;
        assert_eq!(
            last.ok(),
            Some(vec![want]),
            "the all-reduce sums the workers' values"
        );
        dt
    };
    std::thread::scope(|scope| {
        for (rank, device) in devices.iter().enumerate().skip(1) {
            scope.spawn(move || {
                register(rank, n, device);
                for _ in 0..=repeats {
                    round(rank, device);
                }
                let _ = collective::finish_collective::<Compute>(PeerId(rank as u32));
            });
        }
        register(0, n, &devices[0]);
        round(0, &devices[0]);
        let times = (0..repeats).map(|_| round(0, &devices[0])).collect();
        let _ = collective::finish_collective::<Compute>(PeerId(0));
        times
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order() {
        let idx: Vec<usize> = (10..17).collect();
        for workers in 1..=9 {
            let parts: Vec<&[usize]> = (0..workers).map(|r| share(&idx, r, workers)).collect();
            assert_eq!(parts.concat(), idx, "{workers} workers");
            let (lo, hi) = parts.iter().fold((usize::MAX, 0), |(l, h), p| {
                (l.min(p.len()), h.max(p.len()))
            });
            assert!(hi - lo <= 1, "{workers} workers: sizes {lo}..{hi}");
        }
    }

    #[test]
    #[allow(clippy::clone_on_copy)]
    fn two_workers_sum_their_buffers() {
        // time_all_reduce checks each round's sum of the workers' distinct values.
        let dev = crate::backend::device(0);
        let t = time_all_reduce(1000, &[dev.clone(), dev], 2);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|s| s.is_finite() && *s >= 0.0));
    }
}
