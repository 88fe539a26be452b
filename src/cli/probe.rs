//! `harness probe`: run a checkpoint on fixed inputs and write the outputs (float32
//! safetensors) for comparison with another implementation (e.g. transformers).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::model::probe;

#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Language model: `logits` [T, vocab] for every position of `--ids`.
    Lm(LmArgs),
    /// Vision tower: `pixel_values` [3, H, W], `hidden_m2` and `hidden_m1` [tokens, d].
    Vision(VisionArgs),
    /// NF4 quantizer (QLoRA): `deq`, the tensor quantized and dequantized (same shape).
    Nf4(Nf4Args),
}

#[derive(Args, Debug)]
pub struct LmArgs {
    /// HF checkpoint folder (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true
    )]
    pub ids: Vec<i64>,
    /// A PEFT LoRA adapter folder (e.g. from `harness export`) applied to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct VisionArgs {
    /// HF checkpoint folder (config.json, preprocessor_config.json, safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Image file (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct Nf4Args {
    /// Safetensors file holding the tensor (F32, F16 or BF16).
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Name of the tensor in the file.
    #[arg(long)]
    pub tensor: String,
    /// Also quantize the block scales (8-bit, block 256), like bitsandbytes'
    /// `compress_statistics=True`.
    #[arg(long)]
    pub double_quant: bool,
    /// How double quantization picks 8-bit codes: `nearest` (bitsandbytes on CUDA) or
    /// `cpu-lut` (bitsandbytes >= 0.50 on the CPU, bit for bit).
    #[arg(long, default_value = "nearest")]
    pub dq_rounding: crate::model::nf4::DqRounding,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn probe(c: ProbeCommand) -> anyhow::Result<()> {
    let (out, tensors) = match c {
        ProbeCommand::Lm(a) => (
            a.out,
            probe::probe_lm_adapted(&a.model, a.adapter.as_deref(), &a.ids)?,
        ),
        ProbeCommand::Vision(a) => (a.out, probe::probe_vision(&a.model, &a.image)?),
        ProbeCommand::Nf4(a) => (
            a.out,
            crate::model::nf4::probe_nf4(&a.input, &a.tensor, a.double_quant, a.dq_rounding)?,
        ),
    };
    probe::write(&out, &tensors)?;
    for (name, shape, _) in &tensors {
        println!("{name} {shape:?}");
    }
    println!("wrote {}", out.display());
    Ok(())
}
