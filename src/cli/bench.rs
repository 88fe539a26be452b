//! `harness bench`: step times on a named size (see `scripts/bench.sh` for the PyTorch
//! comparison).

use std::path::PathBuf;

use clap::Args;

use crate::bench::{self, BenchConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Sizes from a TOML file (keys as the flags, with `_`); flags are ignored then.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub sizes: BenchConfig,
    /// Which stage to time (each in its own process gives a clean peak memory).
    #[arg(long, default_value_t = 1)]
    pub stage: u8,
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let cfg = match &a.config {
        Some(p) => BenchConfig::load(p)?,
        None => a.sizes.clone(),
    };
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
