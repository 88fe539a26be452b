//! What a run will need, said before it starts (`--dry-run`): the CLIP feature cache on
//! disk (images x tokens x width x 2 bytes, f16) and the memory of the model each stage
//! trains, from the checkpoints' `config.json` and the data files' image counts. The model
//! figures are the weights and optimizer state, exactly as the loaders lay them out;
//! activations come on top (BENCHMARKS.md has measured figures).

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::{Experiment, FeatureSelect, Quant};
use crate::model::clip::ClipVisionConfig;
use crate::model::phi::PhiConfig;

/// Bytes per weight of an NF4 base: half a byte of code, plus the block scales (one f32 per
/// 64 weights, or one byte per 64 with double quantization and an f32 per 256 blocks).
fn nf4_bytes_per_weight(double_quant: bool) -> f64 {
    if double_quant {
        0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0)
    } else {
        0.5 + 4.0 / 64.0
    }
}

/// Parameter counts of a Phi: (the layers' linear weights, everything else).
fn phi_params(c: &PhiConfig) -> (u64, u64) {
    let (d, f, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let kv = (c.num_key_value_heads * c.head_dim()) as u64;
    let l = c.num_hidden_layers as u64;
    let linears = l * (d * d + 2 * d * kv + d * d + 2 * d * f);
    let biases = l * (d + 2 * kv + d + f + d);
    let norms = (l + 1) * 2 * d;
    let head = if c.tie_word_embeddings { v } else { v * d + v };
    (linears, biases + norms + v * d + head)
}

/// Adapter parameters of LoRA rank `r` on `targets` of every layer.
fn adapter_params(c: &PhiConfig, r: u64, targets: &[String]) -> u64 {
    let (d, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    let kv = (c.num_key_value_heads * c.head_dim()) as u64;
    let per_layer: u64 = targets
        .iter()
        .map(|t| match t.as_str() {
            "q_proj" | "dense" => r * (d + d),
            "k_proj" | "v_proj" => r * (d + kv),
            "fc1" | "fc2" => r * (d + f),
            _ => 0,
        })
        .sum();
    per_layer * c.num_hidden_layers as u64
}

/// The projector's parameters (first linear, then `depth` blocks of LN + two linears).
fn projector_params(exp: &Experiment, dv: u64, d: u64) -> u64 {
    let first = dv * d + d;
    let depth = exp.model.projector_depth.max(0) as u64;
    match exp.model.projector {
        crate::config::ProjectorKind::Residual => first + depth * (2 * d + 2 * (d * d + d)),
        crate::config::ProjectorKind::Mlp2xGelu => first + d * d + d,
    }
}

/// Distinct images a stage reads (train split), from its data file; `None` when the file
/// is not there.
fn images_in(path: &Path, stage: u8) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(match stage {
        1 => v["images"].as_array()?.len(),
        _ => v
            .as_array()?
            .iter()
            .filter_map(|c| c["image"].as_str())
            .collect::<BTreeSet<_>>()
            .len(),
    })
}

fn human(bytes: f64) -> String {
    const GB: f64 = 1e9;
    if bytes >= GB {
        format!("{:.1} GB", bytes / GB)
    } else {
        format!("{:.0} MB", bytes / 1e6)
    }
}

/// One line per stage: the feature cache it needs and the model it trains.
pub fn describe(exp: &Experiment) -> String {
    let world = Path::new(&exp.data.coco_root);
    let vision = crate::backbones::resolve(&exp.model.vision, world)
        .ok()
        .and_then(|d| ClipVisionConfig::load(&d).ok());
    let lm = crate::backbones::resolve(&exp.model.lm, world)
        .ok()
        .and_then(|d| PhiConfig::load(&d).ok());
    let (Some(v), Some(c)) = (vision, lm) else {
        return "  estimate: the backbones' config.json are not there yet\n".into();
    };
    let tokens = v.num_patches() + usize::from(exp.model.feature_select == FeatureSelect::ClsPatch);
    let per_image = (tokens * v.hidden_size * 2) as f64;
    // The dense LM in its compute dtype: bf16 on a GPU (`auto`), else f32.
    let dense = match crate::backend::lm_dtype(exp.model.dtype) {
        Some(d) => d.size() as f64,
        None => 4.0,
    };
    let (linears, other) = phi_params(&c);
    let (linears, other) = (linears as f64, other as f64);
    // Trained f32 parameters carry their gradient and AdamW's two moments: 16 bytes each.
    let projector = projector_params(exp, v.hidden_size as u64, c.hidden_size as u64) as f64 * 16.0;
    let mut s = String::new();
    for stage in [1u8, 2] {
        let (file, what) = if stage == 1 {
            (
                world.join("annotations").join("captions_train2017.json"),
                "train images",
            )
        } else {
            (Path::new(&exp.data.instruct_json).to_path_buf(), "images")
        };
        let cache = match images_in(&file, stage) {
            Some(n) => format!(
                "feature cache {} for {n} {what} ({tokens} tokens x {})",
                human(n as f64 * per_image),
                v.hidden_size
            ),
            None => format!(
                "feature cache {} per image ({tokens} tokens x {}; {} not found)",
                human(per_image),
                v.hidden_size,
                file.display()
            ),
        };
        let model = if stage == 1 {
            let lm = (linears + other) * dense;
            format!(
                "model {} (LM {} dense, projector {} with its optimizer)",
                human(lm + projector),
                human(lm),
                human(projector)
            )
        } else {
            let s2 = &exp.stage2;
            let packed = match s2.quant {
                Quant::Nf4 => linears * nf4_bytes_per_weight(s2.double_quant),
                Quant::None => linears * dense,
            };
            let base = packed + other * dense;
            let adapters =
                adapter_params(&c, s2.lora_rank.max(0) as u64, &s2.lora_targets) as f64 * 16.0;
            format!(
                "model {} (LM {}: linears {}{}, the rest {} dense; adapters {} and projector {} with their optimizers)",
                human(base + adapters + projector),
                human(base),
                human(packed),
                if s2.quant == Quant::Nf4 { " NF4" } else { " dense" },
                human(other * dense),
                human(adapters),
                human(projector)
            )
        };
        s.push_str(&format!("  estimate stage {stage}: {cache}; {model}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// microsoft/phi-2's numbers: 2.78B parameters, of which 2.52B in the layers' linears.
    #[test]
    fn phi2_parameter_counts() {
        let c = PhiConfig::new(51200, 2560, 10240, 32, 32, 32);
        let (linears, other) = phi_params(&c);
        assert_eq!(linears, 32 * (4 * 2560 * 2560 + 2 * 2560 * 10240));
        assert_eq!(linears + other, 2_779_683_840);
        let targets: Vec<String> = crate::config::LORA_TARGETS
            .iter()
            .map(|s| s.to_string())
            .collect();
        // r 128 on the six linears: 128 * (4 * 5120 + 2 * 12800) per layer.
        assert_eq!(
            adapter_params(&c, 128, &targets),
            32 * 128 * (4 * 5120 + 2 * 12800)
        );
    }
}
