//! `harness synth`: writes the synthetic shapes world (see [`crate::data::synth`]).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::data::synth::{generate, SynthOptions};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output directory (COCO layout plus instruct JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (train + val).
    #[arg(long, default_value_t = 2000)]
    pub images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the images written to val2017/.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn synth(a: SynthArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.images > 0, "--images must be positive");
    anyhow::ensure!(a.size >= 16, "--size must be at least 16 pixels");
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.val_fraction),
        "--val-fraction must be within 0..=1"
    );
    let t = Instant::now();
    let s = generate(
        &a.out,
        &SynthOptions {
            images: a.images,
            size: a.size,
            seed: a.seed,
            val_fraction: a.val_fraction,
            threads: a.threads,
        },
    )?;
    println!(
        "wrote {} train + {} val images, {} captions, {} conversations ({} questions) to {} in {:.1}s",
        s.train_images,
        s.val_images,
        s.captions,
        s.conversations,
        s.questions,
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    if s.bench.images > 0 {
        println!(
            "benchmark sets on {} val images: {} POPE questions ({}), {} GQA-style ({})",
            s.bench.images,
            s.bench.pope_questions,
            a.out.join("bench/pope").display(),
            s.bench.gqa_questions,
            a.out.join("bench/gqa").display()
        );
    }
    Ok(())
}
