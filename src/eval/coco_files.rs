//! COCO caption files for `harness eval captions`: the results format
//! `[{"image_id": int, "caption": str}, ...]` and the captions annotation file
//! (`captions_val2017.json`: `{"annotations": [{"image_id", "caption", ...}], ...}`).
//! Errors name the file and the record (index and image id), since a results file written
//! by another tool is the usual suspect.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::captions::{score_raw, CaptionScores};

fn read(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// `image_id` and `caption` of one record, or an error naming file and record.
fn record(path: &Path, i: usize, r: &Value) -> Result<(u64, String)> {
    let at = || format!("{}: record {i}", path.display());
    let id = r
        .get("image_id")
        .and_then(Value::as_u64)
        .with_context(|| format!("{}: missing or non-integer \"image_id\"", at()))?;
    let caption = r.get("caption").and_then(Value::as_str).with_context(|| {
        format!(
            "{} (image_id {id}): missing or non-string \"caption\"",
            at()
        )
    })?;
    Ok((id, caption.to_string()))
}

/// Predictions from a COCO results file; one caption per image (pycocoevalcap rejects
/// more than one too).
pub fn load_results(path: &Path) -> Result<BTreeMap<u64, String>> {
    let v = read(path)?;
    let Some(list) = v.as_array() else {
        bail!(
            "{}: expected a JSON list of {{\"image_id\", \"caption\"}} records",
            path.display()
        );
    };
    let mut out = BTreeMap::new();
    for (i, r) in list.iter().enumerate() {
        let (id, caption) = record(path, i, r)?;
        if out.insert(id, caption).is_some() {
            bail!(
                "{}: record {i}: second caption for image_id {id} (one prediction per image)",
                path.display()
            );
        }
    }
    Ok(out)
}

/// Reference captions per image from a COCO captions annotation file.
pub fn load_references(path: &Path) -> Result<BTreeMap<u64, Vec<String>>> {
    let v = read(path)?;
    let Some(list) = v.get("annotations").and_then(Value::as_array) else {
        bail!(
            "{}: no \"annotations\" list (expected a COCO captions file)",
            path.display()
        );
    };
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (i, r) in list.iter().enumerate() {
        let (id, caption) =
            record(path, i, r).with_context(|| format!("{}: annotations", path.display()))?;
        out.entry(id).or_default().push(caption);
    }
    Ok(out)
}

/// Scores a results file against an annotation file (PTB-style tokenization first).
/// Every predicted image must have references in the annotation file.
pub fn evaluate_files(results: &Path, annotations: &Path) -> Result<CaptionScores> {
    let preds = load_results(results)?;
    let refs = load_references(annotations)?;
    if let Some(id) = preds.keys().find(|id| !refs.contains_key(id)) {
        bail!(
            "{}: image_id {id} has no captions in {}",
            results.display(),
            annotations.display()
        );
    }
    score_raw(&preds, &refs).with_context(|| {
        format!(
            "scoring {} against {}",
            results.display(),
            annotations.display()
        )
    })
}
