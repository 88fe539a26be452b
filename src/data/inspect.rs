//! What `harness data check` and `harness data show` compute: every split loaded, checked
//! and turned into sequences exactly as training will ([`super::samples`]), with the counts
//! researchers need (skips per reason with record ids, token lengths, truncations).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::instruct::Sources;
use super::samples::{
    builder, caption_paths, stage1_samples, stage2_data, stage2_samples, DataSpec,
};
use super::sequence::{Sequence, TextCodec, Truncation, IGNORE};
use super::skips::SkipReport;
use crate::rng::epoch_order;

/// Token-length buckets: `[lo, hi)`.
pub const LENGTH_BUCKETS: [usize; 10] = [0, 32, 64, 128, 256, 384, 512, 768, 1024, 2048];

#[derive(Clone, Debug, Serialize)]
pub struct SplitCheck {
    pub split: String,
    /// Records that became training sequences.
    pub samples: usize,
    /// Distinct images those sequences use.
    pub images: usize,
    pub skips: SkipReport,
    pub truncation: Truncation,
    pub target_tokens: usize,
    pub max_tokens: usize,
    pub mean_tokens: f64,
    /// `(lo, hi, count)`; `hi = 0` means no upper bound.
    pub length_histogram: Vec<(usize, usize, usize)>,
    /// `stage2/train` only: the records of `instruct_json` by source (first component of
    /// the image name: `coco`, `gqa`, `ocr_vqa`, ... in mix665k), kept and skipped, before
    /// the validation hold-out and the limit.
    #[serde(skip_serializing_if = "Sources::is_empty")]
    pub sources: Sources,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub max_len: usize,
    pub image_tokens: usize,
    pub splits: Vec<SplitCheck>,
}

fn summarize(
    split: &str,
    seqs: &[Sequence],
    images: usize,
    mut skips: SkipReport,
    seq_skips: SkipReport,
    truncation: Truncation,
) -> SplitCheck {
    skips.merge(&seq_skips);
    let mut hist: Vec<(usize, usize, usize)> = LENGTH_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, &lo)| (lo, LENGTH_BUCKETS.get(i + 1).copied().unwrap_or(0), 0))
        .collect();
    for s in seqs {
        let b = LENGTH_BUCKETS
            .iter()
            .rposition(|&lo| s.len() >= lo)
            .unwrap_or(0);
        hist[b].2 += 1;
    }
    let total: usize = seqs.iter().map(|s| s.len()).sum();
    SplitCheck {
        split: split.to_string(),
        samples: seqs.len(),
        images,
        skips,
        truncation,
        target_tokens: seqs
            .iter()
            .map(|s| s.labels.iter().filter(|&&l| l != IGNORE).count())
            .sum(),
        max_tokens: seqs.iter().map(|s| s.len()).max().unwrap_or(0),
        mean_tokens: if seqs.is_empty() {
            0.0
        } else {
            total as f64 / seqs.len() as f64
        },
        length_histogram: hist,
        sources: Sources::new(),
    }
}

fn distinct_images<'a>(it: impl Iterator<Item = &'a PathBuf>) -> usize {
    it.collect::<HashSet<_>>().len()
}

/// Loads, checks and builds every split the spec names. `decode`: also decode every image
/// (slow on full COCO: ~120k JPEGs; parallel).
pub fn check(spec: &DataSpec, tok: &dyn TextCodec, decode: bool) -> anyhow::Result<CheckReport> {
    let b = builder(spec, tok)?;
    let mut splits = Vec::new();
    for split in ["train", "val"] {
        if !caption_paths(&spec.coco_root, split).0.exists() {
            continue;
        }
        let (samples, skips) =
            stage1_samples(spec, split, decode).with_context(|| format!("stage 1 {split}"))?;
        let (seqs, seq_skips, tr) = b.build_all(&samples, |b, s| b.caption(s), |s| s.id.clone());
        let images = distinct_images(seqs.iter().filter_map(|s| s.image.as_ref()));
        splits.push(summarize(
            &format!("stage1/{split}"),
            &seqs,
            images,
            skips,
            seq_skips,
            tr,
        ));
    }
    if spec.instruct_json.exists() {
        let data = stage2_data(spec, decode).context("stage 2")?;
        for (name, samples, skips, sources) in [
            ("stage2/train", data.train, data.skips, data.sources),
            (
                "stage2/val",
                data.val,
                SkipReport::default(),
                Sources::new(),
            ),
        ] {
            let (seqs, seq_skips, tr) =
                b.build_all(&samples, |b, c| b.conversation(c), |c| c.id.clone());
            let images = distinct_images(seqs.iter().filter_map(|s| s.image.as_ref()));
            let mut split = summarize(name, &seqs, images, skips, seq_skips, tr);
            split.sources = sources;
            splits.push(split);
        }
    }
    Ok(CheckReport {
        max_len: spec.max_len,
        image_tokens: spec.image_tokens,
        splits,
    })
}

/// One sample as `harness data show --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ShownSample {
    /// Source record id.
    pub id: String,
    pub image: Option<String>,
    /// The text with the image slot as `<image x N>` and learned spans in `[[...]]`.
    pub text: String,
    pub input_ids: Vec<u32>,
    /// -100 where ignored.
    pub labels: Vec<i64>,
    /// Every position the image features occupy.
    pub image_positions: Vec<usize>,
    pub truncated: usize,
}

/// The first `n` training samples of `stage` in epoch 0's order: what the model sees first.
pub fn show(
    spec: &DataSpec,
    tok: &dyn TextCodec,
    stage: u8,
    n: usize,
) -> anyhow::Result<Vec<ShownSample>> {
    let b = builder(spec, tok)?;
    let (seqs, _, _) = match stage {
        1 => {
            let (samples, _) = stage1_samples(spec, "train", false)?;
            b.build_all(&samples, |b, s| b.caption(s), |s| s.id.clone())
        }
        2 => {
            let (train, _, _) = stage2_samples(spec, false)?;
            b.build_all(&train, |b, c| b.conversation(c), |c| c.id.clone())
        }
        _ => anyhow::bail!("--stage must be 1 or 2"),
    };
    let order = epoch_order(seqs.len(), spec.seed, 0);
    Ok(order
        .into_iter()
        .take(n)
        .map(|i| {
            let s = &seqs[i];
            ShownSample {
                id: s.id.clone(),
                image: s.image.as_ref().map(|p| p.display().to_string()),
                text: b.render(s),
                input_ids: s.input_ids.clone(),
                labels: s.labels.clone(),
                image_positions: s.image_positions().collect(),
                truncated: s.truncated,
            }
        })
        .collect())
}
