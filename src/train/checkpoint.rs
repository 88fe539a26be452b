//! Training checkpoints: `checkpoints/stage<N>/step-<step>/` holds the trainable weights,
//! the optimizer state and `state.json` (step, epoch; the data order and every random draw
//! are functions of the seed and the step, so the step is the data position and the RNG
//! state). The last `keep` are kept; `final/` holds the weights the next stage starts from.
//! Each checkpoint is written under a temporary name and renamed into place whole.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::Recorder;
use serde::{Deserialize, Serialize};

use crate::backend::Train;
use crate::fsutil;
use crate::model::assembly::{load_adapters, load_projector, WeightsRecorder as Rec};
use crate::model::phi::Phi;
use crate::model::projector::Projector;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    pub epoch: f64,
    pub total_steps: u64,
    /// Data-parallel workers that wrote it (1 for checkpoints from before there were any).
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

impl TrainState {
    pub fn new(total_steps: u64, workers: usize) -> Self {
        TrainState {
            step: 0,
            epoch: 0.0,
            total_steps,
            workers,
        }
    }
}

/// Refuses to resume a checkpoint written by another number of workers: the global batch,
/// and with it the data order from this step on, would change mid-stage. (A different
/// worker count is a different stage key, so the store never resumes across it; this
/// catches a checkpoint folder moved by hand.)
pub fn check_workers(ck: &Path, state: &TrainState, workers: usize) -> Result<()> {
    if state.workers != workers {
        anyhow::bail!(
            "{}: written by {} data-parallel worker(s), this run has {workers} (`devices`); \
             resume with the same number of devices, or start the stage afresh",
            ck.display(),
            state.workers
        );
    }
    Ok(())
}

fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// The newest complete checkpoint folder.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").exists()
        })
        .collect();
    v.sort();
    Ok(v)
}

/// What a stage trains: the projector, and in stage 2 the LM's adapters, each with its own
/// optimizer (they have their own learning rates).
pub struct Trained<OP, OL> {
    pub projector: Projector<Train>,
    pub optim_projector: OP,
    pub lm: Phi<Train>,
    pub optim_lm: Option<OL>,
}

fn write_parts<OP, OL>(dir: &Path, t: &Trained<OP, OL>, with_optim: bool) -> Result<()>
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    Rec::new()
        .record(t.projector.clone().into_record(), dir.join("projector"))
        .context("saving the projector")?;
    if t.optim_lm.is_some() {
        Rec::new()
            .record(t.lm.adapters().into_record(), dir.join("adapters"))
            .context("saving the adapters")?;
    }
    if with_optim {
        Rec::new()
            .record(
                t.optim_projector.to_record(),
                dir.join("optimizer_projector"),
            )
            .context("saving the optimizer")?;
        if let Some(o) = &t.optim_lm {
            Rec::new()
                .record(o.to_record(), dir.join("optimizer_lora"))
                .context("saving the optimizer")?;
        }
    }
    Ok(())
}

/// Writes a checkpoint for `state.step` and prunes all but the newest `keep`.
pub fn save<OP, OL>(dir: &Path, t: &Trained<OP, OL>, state: &TrainState, keep: usize) -> Result<()>
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let target = step_dir(dir, state.step);
    let tmp = dir.join(format!(".tmp-step-{}-{}", state.step, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_parts(&tmp, t, true)?;
    fsutil::write_json(&tmp.join("state.json"), state)?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target)
        .with_context(|| format!("cannot move checkpoint to {}", target.display()))?;
    fsutil::sync_dir(dir);
    let all = list(dir)?;
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

/// Restores the trained parts, their optimizers and the state from a checkpoint folder.
pub fn load<OP, OL>(
    ck: &Path,
    t: Trained<OP, OL>,
    device: &super::Device,
) -> Result<(Trained<OP, OL>, TrainState)>
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let rec = |name: &str| ck.join(name);
    let projector = load_projector(t.projector, ck, device)?;
    let optim_projector = t.optim_projector.load_record(
        Rec::new()
            .load(rec("optimizer_projector"), device)
            .with_context(|| format!("loading {}", rec("optimizer_projector.mpk").display()))?,
    );
    let (lm, optim_lm) = match t.optim_lm {
        Some(o) => {
            let lm = load_adapters(t.lm, ck, device)?;
            let o = o.load_record(
                Rec::new()
                    .load(rec("optimizer_lora"), device)
                    .with_context(|| format!("loading {}", rec("optimizer_lora.mpk").display()))?,
            );
            (lm, Some(o))
        }
        None => (t.lm, None),
    };
    let s: TrainState = fsutil::read_json(&ck.join("state.json"))?;
    Ok((
        Trained {
            projector,
            optim_projector,
            lm,
            optim_lm,
        },
        s,
    ))
}

/// Writes `final/` (projector, and adapters in stage 2): what the next stage, evaluation
/// and export load.
pub fn save_final<OP, OL>(dir: &Path, t: &Trained<OP, OL>) -> Result<()>
where
    OP: Optimizer<Projector<Train>, Train>,
    OL: Optimizer<Phi<Train>, Train>,
{
    let target = dir.join("final");
    let tmp = dir.join(format!(".tmp-final-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    write_parts(&tmp, t, false)?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target)?;
    fsutil::sync_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_another_worker_count_is_refused_with_its_folder() {
        let ck = Path::new("/runs/x/checkpoints/stage2/step-00000004");
        let state = TrainState::new(10, 1);
        assert!(check_workers(ck, &state, 1).is_ok());
        let e = check_workers(ck, &state, 2).unwrap_err().to_string();
        assert!(
            e.contains("step-00000004") && e.contains("1 data-parallel worker(s), this run has 2"),
            "{e}"
        );
        // Checkpoints from before data parallelism read as one worker.
        let old: TrainState =
            serde_json::from_str(r#"{"step": 4, "epoch": 0.5, "total_steps": 10}"#).unwrap();
        assert_eq!(old.workers, 1);
    }
}
