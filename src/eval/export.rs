//! `harness export`: a finished run's trained weights in formats other tools read.
//!
//! `OUT/` receives:
//! - `adapter_config.json`, `adapter_model.safetensors`: the stage-2 LoRA adapters in PEFT's
//!   layout for `PhiForCausalLM` ([`crate::model::peft`]), loadable with
//!   `PeftModel.from_pretrained(base, OUT)` (stage-2 runs only);
//! - `projector.safetensors`: the projector of the exported stage in PyTorch layout
//!   (`input.weight` `[out, in]`, `blocks.{i}.{norm,w1,w2}.*`, `output.*`), the names
//!   [`crate::model::projector::Projector::load`] reads back with an empty prefix;
//! - `projector_config.json`: its shape and the vision features it expects;
//! - `harness_run.toml`: the run's resolved experiment;
//! - `README.md`: a model card with the run id, commit, config and final metrics.
//!
//! Only `config.json` of the backbones is read: the base weights are not needed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use super::session::{stage_final_dir, weights_code};
use crate::backend::Compute;
use crate::model::assembly;
use crate::model::clip::ClipVisionConfig;
use crate::model::lora::LoraConfig;
use crate::model::peft::{self, PeftLoraConfig};
use crate::model::phi::PhiConfig;
use crate::model::projector::Projector;
use crate::store::Store;

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// `base_model_name_or_path` written into `adapter_config.json` (e.g.
    /// `microsoft/phi-2`); default: the run's LM checkpoint folder.
    pub base_model: Option<String>,
    /// Export this stage (1: projector only); default: 2 when completed, else 1.
    pub stage: Option<u8>,
}

/// What [`export_run`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub run_id: String,
    pub stage: u8,
    /// The PEFT config written, when the run has stage-2 adapters.
    pub adapter: Option<PeftLoraConfig>,
    pub files: Vec<PathBuf>,
}

/// Exports run `reference` into `out` (created if needed; files there are replaced).
pub fn export_run(
    store: &Store,
    reference: &str,
    out: &Path,
    opts: &ExportOptions,
) -> Result<Exported> {
    let run_id = store.resolve(reference)?;
    let exp = store.read_experiment(&run_id)?;
    let s2 = stage_final_dir(store, &run_id, 2)?;
    let s1 = stage_final_dir(store, &run_id, 1)?;
    let (stage, weights) = match (opts.stage, s2, s1) {
        (None | Some(2), Some(d), _) => (2u8, d),
        (Some(2), None, _) => {
            anyhow::bail!("run {run_id} has not completed stage 2: nothing to export as an adapter")
        }
        (None | Some(1), _, Some(d)) => (1, d),
        (Some(s), _, _) if s != 1 && s != 2 => anyhow::bail!("there is no stage {s} (1 or 2)"),
        _ => anyhow::bail!("run {run_id} has no completed stage to export"),
    };
    let device = Default::default();
    let code = weights_code(store, &run_id, stage);
    let dirs = assembly::backbone_dirs_for_code(&exp, code.as_deref())?;
    let lm_dir = dirs.lm;
    let vcfg = ClipVisionConfig::load(&dirs.vision)?;
    let lcfg = PhiConfig::load(&lm_dir)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut files = vec![];

    // Projector.
    let pcfg = assembly::projector_config(&exp, vcfg.hidden_size, lcfg.hidden_size);
    let projector: Projector<Compute> = pcfg.init(&device);
    let projector = assembly::load_projector(projector, &weights, &device)?;
    let p = out.join("projector.safetensors");
    peft::write_safetensors(&p, &projector.to_torch())?;
    files.push(p);
    let p = out.join("projector_config.json");
    let with_cls = exp.model.feature_select == crate::config::FeatureSelect::ClsPatch;
    let pjson = json!({
        "kind": exp.model.projector,
        "d_vision": pcfg.d_vision,
        "d_lm": pcfg.d_lm,
        "depth": pcfg.depth,
        "block_hidden": pcfg.block_hidden,
        "layer_norm_eps": pcfg.layer_norm_eps,
        "vision_tower": exp.model.vision,
        "feature_layer": exp.model.feature_layer,
        "feature_with_cls": with_cls,
        "image_aspect": exp.model.image_aspect,
        "image_tokens": vcfg.num_patches() + usize::from(with_cls),
        "stage": stage,
    });
    crate::fsutil::write_atomic(
        &p,
        (serde_json::to_string_pretty(&pjson)? + "\n").as_bytes(),
    )?;
    files.push(p);

    // Adapters.
    let mut adapter = None;
    if stage == 2 {
        let lora = LoraConfig::from_stage2(&exp.stage2);
        let skeleton = peft::adapters_skeleton::<Compute>(&lcfg, &lora, &device);
        let adapters =
            assembly::load_record(skeleton, &weights, "adapters", "the LoRA adapters", &device)?;
        let base = opts
            .base_model
            .clone()
            .unwrap_or_else(|| lm_dir.display().to_string());
        adapter = Some(peft::write_adapter(out, &adapters, &lora, &base)?);
        files.push(out.join(peft::CONFIG_FILE));
        files.push(out.join(peft::WEIGHTS_FILE));
    }

    let p = out.join("harness_run.toml");
    crate::fsutil::write_atomic(&p, crate::config::to_toml(&exp).as_bytes())?;
    files.push(p);
    let p = out.join("README.md");
    let card = model_card(store, &run_id, &exp, stage, adapter.as_ref())?;
    crate::fsutil::write_atomic(&p, card.as_bytes())?;
    files.push(p);
    Ok(Exported {
        run_id,
        stage,
        adapter,
        files,
    })
}

/// The model card: identity, how to load it, config, final metrics.
fn model_card(
    store: &Store,
    run_id: &str,
    exp: &crate::config::Experiment,
    stage: u8,
    adapter: Option<&PeftLoraConfig>,
) -> Result<String> {
    let summary = crate::store::runs::summary(store, run_id)?;
    let mut s = String::new();
    writeln!(s, "# {} ({run_id})\n", exp.name)?;
    writeln!(
        s,
        "A LLaVA-style vision-language model trained with `harness`: a frozen CLIP vision tower, \
         a projector, and a Phi language model{}.\n",
        if adapter.is_some() {
            " with LoRA adapters"
        } else {
            " (frozen)"
        }
    )?;
    writeln!(s, "| | |\n|---|---|")?;
    writeln!(s, "| run | `{run_id}` |")?;
    writeln!(
        s,
        "| commit | `{}`{} |",
        summary.commit,
        if summary.dirty { " (dirty tree)" } else { "" }
    )?;
    writeln!(s, "| status | {} |", summary.status)?;
    writeln!(s, "| exported stage | {stage} |")?;
    writeln!(
        s,
        "| vision tower | `{}` (layer {}) |",
        exp.model.vision, exp.model.feature_layer
    )?;
    writeln!(s, "| language model | `{}` |", exp.model.lm)?;
    writeln!(
        s,
        "| projector | {:?}, depth {} |",
        exp.model.projector, exp.model.projector_depth
    )?;
    if let Some(a) = adapter {
        writeln!(
            s,
            "| LoRA | r {}, alpha {}, dropout {}, targets {} |",
            a.r,
            a.lora_alpha,
            a.lora_dropout,
            a.target_modules.join(", ")
        )?;
        writeln!(
            s,
            "| base during training | {:?}{} |",
            exp.stage2.quant,
            if exp.stage2.double_quant {
                " (double quant)"
            } else {
                ""
            }
        )?;
    }
    for (name, st) in &summary.stages {
        let from = if st.run_id == run_id {
            String::new()
        } else {
            format!(", from run `{}`", st.run_id)
        };
        writeln!(s, "| {name} | {}{from} |", st.state)?;
    }

    writeln!(s, "\n## Files\n")?;
    if adapter.is_some() {
        writeln!(s, "- `adapter_config.json`, `adapter_model.safetensors`: the LoRA adapters (PEFT format).")?;
    }
    writeln!(s, "- `projector.safetensors`, `projector_config.json`: the projector (PyTorch `[out, in]` layout).")?;
    writeln!(s, "- `harness_run.toml`: the resolved experiment.")?;
    if let Some(a) = adapter {
        writeln!(s, "\n## Loading the adapter\n")?;
        writeln!(
            s,
            "```python\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n\
             base = AutoModelForCausalLM.from_pretrained({:?})\n\
             model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n```\n",
            a.base_model_name_or_path.as_deref().unwrap_or("BASE")
        )?;
        if exp.stage2.quant == crate::config::Quant::Nf4 {
            writeln!(
                s,
                "The adapters were trained on an NF4-quantized base (QLoRA). On a full-precision \
                 base the outputs differ slightly from the trained model's; load the base in 4-bit \
                 NF4 (bitsandbytes, block 64{}) to match it.",
                if exp.stage2.double_quant {
                    ", double quantization"
                } else {
                    ""
                }
            )?;
        }
        writeln!(
            s,
            "\nThe image features (projector output) are spliced into the input embeddings at the \
             image slot; the text around it follows the run's `{}` chat template.",
            exp.data.template
        )?;
    }

    writeln!(s, "\n## Final metrics\n")?;
    let shown: Vec<(&String, &f64)> = summary
        .metrics
        .iter()
        .filter(|(k, _)| {
            let parts: Vec<&str> = k.split('/').collect();
            matches!(parts.get(1), Some(&"eval") | Some(&"val")) || k.ends_with("/train/loss")
        })
        .collect();
    if shown.is_empty() {
        writeln!(s, "No metrics recorded.")?;
    } else {
        writeln!(s, "| metric | value |\n|---|---|")?;
        for (k, v) in shown {
            writeln!(s, "| {k} | {v:.6} |")?;
        }
    }
    writeln!(
        s,
        "\n## Config\n\n```toml\n{}```",
        crate::config::to_toml(exp)
    )?;
    Ok(s)
}
