//! `builtin:NAME` backbones: named `harness pretrain` recipes, trained on the experiment's
//! synthetic world (`data.coco_root`) the first time an experiment needs them, and kept in
//! `$HARNESS_CACHE/backbones/NAME-KEY`. KEY hashes the recipe's settings and the world's
//! `synth.json`, so every experiment naming the same recipe on the same world shares one
//! build, and a changed recipe or world builds anew instead of silently reusing stale weights.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::clip::{pretrain_clip, ClipPretrainOptions};
use super::lm::{pretrain_lm, LmPretrainOptions};

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
        // against 0.66 and 0.54 without (STATUS.md).
        "phi-tiny" => Recipe::Lm(LmPretrainOptions {
            batch: 16,
            steps: 1000,
            length_groups: 4,
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
    fn settings(&self) -> serde_json::Value {
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

    fn build(&self, world: &Path, out: &Path) -> Result<()> {
        match self {
            Recipe::Clip(o) => {
                let o = ClipPretrainOptions {
                    data: world.to_path_buf(),
                    out: out.to_path_buf(),
                    ..o.clone()
                };
                pretrain_clip(&o).map(|_| ())
            }
            Recipe::Lm(o) => {
                let o = LmPretrainOptions {
                    world: world.to_path_buf(),
                    out: out.to_path_buf(),
                    ..o.clone()
                };
                pretrain_lm(&o).map(|_| ())
            }
        }
    }
}

/// The cache folder of `builtin:NAME` trained on `world`.
pub fn dir(name: &str, world: &Path) -> Result<PathBuf> {
    let synth = world.join("synth.json");
    let world_id: serde_json::Value = crate::fsutil::read_json(&synth).with_context(|| {
        format!(
            "builtin:{name} trains on the synthetic world, but {} is not one (no readable synth.json; make one with `harness synth --out {}`)",
            world.display(),
            world.display()
        )
    })?;
    let key = crate::config::hash_value(&json!({
        "recipe": recipe(name)?.settings(),
        "world": world_id,
    }));
    Ok(crate::train::data::cache_root()
        .join("backbones")
        .join(format!("{name}-{}", &key[..12])))
}

/// The folder of `builtin:NAME` for `world`, trained first if it is not cached. A build
/// goes to a temporary sibling and is renamed into place when complete, so a killed build
/// leaves nothing that looks finished; two processes racing both build and one rename wins.
pub fn ensure(name: &str, world: &Path) -> Result<PathBuf> {
    let dir = dir(name, world)?;
    if dir.join("config.json").exists() {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!(
        "builtin:{name}: not cached, training it on {} (once; kept in {})",
        world.display(),
        dir.display()
    );
    recipe(name)?
        .build(world, &tmp)
        .with_context(|| format!("building builtin:{name}"))?;
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("config.json").exists() {
            return Err(e).with_context(|| format!("moving the build into {}", dir.display()));
        }
    }
    Ok(dir)
}

/// The recipe key for a `builtin:NAME` spec, for stage keys (`None` for a path or an
/// unknown name): a recipe change must not reuse stages trained on the old backbone.
pub fn spec_key(spec: &str) -> Option<String> {
    let name = spec.strip_prefix("builtin:")?;
    let r = recipe(name).ok()?;
    Some(crate::config::hash_value(&r.settings())[..12].to_string())
}

/// For `--dry-run`: each builtin backbone the experiments name, where it lives, and whether
/// it is cached or will be trained first.
pub fn describe<'a>(exps: impl IntoIterator<Item = &'a crate::config::Experiment>) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for e in exps {
        for spec in [&e.model.vision, &e.model.lm] {
            if let Some(name) = spec.strip_prefix("builtin:") {
                let world = Path::new(&e.data.coco_root);
                let line = match dir(name, world) {
                    Ok(d) if d.join("config.json").exists() => format!("cached  {}", d.display()),
                    Ok(d) => format!("to build (once) in {}", d.display()),
                    Err(_) if !world.join("synth.json").exists() => format!(
                        "to build (once) when the world exists (`harness synth --out {}`)",
                        world.display()
                    ),
                    Err(err) => format!("error: {err:#}"),
                };
                seen.insert(spec.clone(), line);
            }
        }
    }
    seen.iter()
        .map(|(spec, line)| format!("backbone {spec}: {line}\n"))
        .collect()
}
