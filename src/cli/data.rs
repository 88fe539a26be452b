//! `harness data check` and `harness data show`: what an experiment will train on, through
//! the same library code training uses ([`crate::data::samples`], [`crate::data::inspect`]).

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};

use crate::backbones::resolve;
use crate::config::{self, Experiment, FeatureSelect};
use crate::data::inspect;
use crate::data::samples::DataSpec;
use crate::data::SkipReason;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Counts, skips per reason (with record ids), token lengths and truncations.
    Check(CheckArgs),
    /// The first samples of a stage as the model sees them: text, ids, targets, image slot.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct Common {
    /// Experiment file.
    #[arg(long)]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// tokenizer.json to use instead of the LM checkpoint's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Image tokens per image instead of the vision checkpoint's patch count.
    #[arg(long)]
    pub image_tokens: Option<usize>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: Common,
    /// Skip decoding every image (fast; undecodable images then go uncounted).
    #[arg(long)]
    pub no_decode: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stage: u8,
    #[arg(long, default_value_t = 3)]
    pub n: usize,
}

pub fn data(c: DataCommand) -> anyhow::Result<()> {
    match c {
        DataCommand::Check(a) => check(a),
        DataCommand::Show(a) => show(a),
    }
}

/// The tokenizer and data spec an experiment implies.
pub fn spec_for(c: &Common) -> anyhow::Result<(DataSpec, tokenizers::Tokenizer)> {
    let exp = config::load(&c.config)?.exp;
    let tok_path = match &c.tokenizer {
        Some(p) => p.clone(),
        None => resolve(&exp.model.lm, exp.data.coco_root.as_ref())?.join("tokenizer.json"),
    };
    let tok = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("{}: {e}", tok_path.display()))?;
    let image_tokens = match c.image_tokens {
        Some(n) => n,
        None => image_tokens(&exp)?,
    };
    let pad_id = tok.token_to_id("<|endoftext|>").unwrap_or(0);
    let spec = DataSpec::from_experiment(&exp, image_tokens, pad_id)?;
    Ok((spec, tok))
}

fn image_tokens(exp: &Experiment) -> anyhow::Result<usize> {
    let v = &exp.model.vision;
    let cfg = crate::model::clip::ClipVisionConfig::load(&resolve(v, exp.data.coco_root.as_ref())?)
        .with_context(|| format!("reading the vision config of {v}"))?;
    Ok(cfg.num_patches() + usize::from(exp.model.feature_select == FeatureSelect::ClsPatch))
}

fn check(a: CheckArgs) -> anyhow::Result<()> {
    let (spec, tok) = spec_for(&a.common)?;
    let report = inspect::check(&spec, &tok, !a.no_decode)?;
    if a.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "max_len {}  image tokens {}",
        report.max_len, report.image_tokens
    );
    if report.image_tokens >= report.max_len {
        println!(
            "warning: max_len {} leaves no room after {} image tokens: every sample is cut",
            report.max_len, report.image_tokens
        );
    }
    for s in &report.splits {
        println!(
            "\n{}: {} samples, {} images, {} target tokens, tokens mean {:.1} max {}",
            s.split, s.samples, s.images, s.target_tokens, s.mean_tokens, s.max_tokens
        );
        println!(
            "  truncated: {} sequences, {} tokens",
            s.truncation.truncated_sequences, s.truncation.truncated_tokens
        );
        if !s.sources.is_empty() {
            println!("  by source (records kept / skipped):");
            for (name, c) in &s.sources {
                println!("    {name:<18} {:>7} / {}", c.kept, c.skipped);
            }
        }
        for r in SkipReason::ALL {
            let n = s.skips.count(r);
            if n > 0 {
                let ids = s.skips.ids(r);
                let more = if n > 10 { " ..." } else { "" };
                println!(
                    "  skipped {:<18} {:>7}  ids: {}{more}",
                    r.name(),
                    n,
                    ids.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        println!("  length histogram:");
        for (lo, hi, n) in &s.length_histogram {
            if *n > 0 {
                let hi = if *hi == 0 {
                    "inf".to_string()
                } else {
                    hi.to_string()
                };
                println!("    [{lo:>5}, {hi:>5}) {n}");
            }
        }
    }
    Ok(())
}

fn show(a: ShowArgs) -> anyhow::Result<()> {
    let (spec, tok) = spec_for(&a.common)?;
    let samples = inspect::show(&spec, &tok, a.stage, a.n)?;
    if a.common.json {
        for s in &samples {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(());
    }
    for s in &samples {
        println!("== {}  image {}", s.id, s.image.as_deref().unwrap_or("-"));
        println!("{}", s.text);
        println!("input_ids: {:?}", s.input_ids);
        println!("labels:    {:?}", s.labels);
        let p = &s.image_positions;
        if let (Some(first), Some(last)) = (p.first(), p.last()) {
            println!("image positions: {first}..={last} ({} tokens)", p.len());
        }
        if s.truncated > 0 {
            println!("truncated: {} tokens cut", s.truncated);
        }
        println!();
    }
    Ok(())
}
