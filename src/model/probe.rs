//! The library side of `harness probe`: run a checkpoint on given inputs and return the
//! numbers another implementation can be compared with (float32, row-major).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;

use super::checkpoint::{write_f32_safetensors, Checkpoint};
use super::clip::ClipVision;
use super::lora::LoraConfig;
use super::nf4::Nf4Config;
use super::phi::{ModelMemory, Phi, PhiConfig};
use super::preprocess::{load_image, preprocess_sized, PreprocessConfig};
use crate::backend::{Compute, PeakAnon};

/// A named float32 tensor: (name, shape, values).
pub type Named = (&'static str, Vec<usize>, Vec<f32>);

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data().convert::<f32>();
    let shape = data.shape.to_vec();
    (shape, data.to_vec::<f32>().expect("f32 data"))
}

/// `logits` `[T, vocab]` of the LM in `model_dir` for one sequence of ids.
pub fn probe_lm(model_dir: &Path, ids: &[i64]) -> anyhow::Result<Vec<Named>> {
    probe_lm_adapted(model_dir, None, ids)
}

/// [`probe_lm`] with a PEFT LoRA adapter folder (as `harness export` writes it) applied to
/// the f32 base, as `PeftModel.from_pretrained` does.
pub fn probe_lm_adapted(
    model_dir: &Path,
    adapter: Option<&Path>,
    ids: &[i64],
) -> anyhow::Result<Vec<Named>> {
    let opts = LmProbe {
        adapter: adapter.map(Path::to_path_buf),
        ..Default::default()
    };
    Ok(probe_lm_with(model_dir, ids, &opts)?.tensors)
}

/// How `harness probe lm` loads the model.
#[derive(Debug, Clone, Default)]
pub struct LmProbe {
    /// NF4-pack the layers' linear weights as they are read (QLoRA's base).
    pub quant: Option<Nf4Config>,
    /// With `quant`: dequantize every packed weight once on the host into a dense f32 one
    /// before the forward pass, the reference the packed path must equal.
    pub dequantized: bool,
    /// A PEFT LoRA adapter folder applied to the base.
    pub adapter: Option<PathBuf>,
}

/// What a probe computed and what it cost.
#[derive(Debug)]
pub struct LmProbeReport {
    pub tensors: Vec<Named>,
    /// Bytes the loaded model holds, by part.
    pub memory: ModelMemory,
    /// The highest anonymous resident memory of the process during the probe (the model
    /// as loaded plus the forward pass; mapped checkpoint pages left out).
    pub peak_anon_bytes: u64,
    /// Peak resident memory including mapped pages (`VmHWM`).
    pub peak_rss_bytes: u64,
    pub load_s: f64,
    pub forward_s: f64,
}

/// [`probe_lm`] with the model loaded as `opts` says, and the memory it held.
pub fn probe_lm_with(
    model_dir: &Path,
    ids: &[i64],
    opts: &LmProbe,
) -> anyhow::Result<LmProbeReport> {
    anyhow::ensure!(!ids.is_empty(), "no token ids given");
    anyhow::ensure!(
        !opts.dequantized || opts.quant.is_some(),
        "dequantized is the reference of an NF4 probe: give it with quant"
    );
    let peak = PeakAnon::start();
    let device = Default::default();
    let t0 = Instant::now();
    let cfg = PhiConfig::load(model_dir)?;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= cfg.vocab_size) {
        anyhow::bail!(
            "token id {bad} is outside the vocabulary (0..{})",
            cfg.vocab_size
        );
    }
    let lora = LoraConfig {
        quant: opts.quant,
        ..LoraConfig::frozen()
    };
    let ckpt = Checkpoint::open(model_dir)?;
    let mut lm = Phi::<Compute>::load_with(&ckpt, &cfg, &device, &lora)?;
    drop(ckpt);
    if opts.dequantized {
        for l in &mut lm.layers {
            for (_, x) in l.linears_mut() {
                x.dequantize_base(&device);
            }
        }
    }
    if let Some(dir) = &opts.adapter {
        lm = super::peft::load_adapter(lm, dir, &device)?;
    }
    let memory = lm.memory();
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let t = Tensor::<Compute, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &device,
    );
    let logits = lm.forward(t, None);
    let [_, n, v] = logits.dims();
    let (_, vals) = values(logits.reshape([n, v]));
    Ok(LmProbeReport {
        tensors: vec![("logits", vec![n, v], vals)],
        memory,
        peak_anon_bytes: peak.peak(),
        peak_rss_bytes: crate::backend::host_memory().peak_rss,
        load_s,
        forward_s: t1.elapsed().as_secs_f64(),
    })
}

/// `pixel_values` `[3, H, W]`, `hidden_m2` and `hidden_m1` `[tokens, d]` (HF
/// `hidden_states[-2]` and `[-1]`, CLS included) of the vision tower in `model_dir`, with the
/// checkpoint's own `preprocessor_config.json`.
pub fn probe_vision(model_dir: &Path, image: &Path) -> anyhow::Result<Vec<Named>> {
    let device = Default::default();
    let pcfg = PreprocessConfig::load(model_dir)?;
    let (tower, _) = ClipVision::<Compute>::from_dir(model_dir, &device)?;
    let img = load_image(image)?;
    let (px, (h, w)) = preprocess_sized(&img, &pcfg);
    let pixels =
        Tensor::<Compute, 4>::from_data(TensorData::new(px.clone(), [1, 3, h, w]), &device);
    let hs = tower.hidden_states(pixels);
    let n = hs.len();
    let (s2, m2) = values(hs[n - 2].clone());
    let (s1, m1) = values(hs[n - 1].clone());
    Ok(vec![
        ("pixel_values", vec![3, h, w], px),
        ("hidden_m2", s2[1..].to_vec(), m2),
        ("hidden_m1", s1[1..].to_vec(), m1),
    ])
}

/// Writes probe results as one safetensors file.
pub fn write(out: &Path, tensors: &[Named]) -> anyhow::Result<()> {
    let t: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (*n, s.clone(), v.clone()))
        .collect();
    write_f32_safetensors(out, &t)
}
