//! The seam between orchestration and training: a stage runner trains one stage of one
//! experiment inside a run folder. The orchestration (claims, reuse, resume, status) lives
//! in [`crate::sweep`]; what a stage computes lives behind [`StageRunner`] ([`super::Trainer`]
//! for real, [`crate::sweep::runner::TestRunner`] for the orchestration tests).

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{Experiment, StageConfig};
use crate::store::metrics::MetricsWriter;
use crate::store::Store;

/// Everything a stage needs from the orchestration.
pub struct StageContext<'a> {
    /// 1 or 2.
    pub stage: u8,
    pub exp: &'a Experiment,
    pub run_id: &'a str,
    pub run_dir: PathBuf,
    /// `checkpoints/stage<N>/` of this run.
    pub checkpoint_dir: PathBuf,
    /// For stage 2: the stage-1 checkpoint folder it starts from (possibly another run's).
    pub stage1_dir: Option<PathBuf>,
    pub metrics: &'a mut MetricsWriter,
    /// Continue from the latest checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
}

impl StageContext<'_> {
    pub fn name(&self) -> String {
        format!("stage{}", self.stage)
    }

    pub fn opt(&self) -> &StageConfig {
        if self.stage == 1 {
            &self.exp.stage1
        } else {
            &self.exp.stage2.opt
        }
    }
}

/// The error a runner returns when SIGINT/SIGTERM asked it to stop.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by signal")]
pub struct Interrupted;

/// Trains one stage.
pub trait StageRunner {
    /// Short name recorded in `status.json` (`train`, `test`).
    fn name(&self) -> &'static str;
    /// Whether the experiment's checkpoints and data must exist to run.
    fn needs_inputs(&self) -> bool {
        true
    }
    fn run(&self, ctx: &mut StageContext) -> Result<()>;
    /// Work at the end of a run, after both stages (the `[[eval.bench]]` benchmarks);
    /// nothing by default. Returns [`Interrupted`] when a signal stopped it.
    fn after_stages(&self, _ctx: &mut RunContext) -> Result<()> {
        Ok(())
    }
}

/// What [`StageRunner::after_stages`] works with.
pub struct RunContext<'a> {
    pub store: &'a Store,
    pub run_id: &'a str,
    pub exp: &'a Experiment,
    pub metrics: &'a mut MetricsWriter,
}
