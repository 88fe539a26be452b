//! `harness synth`: writes the synthetic shapes world (see [`crate::data::synth`]);
//! `harness synth backbone --like NAME --out DIR` writes a real-size random checkpoint
//! (see [`crate::model::synth_backbone`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::data::synth::{generate, SynthOptions};
use crate::model::synth_backbone::{self as sb, DrawOptions, Like, Shrink, WriteOptions};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SynthArgs {
    #[command(subcommand)]
    pub command: Option<SynthCommand>,
    /// Output directory (COCO layout plus instruct JSON).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Number of images (train + val). The default makes 1,800 training pictures and 450
    /// val pictures (about 1,350 val questions, enough to score QA on 1,000).
    #[arg(long, default_value_t = 2250)]
    pub images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the images written to val2017/.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Subcommand, Debug)]
pub enum SynthCommand {
    /// Write a random-weight checkpoint with the exact files, tensor names, shapes, dtypes
    /// and shard layout of a hub model (phi-2, clip-vit-base-patch16, clip-vit-base-patch32,
    /// clip-vit-large-patch14-336), for testing at real size without a download.
    Backbone(BackboneArgs),
}

#[derive(Args, Debug)]
pub struct BackboneArgs {
    /// The model to imitate: phi-2, clip-vit-base-patch16, clip-vit-base-patch32,
    /// clip-vit-large-patch14-336 (with or without the `microsoft/` / `openai/` prefix).
    #[arg(long)]
    pub like: String,
    /// Output folder (written beside it under a temporary name, renamed when complete).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Standard deviation of the normal weights (matrices, embeddings, linear biases).
    #[arg(long, default_value_t = 0.02)]
    pub std: f32,
    /// Threads drawing weights (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Shard size like transformers' `max_shard_size` (`5GB`, `200MB`, `2GiB`, bytes);
    /// default the hub's 5GB.
    #[arg(long)]
    pub max_shard_size: Option<String>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// Testing aid: keep only N layers (each CLIP tower); widths stay real.
    #[arg(long)]
    pub shrink_layers: Option<usize>,
    /// Testing aid: keep only N vocabulary rows (config says so; tokenizer unchanged).
    #[arg(long)]
    pub shrink_vocab: Option<usize>,
}

pub fn synth(a: SynthArgs) -> anyhow::Result<()> {
    match a.command {
        Some(SynthCommand::Backbone(b)) => backbone(b),
        None => world(a),
    }
}

fn world(a: SynthArgs) -> anyhow::Result<()> {
    let out = a.out.context("--out is required")?;
    anyhow::ensure!(a.images > 0, "--images must be positive");
    anyhow::ensure!(a.size >= 16, "--size must be at least 16 pixels");
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.val_fraction),
        "--val-fraction must be within 0..=1"
    );
    let t = Instant::now();
    let s = generate(
        &out,
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
        out.display(),
        t.elapsed().as_secs_f64()
    );
    if s.bench.images > 0 {
        println!(
            "benchmark sets on {} val images: {} POPE questions ({}), {} GQA-style ({})",
            s.bench.images,
            s.bench.pope_questions,
            out.join("bench/pope").display(),
            s.bench.gqa_questions,
            out.join("bench/gqa").display()
        );
    }
    Ok(())
}

fn backbone(b: BackboneArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.std.is_finite() && b.std > 0.0,
        "--std must be a positive number, got {}",
        b.std
    );
    let like = Like::parse(&b.like)?;
    let spec = sb::spec(
        like,
        Shrink {
            layers: b.shrink_layers,
            vocab: b.shrink_vocab,
        },
    )?;
    let max_shard_bytes = b
        .max_shard_size
        .as_deref()
        .map(parse_size)
        .transpose()
        .context("--max-shard-size")?;
    let w = sb::write_backbone(
        &spec,
        &b.out,
        &WriteOptions {
            draw: DrawOptions {
                seed: b.seed,
                std: b.std,
                threads: b.threads,
            },
            max_shard_bytes,
            force: b.force,
            progress: true,
        },
    )?;
    let bytes: u64 = w.files.iter().map(|(_, n)| n).sum();
    println!(
        "wrote {} ({} tensors, {:.3} B parameters, {:.2} GB in {} files) to {} in {:.1}s",
        like.repo(),
        w.tensors,
        w.params as f64 / 1e9,
        bytes as f64 / 1e9,
        w.files.len(),
        w.dir.display(),
        w.seconds
    );
    Ok(())
}

/// A size as transformers' `convert_file_size_to_int` reads it: `5GB` is 5 x 10^9 bytes,
/// `5GiB` 5 x 2^30, `5Gb` gigabits (/8); plain digits are bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a size like 5GB, 200MB or 1048576"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "Kb" => 1_000 / 8,
        "Mb" => 1_000_000 / 8,
        "Gb" => 1_000_000_000 / 8,
        other => anyhow::bail!("`{s}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    anyhow::ensure!(n > 0, "`{s}`: a shard size must be positive");
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("200MB").unwrap(), 200_000_000);
        assert_eq!(parse_size("8Gb").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1_048_576);
        assert!(parse_size("5TB")
            .unwrap_err()
            .to_string()
            .contains("unknown unit `TB`"));
        assert!(parse_size("GB").is_err());
        assert!(parse_size("0MB").is_err());
    }

    #[test]
    fn synth_keeps_its_world_form_and_gains_backbone() {
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args);
        let world = parse(&["harness", "synth", "--out", "data/synth"]).unwrap();
        match world.command {
            crate::cli::Command::Synth(a) => {
                assert!(a.command.is_none());
                assert_eq!(a.out.unwrap(), PathBuf::from("data/synth"));
                assert_eq!(a.images, 2250);
            }
            other => panic!("{other:?}"),
        }
        let bb = parse(&[
            "harness", "synth", "backbone", "--like", "phi-2", "--out", "x", "--seed", "3",
        ])
        .unwrap();
        match bb.command {
            crate::cli::Command::Synth(SynthArgs {
                command: Some(SynthCommand::Backbone(b)),
                ..
            }) => {
                assert_eq!((b.like.as_str(), b.seed, b.std), ("phi-2", 3, 0.02));
                assert_eq!(b.out, PathBuf::from("x"));
            }
            other => panic!("{other:?}"),
        }
        // The world needs --out; the two forms do not mix.
        assert!(parse(&["harness", "synth"]).is_err());
        assert!(parse(&[
            "harness", "synth", "--images", "3", "backbone", "--like", "phi-2", "--out", "x"
        ])
        .is_err());
        assert!(parse(&["harness", "synth", "backbone", "--out", "x"]).is_err());
    }
}
