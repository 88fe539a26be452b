//! Per-item evaluation results: one row per scored item (a captioned image, an answered
//! question, a benchmark question), so any aggregate can be recomputed and two runs can be
//! paired item by item.
//!
//! `results/<run>/items/<stage>-<task>.parquet`, one file per evaluation, written
//! atomically (a re-evaluation replaces it whole). Columns:
//!
//! | column | what |
//! |---|---|
//! | `run_id` | the run that evaluated |
//! | `stage` | `stage1`, `stage2` |
//! | `task` | `captions`, `qa`, or a benchmark's `bench/<name>` |
//! | `item` | stable across runs of the same data: the image's file name for captions, `<image file name>#<k>` for the k-th question (from 0) about that image in the evaluation file's order |
//! | `kind` | the item's type for breakdowns (a question type), or empty |
//! | `metric` | the eval metric the item's score belongs to (`CIDEr`, `qa_acc`, ...): its value is the mean of `score` over the task's rows, and `<metric>/<kind>` over a kind's |
//! | `score` | the item's score: 0/1 for exact match, the image's CIDEr-D for captions |
//! | `prediction` | what the model produced |
//! | `reference` | the reference answer; for captions all references, one per line |

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;

use crate::fsutil;
use crate::store::{Status, Store};

/// The folder of a run's item tables.
pub const DIR: &str = "items";

/// One scored item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub run_id: String,
    pub stage: String,
    pub task: String,
    pub item: String,
    pub kind: String,
    pub metric: String,
    pub score: f64,
    pub prediction: String,
    pub reference: String,
}

impl Item {
    /// What pairs an item across runs: stage, task and item id.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.stage, &self.task, &self.item)
    }
}

/// References of a captioned image as one `reference` cell: one per line (a newline
/// inside a reference becomes a space, which tokenization treats the same).
pub fn join_references(refs: &[String]) -> String {
    refs.iter()
        .map(|r| r.replace(['\n', '\r'], " "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The references of a `reference` cell written by [`join_references`].
pub fn split_references(cell: &str) -> Vec<String> {
    cell.split('\n').map(String::from).collect()
}

/// `<stage>-<task>.parquet`, the task's `/` written as `_` (`bench/pope` ->
/// `stage2-bench_pope.parquet`).
pub fn file_name(stage: &str, task: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}-{}.parquet", safe(stage), safe(task))
}

/// Writes one evaluation's items (all of one stage and task) into `run_dir/items/`,
/// atomically, replacing an earlier evaluation of the same stage and task.
pub fn write(run_dir: &Path, items: &[Item]) -> Result<Option<PathBuf>> {
    let Some(first) = items.first() else {
        return Ok(None);
    };
    if let Some(odd) = items
        .iter()
        .find(|i| i.stage != first.stage || i.task != first.task)
    {
        anyhow::bail!(
            "item {:?} is of {} {}, not {} {}: one file holds one evaluation",
            odd.item,
            odd.stage,
            odd.task,
            first.stage,
            first.task
        );
    }
    let dir = run_dir.join(DIR);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(file_name(&first.stage, &first.task));
    let mut df = to_frame(items)?;
    fsutil::write_atomic_with(&path, |f| {
        ParquetWriter::new(f).finish(&mut df)?;
        Ok(())
    })?;
    Ok(Some(path))
}

/// The items as a frame with the documented columns.
pub fn to_frame(items: &[Item]) -> Result<DataFrame> {
    let col = |f: fn(&Item) -> &str| items.iter().map(f).collect::<Vec<_>>();
    Ok(df!(
        "run_id" => col(|i| &i.run_id),
        "stage" => col(|i| &i.stage),
        "task" => col(|i| &i.task),
        "item" => col(|i| &i.item),
        "kind" => col(|i| &i.kind),
        "metric" => col(|i| &i.metric),
        "score" => items.iter().map(|i| i.score).collect::<Vec<_>>(),
        "prediction" => col(|i| &i.prediction),
        "reference" => col(|i| &i.reference),
    )?)
}

/// Reads one item file; an error names the file and what is wrong with it.
pub fn read_file(path: &Path) -> Result<Vec<Item>> {
    let df = File::open(path)
        .map_err(PolarsError::from)
        .and_then(|f| ParquetReader::new(f).finish())
        .with_context(|| format!("cannot read item table {}", path.display()))?;
    let s = |name: &str| -> Result<StringChunked> {
        df.column(name)
            .and_then(|c| c.str().cloned())
            .with_context(|| format!("{}: column `{name}` (text) is missing", path.display()))
    };
    let (run_id, stage, task, item) = (s("run_id")?, s("stage")?, s("task")?, s("item")?);
    let (kind, metric, pred, reference) =
        (s("kind")?, s("metric")?, s("prediction")?, s("reference")?);
    let score = df
        .column("score")
        .and_then(|c| c.f64().cloned())
        .with_context(|| format!("{}: column `score` (float) is missing", path.display()))?;
    let text = |c: &StringChunked, i: usize| c.get(i).unwrap_or("").to_string();
    Ok((0..df.height())
        .map(|i| Item {
            run_id: text(&run_id, i),
            stage: text(&stage, i),
            task: text(&task, i),
            item: text(&item, i),
            kind: text(&kind, i),
            metric: text(&metric, i),
            score: score.get(i).unwrap_or(f64::NAN),
            prediction: text(&pred, i),
            reference: text(&reference, i),
        })
        .collect())
}

/// Every item table of a run folder (none for runs made before items were kept).
pub fn read_dir(run_dir: &Path) -> Result<Vec<Item>> {
    let dir = run_dir.join(DIR);
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !n.starts_with('.') && n.ends_with(".parquet")
        })
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        out.extend(read_file(&f)?);
    }
    Ok(out)
}

/// The items a run's results rest on: its own, and for each stage reused from another
/// run, that stage's items from the run that trained (and evaluated) it.
pub fn run_items(store: &Store, id: &str, status: &Status) -> Result<Vec<Item>> {
    let reused: Vec<(&str, &str)> = status
        .stages
        .iter()
        .filter(|(_, st)| st.run_id != id)
        .map(|(name, st)| (name.as_str(), st.run_id.as_str()))
        .collect();
    let mut items: Vec<Item> = read_dir(&store.run_dir(id))?
        .into_iter()
        .filter(|i| !reused.iter().any(|(s, _)| *s == i.stage))
        .collect();
    for (stage, src) in reused {
        items.extend(
            read_dir(&store.run_dir(src))?
                .into_iter()
                .filter(|i| i.stage == stage),
        );
    }
    Ok(items)
}
