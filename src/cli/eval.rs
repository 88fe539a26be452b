//! `harness eval`: scoring outputs against references.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::eval::coco_files::evaluate_files;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Score captions in the COCO results format against COCO caption annotations
    /// (BLEU-1..4, ROUGE-L, CIDEr-D as pycocoevalcap computes them).
    Captions(CaptionsArgs),
}

#[derive(Args, Debug)]
pub struct CaptionsArgs {
    /// Predictions: `[{"image_id": int, "caption": str}, ...]`.
    #[arg(long)]
    pub pred: PathBuf,
    /// References: a COCO captions file such as `captions_val2017.json`.
    #[arg(long)]
    pub refs: PathBuf,
    /// Print one JSON object (keys Bleu_1..Bleu_4, ROUGE_L, CIDEr).
    #[arg(long)]
    pub json: bool,
}

pub fn eval(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Captions(a) => captions(a),
    }
}

fn captions(a: CaptionsArgs) -> anyhow::Result<()> {
    let s = evaluate_files(&a.pred, &a.refs)?;
    if a.json {
        let mut m = serde_json::Map::new();
        for (k, v) in s.named() {
            m.insert(k.into(), v.into());
        }
        println!("{}", serde_json::Value::Object(m));
    } else {
        println!("images scored: {}", s.images);
        for (k, v) in s.named() {
            println!("{k:<8} {v:.6}");
        }
        println!("METEOR   not computed (needs Java; not implemented)");
        println!("SPICE    not computed (needs Java; not implemented)");
    }
    Ok(())
}
