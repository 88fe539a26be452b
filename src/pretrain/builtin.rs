//! Building `builtin:NAME` backbones: the named recipes of [`crate::backbones`], trained on
//! the experiment's synthetic world (`data.coco_root`) into
//! `$HARNESS_CACHE/backbones/NAME-KEY`. KEY hashes the recipe's settings and the world's
//! `synth.json`, so every experiment naming the same recipe on the same world shares one
//! build, and a changed recipe or world builds anew instead of silently reusing stale weights.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::clip::pretrain_clip;
use super::lm::pretrain_lm;
use crate::backbones::{self, ClipPretrainOptions, LmPretrainOptions, Recipe};

/// Trains `recipe` on `world` into `out`.
fn build(recipe: &Recipe, world: &Path, out: &Path) -> Result<()> {
    match recipe {
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

/// The folder of `builtin:NAME` for `world`, trained first if it is not cached. A build
/// goes to a temporary sibling and is renamed into place when complete, so a killed build
/// leaves nothing that looks finished; two processes racing both build and one rename wins.
pub fn ensure(name: &str, world: &Path) -> Result<PathBuf> {
    let dir = backbones::dir(name, world)?;
    if backbones::is_built(&dir) {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!(
        "builtin:{name}: not cached, training it on {} (once; kept in {})",
        world.display(),
        dir.display()
    );
    build(&backbones::recipe(name)?, world, &tmp)
        .with_context(|| format!("building builtin:{name}"))?;
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !backbones::is_built(&dir) {
            return Err(e).with_context(|| format!("moving the build into {}", dir.display()));
        }
    }
    Ok(dir)
}
