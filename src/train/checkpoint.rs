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
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use serde::{Deserialize, Serialize};

use crate::backend::Train;
use crate::fsutil;
use crate::model::projector::Projector;

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    pub epoch: f64,
    pub total_steps: u64,
}

impl TrainState {
    pub fn new(total_steps: u64) -> Self {
        TrainState { step: 0, epoch: 0.0, total_steps }
    }
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
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").exists()
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Writes a checkpoint for `state.step` and prunes all but the newest `keep`.
pub fn save<O: Optimizer<Projector<Train>, Train>>(
    dir: &Path,
    projector: &Projector<Train>,
    optim: &O,
    state: &TrainState,
    keep: usize,
) -> Result<()> {
    let target = step_dir(dir, state.step);
    let tmp = dir.join(format!(".tmp-step-{}-{}", state.step, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    Rec::new().record(projector.clone().into_record(), tmp.join("projector")).context("saving the projector")?;
    Rec::new().record(optim.to_record(), tmp.join("optimizer")).context("saving the optimizer state")?;
    fsutil::write_json(&tmp.join("state.json"), state)?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target).with_context(|| format!("cannot move checkpoint to {}", target.display()))?;
    fsutil::sync_dir(dir);
    let all = list(dir)?;
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

/// Restores projector, optimizer and state from a checkpoint folder.
pub fn load<O: Optimizer<Projector<Train>, Train>>(
    ck: &Path,
    projector: Projector<Train>,
    optim: O,
    device: &super::Device,
) -> Result<(Projector<Train>, O, TrainState)> {
    let p = Rec::new()
        .load(ck.join("projector"), device)
        .with_context(|| format!("loading {}", ck.join("projector.mpk").display()))?;
    let o = Rec::new()
        .load(ck.join("optimizer"), device)
        .with_context(|| format!("loading {}", ck.join("optimizer.mpk").display()))?;
    let s: TrainState = fsutil::read_json(&ck.join("state.json"))?;
    Ok((projector.load_record(p), optim.load_record(o), s))
}

/// Writes `final/projector.mpk`, what the next stage (and evaluation) loads.
pub fn save_final(dir: &Path, projector: &Projector<Train>) -> Result<()> {
    let target = dir.join("final");
    let tmp = dir.join(format!(".tmp-final-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    Rec::new().record(projector.clone().into_record(), tmp.join("projector")).context("saving the projector")?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target)?;
    fsutil::sync_dir(dir);
    Ok(())
}

/// Loads projector weights from a `final/` (or step) folder into `projector`.
pub fn load_projector<B: burn::tensor::backend::Backend>(
    projector: Projector<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<Projector<B>> {
    let rec = Rec::new()
        .load(dir.join("projector"), device)
        .with_context(|| format!("loading the projector from {}", dir.join("projector.mpk").display()))?;
    Ok(projector.load_record(rec))
}
