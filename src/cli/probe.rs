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
    /// How the layers' linear weights are held: dense, or NF4-packed as they stream from
    /// the checkpoint (QLoRA's base; embeddings, `lm_head`, norms and biases stay dense).
    #[arg(long, value_enum, default_value = "none")]
    pub quant: QuantArg,
    /// With `--quant nf4`: quantize the block scales too (8-bit, block 256).
    #[arg(long)]
    pub double_quant: bool,
    /// With `--quant nf4`: dequantize every packed weight once on the host and run dense,
    /// the reference the packed path is checked against.
    #[arg(long)]
    pub dequantized: bool,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object: the logits file, the model's resident bytes by part, the peak
    /// memory and the times.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantArg {
    None,
    Nf4,
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
        ProbeCommand::Lm(a) => return lm(a),
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

fn lm(a: LmArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.quant == QuantArg::Nf4 || !(a.double_quant || a.dequantized),
        "--double-quant and --dequantized go with --quant nf4"
    );
    let opts = probe::LmProbe {
        quant: (a.quant == QuantArg::Nf4)
            .then(|| crate::model::nf4::Nf4Config::default().with_double_quant(a.double_quant)),
        dequantized: a.dequantized,
        adapter: a.adapter.clone(),
    };
    let r = probe::probe_lm_with(&a.model, &a.ids, &opts)?;
    probe::write(&a.out, &r.tensors)?;
    let m = &r.memory;
    if a.json {
        let j = serde_json::json!({
            "logits": a.out,
            "shape": r.tensors[0].1,
            "finite": r.tensors[0].2.iter().all(|v| v.is_finite()),
            "resident_bytes": {
                "packed_base": m.packed_base,
                "dense_base": m.dense_base,
                "dense_other": m.dense_other,
                "adapters": m.adapters,
                "total": m.total(),
            },
            "peak_anon_bytes": r.peak_anon_bytes,
            "peak_rss_bytes": r.peak_rss_bytes,
            "load_s": r.load_s,
            "forward_s": r.forward_s,
        });
        println!("{j}");
    } else {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        println!("logits {:?} -> {}", r.tensors[0].1, a.out.display());
        println!(
            "model: {:.3} GiB (packed base {:.3}, dense base {:.3}, other dense {:.3}, adapters {:.3})",
            gib(m.total()),
            gib(m.packed_base),
            gib(m.dense_base),
            gib(m.dense_other),
            gib(m.adapters)
        );
        println!(
            "peak anonymous memory {:.3} GiB, peak RSS {:.3} GiB; load {:.1} s, forward {:.1} s",
            gib(r.peak_anon_bytes as usize),
            gib(r.peak_rss_bytes as usize),
            r.load_s,
            r.forward_s
        );
    }
    Ok(())
}
