//! The backbones an experiment names: a checkpoint folder, or `builtin:NAME`, one of the
//! harness's own recipes (trained by [`crate::pretrain`] on the experiment's synthetic
//! world). This module is what a builtin *is* (its recipe and the key that hashes it) and
//! *where* it lives (`$HARNESS_CACHE/backbones/NAME-KEY`); building one is
//! [`crate::pretrain::builtin`]'s job, and a sweep does it before any run starts
//! ([`crate::sweep::backbones`]). Stages only resolve a backbone that exists.
//!
//! It sits on the ground floor: the experiment's stage keys ([`crate::config`]) include
//! each builtin's recipe key, so a changed recipe never reuses stages of the old one. The
//! cache key also covers the code fingerprint of the binary (the same one as the stage
//! keys', from the build script): the code that trains a backbone (`src/pretrain/`, and the
//! model, data and training code it calls) is part of what the backbone is, so after a
//! change there a sweep builds it anew rather than training stages on a stale one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// A recipe: what `harness pretrain` runs for a builtin name.
#[derive(Clone, Debug)]
pub enum Recipe {
    Clip(ClipPretrainOptions),
    Lm(LmPretrainOptions),
}

/// The builtin names, for error messages and docs.
pub const NAMES: [&str; 5] = ["clip-p8", "clip-p16", "phi-tiny", "clip-micro", "phi-micro"];

/// The recipe behind `builtin:NAME`.
pub fn recipe(name: &str) -> Result<Recipe> {
    let clip = |image_size, patch| {
        Recipe::Clip(ClipPretrainOptions {
            image_size,
            patch,
            ..Default::default()
        })
    };
    Ok(match name {
        // 4x4 patches of 8 px on 32 px images.
        "clip-p8" => clip(32, 8),
        // The same 16 tokens from 64 px images in patches of 16: more pixels, coarser patches.
        "clip-p16" => clip(64, 16),
        // A Phi that reads a scene description in its context (see `super::lm`). Batch 16:
        // more updates for the same tokens fit a CPU budget better. Length groups of 4: 16%
        // less time per step, and no worse: text-context QA 0.625 and 0.645 (seeds 0, 1)
        // against 0.66 and 0.54 without (STATUS.md). Two workers of 8 documents: the two
        // cores of a laptop busy once the towers are built (item 5 of issue 23).
        "phi-tiny" => Recipe::Lm(LmPretrainOptions {
            batch: 16,
            steps: 1000,
            length_groups: 4,
            workers: 2,
            ..Default::default()
        }),
        // Smoke-test sizes: build in seconds and learn little (tests, pipeline checks).
        "clip-micro" => Recipe::Clip(ClipPretrainOptions {
            image_size: 16,
            patch: 8,
            hidden: 16,
            vision_layers: 1,
            text_layers: 1,
            heads: 2,
            embed_dim: 16,
            steps: 4,
            batch: 16,
            log_every: 0,
            ..Default::default()
        }),
        "phi-micro" => Recipe::Lm(LmPretrainOptions {
            d_model: 32,
            layers: 1,
            heads: 2,
            vocab: 300,
            steps: 6,
            batch: 8,
            progress: false,
            ..Default::default()
        }),
        _ => bail!(
            "unknown builtin backbone {name:?}; builtins are {}",
            NAMES.join(", ")
        ),
    })
}

impl Recipe {
    /// The settings that decide the weights (paths and thread counts left out).
    pub fn settings(&self) -> serde_json::Value {
        match self {
            Recipe::Clip(o) => {
                let mut v = serde_json::to_value(o).expect("options serialize");
                for k in ["data", "out", "threads", "log_every"] {
                    v.as_object_mut().map(|m| m.remove(k));
                }
                json!({ "clip": v })
            }
            Recipe::Lm(o) => {
                let mut v = serde_json::to_value(o).expect("options serialize");
                for k in ["world", "out", "progress"] {
                    v.as_object_mut().map(|m| m.remove(k));
                }
                json!({ "lm": v })
            }
        }
    }
}

/// sha256 of a JSON value's compact text, as hex (the same digest as
/// [`crate::config::hash_value`], which this module cannot name: it sits below it).
fn key_of(v: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(v).expect("json")))
}

/// The code fingerprint of this binary ([`crate::config::fingerprint::FINGERPRINT`], which
/// this module cannot name: it sits below it).
const CODE: &str = env!("HARNESS_CODE_FINGERPRINT");

/// The cache folder of `builtin:NAME` trained on `world` by this binary's code.
pub fn dir(name: &str, world: &Path) -> Result<PathBuf> {
    dir_for_code(name, world, Some(CODE))
}

/// The cache folder of `builtin:NAME` trained on `world` by the code with fingerprint
/// `code`; `None` names a build of a binary from before code fingerprints (keyed by recipe
/// and world alone), for the runs it trained.
pub fn dir_for_code(name: &str, world: &Path, code: Option<&str>) -> Result<PathBuf> {
    let synth = world.join("synth.json");
    let world_id: serde_json::Value = crate::fsutil::read_json(&synth).with_context(|| {
        format!(
            "builtin:{name} trains on the synthetic world, but {} is not one (no readable synth.json; make one with `harness synth --out {}`)",
            world.display(),
            world.display()
        )
    })?;
    let mut id = json!({
        "recipe": recipe(name)?.settings(),
        "world": world_id,
    });
    if let Some(code) = code {
        id["code"] = json!(code);
    }
    let key = key_of(&id);
    Ok(crate::fsutil::cache_root()
        .join("backbones")
        .join(format!("{name}-{}", &key[..12])))
}

/// The checkpoint folder a config's backbone spec names: a path as given, or the cache
/// folder of a `builtin:NAME` trained on `world`, which must have been built (sweeps and
/// `harness run` build missing ones first; `harness pretrain builtin NAME --world WORLD`
/// builds one by hand).
pub fn resolve(spec: &str, world: &Path) -> Result<PathBuf> {
    resolve_for_code(spec, world, Some(CODE))
}

/// [`resolve`] for the build of the code with fingerprint `code` (`None`: from before
/// fingerprints): a run's weights go with the backbone its own code trained them on.
pub fn resolve_for_code(spec: &str, world: &Path, code: Option<&str>) -> Result<PathBuf> {
    let Some(name) = spec.strip_prefix("builtin:") else {
        return Ok(PathBuf::from(spec));
    };
    let d = dir_for_code(name, world, code)?;
    if !is_built(&d) {
        if code != Some(CODE) {
            bail!(
                "builtin:{name} as built by the code that trained this run (fingerprint {}) is not in the cache (expected {}); this binary's code builds another one, on which the run was not trained",
                code.map(|c| &c[..c.len().min(12)]).unwrap_or("none: before fingerprints"),
                d.display()
            );
        }
        bail!(
            "builtin:{name} is not built yet for {} (expected in {}): `harness sweep` and `harness run` build it first, or run `harness pretrain builtin {name} --world {}`",
            world.display(),
            d.display(),
            world.display()
        );
    }
    Ok(d)
}

/// Whether a backbone folder holds a complete build (builds are renamed into place whole).
pub fn is_built(dir: &Path) -> bool {
    dir.join("config.json").exists()
}

/// The recipe key for a `builtin:NAME` spec, for stage keys (`None` for a path or an
/// unknown name): a recipe change must not reuse stages trained on the old backbone.
pub fn spec_key(spec: &str) -> Option<String> {
    let name = spec.strip_prefix("builtin:")?;
    let r = recipe(name).ok()?;
    Some(key_of(&r.settings())[..12].to_string())
}

// ---------------------------------------------------------------------------------------
// The recipes' settings (the training code that reads them is in `crate::pretrain`).

/// Everything `harness pretrain clip` can set; `Default` is the CPU demo setting.
#[derive(Clone, Debug, Serialize)]
pub struct ClipPretrainOptions {
    /// A synthetic world (COCO layout: `train2017/`, `val2017/`, `annotations/`).
    pub data: PathBuf,
    pub out: PathBuf,
    pub image_size: usize,
    pub patch: usize,
    /// Width of both towers.
    pub hidden: usize,
    pub vision_layers: usize,
    pub text_layers: usize,
    pub heads: usize,
    /// Width of the shared embedding space.
    pub embed_dim: usize,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// Fraction of `steps` spent warming up.
    pub warmup: f64,
    pub weight_decay: f64,
    pub clip_grad_norm: f64,
    pub seed: u64,
    /// Data workers (0 = all cores).
    pub threads: usize,
    /// Progress lines on stderr every this many steps (0 = none).
    pub log_every: u64,
}

impl Default for ClipPretrainOptions {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: PathBuf::new(),
            image_size: 32,
            patch: 8,
            hidden: 64,
            vision_layers: 4,
            text_layers: 2,
            heads: 4,
            embed_dim: 64,
            steps: 300,
            batch: 128,
            lr: 1e-3,
            warmup: 0.05,
            weight_decay: 0.05,
            clip_grad_norm: 1.0,
            seed: 0,
            threads: 0,
            log_every: 50,
        }
    }
}

/// Everything `harness pretrain lm` can set; `Default` is the CPU demo setting.
#[derive(Clone, Debug, Serialize)]
pub struct LmPretrainOptions {
    /// A synthetic world (`annotations/captions_*2017.json`, `llava_instruct_150k.json`,
    /// `llava_instruct_val.json`, image folders).
    pub world: PathBuf,
    pub out: PathBuf,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Tokenizer vocabulary (special token + 256 bytes + merges).
    pub vocab: usize,
    pub partial_rotary: f64,
    pub rope_theta: f64,
    pub max_position: usize,
    pub layer_norm_eps: f64,
    /// Std of HF's normal initialisation.
    pub init_std: f64,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// Fraction of `steps` spent warming up.
    pub warmup: f64,
    pub weight_decay: f64,
    pub clip_grad_norm: f64,
    /// Documents are truncated to this many tokens.
    pub max_len: usize,
    /// Probabilities of the `{ctx}\n{caption}` and the bare caption documents.
    pub p_ctx_caption: f64,
    pub p_caption: f64,
    /// Steps whose documents are drawn together and batched by length (1 = each step draws
    /// its own); see `step_docs`.
    pub length_groups: usize,
    /// Data-parallel workers (threads, each a replica computing its share of every batch,
    /// gradients all-reduced). Part of the recipe: the sum over workers rounds differently
    /// from one worker's, so the count, not the machine's cores, decides the weights.
    pub workers: usize,
    pub eval_max_new_tokens: usize,
    pub seed: u64,
    /// Show the progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for LmPretrainOptions {
    fn default() -> Self {
        Self {
            world: PathBuf::new(),
            out: PathBuf::new(),
            d_model: 128,
            layers: 4,
            heads: 4,
            vocab: 512,
            partial_rotary: 0.5,
            rope_theta: 10000.0,
            max_position: 256,
            layer_norm_eps: 1e-5,
            init_std: 0.02,
            steps: 1500,
            batch: 32,
            lr: 3e-3,
            warmup: 0.05,
            weight_decay: 0.0,
            clip_grad_norm: 1.0,
            max_len: 224,
            p_ctx_caption: 0.25,
            p_caption: 0.10,
            length_groups: 1,
            workers: 1,
            eval_max_new_tokens: 5,
            seed: 0,
            progress: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_covers_the_code_and_keeps_the_old_name_for_old_builds() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("synth.json"), r#"{"seed": 3}"#).unwrap();
        let world = json!({"seed": 3});
        let name_of = |id: serde_json::Value| format!("clip-p8-{}", &key_of(&id)[..12]);
        let settings = recipe("clip-p8").unwrap().settings();
        let file = |p: PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        // Before fingerprints: recipe and world alone, as those binaries named their builds.
        let old = dir_for_code("clip-p8", d.path(), None).unwrap();
        assert_eq!(
            file(old.clone()),
            name_of(json!({"recipe": settings, "world": world}))
        );
        // This binary's build: recipe, world and its code fingerprint.
        let now = dir("clip-p8", d.path()).unwrap();
        assert_eq!(
            file(now.clone()),
            name_of(json!({"recipe": settings, "world": world, "code": CODE}))
        );
        assert_ne!(now, old);
        assert_ne!(
            now,
            dir_for_code("clip-p8", d.path(), Some("other code")).unwrap()
        );
        assert_eq!(now.parent(), old.parent());
        // A run of other code whose backbone is gone says so.
        let e = resolve_for_code("builtin:clip-p8", d.path(), Some("0123456789abcdef"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0123456789ab") && e.contains("not in the cache"),
            "{e}"
        );
    }
}
