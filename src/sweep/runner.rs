//! Which stage runner trains: the real [`crate::train::Trainer`], or the orchestration
//! tests' stand-in.

use anyhow::{bail, Result};

use crate::train::stage::{Interrupted, StageContext, StageRunner};

/// The stage runner selected for this process: the real trainer, or, when
/// `HARNESS_STAGE_RUNNER=test`, the orchestration test runner.
pub fn default_runner() -> Box<dyn StageRunner> {
    match std::env::var("HARNESS_STAGE_RUNNER").as_deref() {
        Ok("test") => Box::new(TestRunner::from_env()),
        _ => Box::new(crate::train::Trainer),
    }
}

/// A stand-in stage for the orchestration tests: it trains nothing. It logs a synthetic
/// decreasing `loss` per step, checkpoints every `checkpoint_every` steps, honours interrupts and resumes from
/// its latest checkpoint, so claims, reuse, kill -9 and resume can be tested end to end
/// without models. Runs made with it record `runner = "test"` in `status.json`.
pub struct TestRunner {
    pub step_ms: u64,
}

impl TestRunner {
    pub fn from_env() -> Self {
        let step_ms = std::env::var("HARNESS_TEST_STEP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        TestRunner { step_ms }
    }
}

impl StageRunner for TestRunner {
    fn name(&self) -> &'static str {
        "test"
    }
    fn needs_inputs(&self) -> bool {
        false
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let steps = if ctx.opt().max_steps > 0 {
            ctx.opt().max_steps
        } else {
            10
        };
        std::fs::create_dir_all(&ctx.checkpoint_dir)?;
        let mut start = 0;
        if ctx.resume {
            for e in std::fs::read_dir(&ctx.checkpoint_dir)?.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if let Some(s) = n
                    .strip_prefix("step-")
                    .and_then(|s| s.strip_suffix(".json"))
                {
                    start = start.max(s.parse::<u64>().unwrap_or(0));
                }
            }
        }
        if let Some(d) = &ctx.stage1_dir {
            if !d.join("final.json").exists() {
                bail!("stage 1 result {} has no final checkpoint", d.display());
            }
        }
        let stage = ctx.name();
        for step in start + 1..=steps {
            if crate::store::interrupted() {
                ctx.metrics.flush()?;
                return Err(Interrupted.into());
            }
            std::thread::sleep(std::time::Duration::from_millis(self.step_ms));
            let loss = 1.0 / (1.0 + step as f64);
            ctx.metrics.log(
                &stage,
                "train",
                step,
                step as f64 / steps as f64,
                "loss",
                loss,
            )?;
            ctx.metrics.log(
                &stage,
                "train",
                step,
                step as f64 / steps as f64,
                "lr",
                ctx.opt().lr,
            )?;
            let every = ctx.opt().checkpoint_every;
            if every > 0 && step % every == 0 {
                // Metrics first: a checkpoint never claims steps whose metrics were lost.
                ctx.metrics.flush()?;
                let ck = ctx.checkpoint_dir.join(format!("step-{step}.json"));
                crate::fsutil::write_json(&ck, &serde_json::json!({ "step": step, "loss": loss }))?;
            }
        }
        crate::fsutil::write_json(
            &ctx.checkpoint_dir.join("final.json"),
            &serde_json::json!({ "steps": steps }),
        )?;
        Ok(())
    }
}
