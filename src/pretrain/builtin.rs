//! Building `builtin:NAME` backbones: the named recipes of [`crate::backbones`], trained on
//! the experiment's synthetic world (`data.coco_root`) into
//! `$HARNESS_CACHE/backbones/NAME-KEY`. KEY hashes the recipe's settings and the world's
//! `synth.json`, so every experiment naming the same recipe on the same world shares one
//! build, and a changed recipe or world builds anew instead of silently reusing stale weights.
//! One process builds a backbone while others that need it wait (a lease beside the cache
//! folder), also across the nodes of a cluster sharing the cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::clip::pretrain_clip;
use super::lm::pretrain_lm;
use crate::backbones::{self, ClipPretrainOptions, LmPretrainOptions, Recipe};
use crate::store::lease::Lease;
use crate::store::ClaimInfo;

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

/// What [`try_ensure`] found.
#[derive(Debug)]
pub enum Ensured {
    /// The backbone is built, in this folder.
    Ready(PathBuf),
    /// Another live process is building it now (the lease's holder).
    Busy(ClaimInfo),
}

/// The lock beside a backbone's cache folder that its builder holds.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.with_extension("lock")
}

/// The folder of `builtin:NAME` for `world`, trained first if it is not cached; while
/// another process builds it (sweep workers sharing the cache), waits for that build
/// instead of training it a second time.
pub fn ensure(name: &str, world: &Path) -> Result<PathBuf> {
    let mut said = false;
    loop {
        match try_ensure(name, world)? {
            Ensured::Ready(dir) => return Ok(dir),
            Ensured::Busy(holder) => {
                if !said {
                    eprintln!(
                        "builtin:{name} is being built by pid {} on {}; waiting for it",
                        holder.pid, holder.host
                    );
                    said = true;
                }
                if crate::store::interrupted() {
                    bail!("interrupted while waiting for builtin:{name} to be built");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The folder of `builtin:NAME` for `world` when it is built, or built now by this
/// process under the lease [`lock_path`] (an exclusive lock file in the cache folder,
/// taken over after the heartbeat timeout when its holder died); [`Ensured::Busy`] when
/// another live process holds that lease. A build goes to a temporary sibling and is
/// renamed into place when complete, so a killed build leaves nothing that looks finished.
pub fn try_ensure(name: &str, world: &Path) -> Result<Ensured> {
    let dir = backbones::dir(name, world)?;
    if backbones::is_built(&dir) {
        return Ok(Ensured::Ready(dir));
    }
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("cannot create the cache folder of {}", dir.display()))?;
    let _lease = match Lease::try_take(&lock_path(&dir), &format!("builtin:{name}"))? {
        Ok(lease) => lease,
        Err(holder) => return Ok(Ensured::Busy(holder)),
    };
    // Built by the previous holder between the check and the lease.
    if backbones::is_built(&dir) {
        return Ok(Ensured::Ready(dir));
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
    Ok(Ensured::Ready(dir))
}
