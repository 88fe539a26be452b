//! `harness bench`: step times on a named size (see `scripts/bench.sh` for the PyTorch
//! comparison).

use std::path::PathBuf;

use clap::Args;

use crate::train::bench::{self, BenchConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Sizes from a TOML file (keys as the flags, with `_`); the size flags are ignored
    /// then, `--nf4` is not.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub sizes: BenchConfig,
    /// Stage 2's frozen base: NF4-packed (QLoRA) or dense f32 (plain LoRA). Default: the
    /// config file's `nf4`, else true.
    #[arg(long, action = clap::ArgAction::Set)]
    pub nf4: Option<bool>,
    /// Which stage to time (each in its own process gives a clean peak memory).
    #[arg(long, default_value_t = 1)]
    pub stage: u8,
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => BenchConfig::load(p)?,
        None => a.sizes.clone(),
    };
    // A mode, not a size: until this override, `--config F --nf4 false` timed NF4.
    if let Some(nf4) = a.nf4 {
        cfg.nf4 = nf4;
    }
    let t = match a.stage {
        1 => bench::stage1(&cfg),
        2 => bench::stage2(&cfg),
        s => anyhow::bail!("--stage is 1 or 2, not {s}"),
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "impl": "harness", "backend": crate::backend::NAME, "config": cfg, "timing": t })
        );
    } else {
        println!(
            "harness ({}) {}: median {:.2} ms/step, mean {:.2}, {:.0} tokens/s, peak RSS {:.1} MiB",
            crate::backend::NAME,
            t.stage,
            t.median_ms,
            t.mean_ms,
            t.tokens_per_s,
            t.peak_rss_bytes / 1048576.0
        );
    }
    Ok(())
}
