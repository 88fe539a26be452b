//! `harness export --run RUN --out DIR`: the stage-2 LoRA adapters in PEFT's layout, the
//! projector (safetensors, PyTorch layout) and a model card.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::eval::export::{export_run, ExportOptions};
use crate::store::Store;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run id, unique id prefix, or experiment name (its latest run).
    #[arg(long)]
    pub run: String,
    /// Output folder (created; files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// `base_model_name_or_path` for adapter_config.json, e.g. microsoft/phi-2 (default:
    /// the run's LM checkpoint folder).
    #[arg(long)]
    pub base_model: Option<String>,
    /// Export this stage (default: 2 when completed, else 1, which has no adapters).
    #[arg(long)]
    pub stage: Option<u8>,
}

pub fn export(results: &Path, a: ExportArgs) -> anyhow::Result<()> {
    let opts = ExportOptions {
        base_model: a.base_model,
        stage: a.stage,
    };
    let e = export_run(&Store::new(results), &a.run, &a.out, &opts)?;
    println!("run {} (stage {} weights)", e.run_id, e.stage);
    match &e.adapter {
        Some(c) => println!(
            "LoRA r {} alpha {} on {}",
            c.r,
            c.lora_alpha,
            c.target_modules.join(",")
        ),
        None => println!("no LoRA adapters (stage 1 only): projector and model card"),
    }
    for f in &e.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}
