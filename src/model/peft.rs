//! Phi's LoRA adapters in Hugging Face PEFT's on-disk layout, both ways.
//!
//! A PEFT adapter folder holds `adapter_config.json` (peft's `LoraConfig`) and
//! `adapter_model.safetensors`, whose keys are the adapted module's path in
//! `PeftModelForCausalLM` with the adapter name dropped:
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` `[r, in]` and
//! `...lora_B.weight` `[out, r]`, `.mlp.fc1` / `.mlp.fc2` for the MLP (checked against
//! what peft 0.21 `save_pretrained` writes for `PhiForCausalLM`). [`write_adapter`] writes
//! that, [`load_adapter`] puts such an adapter onto a loaded [`Phi`] (f32 or NF4 base).
//!
//! Supported on import: plain LoRA (`peft_type = "LORA"`, `bias = "none"`,
//! `fan_in_fan_out = false`, no DoRA, one rank and alpha for all modules, `use_rslora`
//! either way). Anything else is an error naming the field, never a silent mismatch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::Checkpoint;
use super::lora::{LoraAdapter, LoraConfig, LoraLinear};
use super::phi::{LayerAdapters, Phi, PhiAdapters, PhiConfig};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Key prefix of the LM's modules inside peft's `PeftModelForCausalLM`.
const PEFT_PREFIX: &str = "base_model.model.";

/// The fields of peft's `LoraConfig` we write and read (peft fills the rest with its
/// defaults on load; unknown fields here are ignored on import).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub bias: String,
    pub fan_in_fan_out: bool,
    pub inference_mode: bool,
    pub init_lora_weights: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
    #[serde(default)]
    pub layers_pattern: Option<Value>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, Value>,
}

impl PeftLoraConfig {
    /// peft's config for adapters made with `cfg` on the LM at `base_model`.
    pub fn from_lora(cfg: &LoraConfig, base_model: &str) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model.into()),
            revision: None,
            r: cfg.rank,
            lora_alpha: cfg.alpha,
            lora_dropout: cfg.dropout,
            target_modules: cfg.targets.clone(),
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: true,
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }

    /// The adapter settings this config describes (f32 base, no quantization), after
    /// checking it is a LoRA we reproduce exactly.
    pub fn to_lora(&self) -> Result<LoraConfig> {
        let bad = |field: &str, v: String| -> Result<LoraConfig> {
            bail!("unsupported PEFT adapter: {field} = {v} (harness imports plain LoRA only)")
        };
        if self.peft_type != "LORA" {
            return bad("peft_type", format!("{:?}", self.peft_type));
        }
        if self.bias != "none" {
            return bad("bias", format!("{:?}", self.bias));
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out", "true".into());
        }
        if self.use_dora {
            return bad("use_dora", "true".into());
        }
        if !self.rank_pattern.is_empty() {
            return bad("rank_pattern", format!("{:?}", self.rank_pattern));
        }
        if !self.alpha_pattern.is_empty() {
            return bad("alpha_pattern", format!("{:?}", self.alpha_pattern));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad("modules_to_save", format!("{:?}", self.modules_to_save));
        }
        if self
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return bad(
                "layers_to_transform",
                format!("{:?}", self.layers_to_transform),
            );
        }
        ensure!(self.r > 0, "PEFT adapter has r = 0");
        Ok(LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.target_modules.clone(),
            quant: None,
        })
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA (peft's `scaling`).
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The JSON peft writes (integral alpha as an integer, as peft stores it).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("serializable");
        if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            v["lora_alpha"] = Value::from(self.lora_alpha as i64);
        }
        v
    }
}

/// The adapters of `a` with their module path under the LM
/// (`model.layers.{i}.self_attn.q_proj`, ...), in a fixed order.
fn named_adapters<B: Backend>(a: &PhiAdapters<B>) -> Vec<(String, &Option<LoraAdapter<B>>)> {
    let mut out = vec![];
    for (i, l) in a.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        for (name, ad) in l.slots() {
            out.push((format!("{p}.{name}"), ad));
        }
    }
    out
}

/// Fresh adapters shaped for a Phi of `cfg` under `lora` (what a stage-2 checkpoint's
/// `adapters.mpk` loads into), without loading the base weights.
pub fn adapters_skeleton<B: Backend>(
    cfg: &PhiConfig,
    lora: &LoraConfig,
    device: &B::Device,
) -> PhiAdapters<B> {
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    let ad = |path: String, i, o| {
        lora.is_target(&path)
            .then(|| LoraAdapter::init(i, o, lora, device))
    };
    PhiAdapters {
        layers: (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                LayerAdapters {
                    q_proj: ad(format!("{p}.self_attn.q_proj"), d, d),
                    k_proj: ad(format!("{p}.self_attn.k_proj"), d, kv),
                    v_proj: ad(format!("{p}.self_attn.v_proj"), d, kv),
                    dense: ad(format!("{p}.self_attn.dense"), d, d),
                    fc1: ad(format!("{p}.mlp.fc1"), d, f),
                    fc2: ad(format!("{p}.mlp.fc2"), f, d),
                }
            })
            .collect(),
    }
}

fn layer_linears_mut<B: Backend>(lm: &mut Phi<B>) -> Vec<(String, &mut LoraLinear<B>)> {
    let mut out = vec![];
    for (i, l) in lm.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        for (name, lin) in l.linears_mut() {
            out.push((format!("{p}.{name}"), lin));
        }
    }
    out
}

/// peft's key of `lora_A` / `lora_B` for the module at `path`.
pub fn peft_key(path: &str, ab: char) -> String {
    format!("{PEFT_PREFIX}{path}.lora_{ab}.weight")
}

/// Every adapter as peft tensors: `(key, shape, row-major values)`, keys sorted.
pub fn adapter_tensors<B: Backend>(
    adapters: &PhiAdapters<B>,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = vec![];
    for (path, ad) in named_adapters(adapters) {
        if let Some(ad) = ad {
            let [d_in, r] = ad.a.val().dims();
            let d_out = ad.b.val().dims()[1];
            let (a, b) = ad.to_peft();
            out.push((peft_key(&path, 'A'), vec![r, d_in], a));
            out.push((peft_key(&path, 'B'), vec![d_out, r], b));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// Writes f32 tensors as safetensors with peft's / transformers' `{"format": "pt"}` header.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: BTreeMap<String, TensorView<'_>> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?))
        })
        .collect::<Result<_>>()?;
    let meta = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    let tmp = crate::fsutil::temp_sibling(path);
    safetensors::serialize_to_file(views, meta, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes adapters made with `cfg` (e.g. [`Phi::adapters`]) as a PEFT adapter folder for
/// `base_model` (written into `base_model_name_or_path`: a hub id or a checkpoint path).
pub fn write_adapter<B: Backend>(
    dir: &Path,
    adapters: &PhiAdapters<B>,
    cfg: &LoraConfig,
    base_model: &str,
) -> Result<PeftLoraConfig> {
    let tensors = adapter_tensors(adapters);
    ensure!(
        !tensors.is_empty(),
        "the model has no LoRA adapters to export"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pc = PeftLoraConfig::from_lora(cfg, base_model);
    let text = serde_json::to_string_pretty(&pc.to_json())? + "\n";
    crate::fsutil::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    Ok(pc)
}

/// Reads `dir/adapter_config.json`.
pub fn read_config(dir: &Path) -> Result<PeftLoraConfig> {
    let p = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a PEFT LoRA config", p.display()))
}

/// Puts the PEFT adapter in `dir` onto `lm` (its base already loaded, f32 or NF4), replacing
/// any adapters it had: every targeted linear gets the adapter from the file. Errors when
/// a targeted module has no weights, a shape differs, or the file holds keys no module takes.
pub fn load_adapter<B: Backend>(mut lm: Phi<B>, dir: &Path, device: &B::Device) -> Result<Phi<B>> {
    let pc = read_config(dir)?;
    let cfg = pc.to_lora()?;
    let file = dir.join(WEIGHTS_FILE);
    let ckpt = Checkpoint::open_file(&file)?;
    let mut used = BTreeSet::new();
    for (path, lin) in layer_linears_mut(&mut lm) {
        lin.lora = None;
        if !cfg.is_target(&path) {
            continue;
        }
        let (d_in, d_out) = (lin.base.d_in(), lin.base.d_out());
        let (ka, kb) = (peft_key(&path, 'A'), peft_key(&path, 'B'));
        let a = ckpt.read_f32(&ka, &[cfg.rank, d_in])?;
        let b = ckpt.read_f32(&kb, &[d_out, cfg.rank])?;
        let mut ad = LoraAdapter::from_peft(&a, &b, d_in, d_out, &cfg, device);
        ad.scaling = pc.scaling();
        lin.lora = Some(ad);
        used.insert(ka);
        used.insert(kb);
    }
    let extra: Vec<String> = ckpt
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect();
    ensure!(
        extra.is_empty(),
        "{}: tensors no module of this model takes (targets {:?}): {}",
        file.display(),
        cfg.targets,
        extra.join(", ")
    );
    ensure!(
        !used.is_empty(),
        "{}: no adapter matched the model's linears",
        file.display()
    );
    Ok(lm)
}
