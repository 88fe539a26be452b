//! The `builtin:` backbones a sweep needs: built before any run starts, once each (a
//! stage only resolves a built one, [`crate::backbones::resolve`]), and described by
//! `--dry-run`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use super::parallel::{needs_training, pool, spawn, Ended, Pick};
use super::plan::PlannedRun;
use crate::backbones::{self, Recipe};
use crate::pretrain::builtin::Ensured;
use crate::store;

/// The builtin backbones `runs` need that are not built yet, as (name, world), language
/// models first (the longest builds). Unknown names and missing worlds are left to the
/// runs, which report them.
pub fn missing(runs: &[PlannedRun]) -> Vec<(String, PathBuf)> {
    let mut todo: BTreeSet<(bool, String, PathBuf)> = BTreeSet::new();
    for p in runs.iter().filter(|p| needs_training(p)) {
        let e = &p.exp.exp;
        for spec in [&e.model.lm, &e.model.vision] {
            let Some(name) = spec.strip_prefix("builtin:") else {
                continue;
            };
            let world = PathBuf::from(&e.data.coco_root);
            let (Ok(recipe), Ok(dir)) = (backbones::recipe(name), backbones::dir(name, &world))
            else {
                continue;
            };
            if !backbones::is_built(&dir) {
                let is_lm = matches!(recipe, Recipe::Lm(_));
                todo.insert((!is_lm, name.to_string(), world));
            }
        }
    }
    todo.into_iter().map(|(_, n, w)| (n, w)).collect()
}

/// Builds the missing builtin backbones of `runs` before any run starts: in this process
/// when `jobs` is 1, else side by side, one child process each (`harness pretrain builtin`).
pub fn prepare(runs: &[PlannedRun], jobs: usize, results: &Path) -> Result<()> {
    let todo = missing(runs);
    if todo.is_empty() {
        return Ok(());
    }
    if jobs <= 1 {
        for (name, world) in &todo {
            crate::pretrain::builtin::ensure(name, world)?;
        }
        return Ok(());
    }
    // Even one missing backbone is built here, once: workers starting together would each
    // build it.
    eprintln!(
        "building {} backbones, {} at a time: {}",
        todo.len(),
        jobs,
        todo.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let done = pool(
        (0..todo.len()).collect(),
        jobs,
        |_, _| Pick::Start(0),
        |i| {
            let (name, world) = &todo[i];
            let args = vec![
                "pretrain".into(),
                "builtin".into(),
                name.clone(),
                "--world".into(),
                world.display().to_string(),
            ];
            spawn(&args, name, results, None)
        },
    );
    let failed: Vec<&str> = done
        .iter()
        .filter(|(_, ended)| *ended != Ended::Succeeded)
        .map(|(i, _)| todo[*i].0.as_str())
        .collect();
    anyhow::ensure!(
        failed.is_empty() || store::interrupted(),
        "building builtin backbones failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// Builds the missing builtin backbones of `runs` in this process, cooperating with other
/// workers on the same cache (Slurm array tasks): each missing one is built by whichever
/// worker takes its lease first, while the others build the remaining ones or wait. Returns
/// when all are built; an interrupt stops the waiting.
pub fn prepare_shared(runs: &[PlannedRun]) -> Result<()> {
    let mut todo = missing(runs);
    let mut said = BTreeSet::new();
    while !todo.is_empty() {
        let mut busy = Vec::new();
        for (name, world) in todo {
            match crate::pretrain::builtin::try_ensure(&name, &world)? {
                Ensured::Ready(_) => {}
                Ensured::Busy(holder) => {
                    if said.insert(name.clone()) {
                        eprintln!(
                            "builtin:{name} is being built by pid {} on {}; waiting for it",
                            holder.pid, holder.host
                        );
                    }
                    busy.push((name, world));
                }
            }
        }
        todo = busy;
        if !todo.is_empty() {
            if store::interrupted() {
                bail!("interrupted while waiting for builtin backbones to be built");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(())
}

/// For `--dry-run`: each builtin backbone the experiments name, where it lives, and whether
/// it is cached or will be trained first.
pub fn describe<'a>(exps: impl IntoIterator<Item = &'a crate::config::Experiment>) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for e in exps {
        for spec in [&e.model.vision, &e.model.lm] {
            if let Some(name) = spec.strip_prefix("builtin:") {
                let world = Path::new(&e.data.coco_root);
                let line = match backbones::dir(name, world) {
                    Ok(d) if backbones::is_built(&d) => format!("cached  {}", d.display()),
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
