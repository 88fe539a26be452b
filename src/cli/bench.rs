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
    /// Instead of a step: time the all-reduce of this many f32 gradients between the
    /// workers of `--devices` (Phi-2's LoRA r 128 and the projector: ~190 M).
    #[arg(long, value_name = "PARAMS")]
    pub allreduce: Option<usize>,
    /// Devices for `--allreduce`, one worker each (`0,0` on the CPU).
    #[arg(long, value_delimiter = ',', default_value = "0,0")]
    pub devices: Vec<usize>,
    /// Timed rounds of `--allreduce`.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if let Some(params) = a.allreduce {
        return allreduce(params, &a.devices, a.repeats, a.json);
    }
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

fn allreduce(params: usize, devices: &[usize], repeats: usize, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        params > 0 && repeats > 0,
        "--allreduce and --repeats must be > 0"
    );
    anyhow::ensure!(
        devices.len() > 1,
        "--devices must list at least two workers"
    );
    crate::backend::check_devices(devices)?;
    let devs: Vec<_> = devices.iter().map(|&d| crate::backend::device(d)).collect();
    let mut times = crate::train::parallel::time_all_reduce(params, &devs, repeats);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = 4.0 * params as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "impl": "harness", "what": "allreduce", "backend": crate::backend::NAME,
                "params": params, "devices": devices, "bytes": bytes,
                "times_s": times, "median_s": median,
            })
        );
    } else {
        println!(
            "all-reduce of {params} f32 ({:.0} MB) over {} workers ({}): median {:.1} ms",
            bytes / 1e6,
            devices.len(),
            crate::backend::NAME,
            median * 1e3
        );
    }
    Ok(())
}
