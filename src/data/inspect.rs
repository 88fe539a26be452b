//! What `harness data check` and `harness data show` compute: every split loaded, checked
//! and turned into sequences exactly as training will, with the counts researchers need
//! (skips per reason with record ids, token lengths, truncations).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::coco::{self, CaptionSample};
use super::images::{load_rgb, par_map, ImageRoot};
use super::instruct::{self, Conversation};
use super::rng::epoch_order;
use super::sequence::{ChatTemplate, Sequence, SequenceBuilder, TextCodec, Truncation, IGNORE};
use super::skips::{SkipReason, SkipReport};

/// Everything the data side of an experiment needs, with paths and sizes explicit (the CLI
/// fills it from the experiment config).
#[derive(Clone, Debug)]
pub struct DataSpec {
    /// COCO root: `annotations/captions_{train,val}2017.json`, `train2017/`, `val2017/`.
    pub coco_root: PathBuf,
    /// Instruct150K-format file; its images live in `coco_root/train2017`.
    pub instruct_json: PathBuf,
    /// At most this many samples per stage (0 = all), chosen by [`limit`].
    pub stage1_limit: usize,
    pub stage2_limit: usize,
    /// Conversations held out of stage 2 for validation ([`instruct::holdout`]), or taken
    /// from `instruct_val_json` when set.
    pub stage2_val: usize,
    /// Validation conversations on `coco_root/val2017` images (optional).
    pub instruct_val_json: Option<PathBuf>,
    pub max_len: usize,
    pub image_tokens: usize,
    pub template: ChatTemplate,
    /// Stage-1 end token (`<|endoftext|>` for Phi-2).
    pub eos: String,
    pub pad_id: u32,
    pub seed: u64,
}

/// A random subset of `limit` samples (0 = all), chosen by the run seed and kept in file
/// order, so a limited run is a fair sample of the data, not its first records.
pub fn limit<T>(samples: Vec<T>, limit: usize, seed: u64) -> Vec<T> {
    if limit == 0 || samples.len() <= limit {
        return samples;
    }
    let mut keep: Vec<usize> = epoch_order(samples.len(), seed ^ 0x11A1_7000, 0);
    keep.truncate(limit);
    let keep: HashSet<usize> = keep.into_iter().collect();
    samples
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, s)| s)
        .collect()
}

/// The files of one stage-1 split.
pub fn caption_paths(coco_root: &Path, split: &str) -> (PathBuf, PathBuf) {
    (
        coco_root
            .join("annotations")
            .join(format!("captions_{split}2017.json")),
        coco_root.join(format!("{split}2017")),
    )
}

/// Decodes every distinct image once (in parallel, with a progress bar on a terminal) and
/// returns the ones that fail.
pub fn undecodable(paths: impl IntoIterator<Item = PathBuf>) -> HashSet<PathBuf> {
    let distinct: Vec<PathBuf> = paths
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // indicatif hides itself when stderr is not a terminal (tests, CI logs).
    let bar = indicatif::ProgressBar::new(distinct.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "decoding images {bar:30} {pos}/{len} {per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let ok = par_map(&distinct, 0, |p| {
        let ok = load_rgb(p).is_ok();
        bar.inc(1);
        ok
    });
    bar.finish_and_clear();
    distinct
        .into_iter()
        .zip(ok)
        .filter(|(_, ok)| !ok)
        .map(|(p, _)| p)
        .collect()
}

/// Drops conversations whose image is in `bad`, counting them as undecodable.
pub fn drop_undecodable_conversations(
    samples: &mut Vec<Conversation>,
    skips: &mut SkipReport,
    bad: &HashSet<PathBuf>,
) {
    samples.retain(|c| {
        let keep = c.image.as_ref().is_none_or(|p| !bad.contains(p));
        if !keep {
            skips.add(SkipReason::UndecodableImage, c.id.clone());
        }
        keep
    });
}

/// Stage-1 samples of `split` ("train" or "val"), limited, undecodable images dropped when
/// `decode` is set.
pub fn stage1_samples(
    spec: &DataSpec,
    split: &str,
    decode: bool,
) -> anyhow::Result<(Vec<CaptionSample>, SkipReport)> {
    let (json, dir) = caption_paths(&spec.coco_root, split);
    let root = ImageRoot::new(&dir)?;
    let mut set = coco::load_captions(&json, &root)?;
    set.samples = limit(set.samples, spec.stage1_limit, spec.seed);
    if decode {
        let bad = undecodable(set.samples.iter().map(|s| s.image.clone()));
        coco::drop_undecodable(&mut set, &bad);
    }
    Ok((set.samples, set.skips))
}

/// Stage-2 (train, val) conversations, limited, undecodable images dropped when `decode`.
pub fn stage2_samples(
    spec: &DataSpec,
    decode: bool,
) -> anyhow::Result<(Vec<Conversation>, Vec<Conversation>, SkipReport)> {
    let root = ImageRoot::new(&spec.coco_root.join("train2017"))?;
    let mut set = instruct::load_instruct(&spec.instruct_json, &root)?;
    if decode {
        let bad = undecodable(set.samples.iter().filter_map(|c| c.image.clone()));
        drop_undecodable_conversations(&mut set.samples, &mut set.skips, &bad);
    }
    let (train, val) = match &spec.instruct_val_json {
        None => instruct::holdout(set.samples, spec.stage2_val),
        Some(path) => {
            let root = ImageRoot::new(&spec.coco_root.join("val2017"))?;
            let mut v = instruct::load_instruct(path, &root)?;
            if decode {
                let bad = undecodable(v.samples.iter().filter_map(|c| c.image.clone()));
                drop_undecodable_conversations(&mut v.samples, &mut v.skips, &bad);
            }
            v.samples.truncate(spec.stage2_val);
            (set.samples, v.samples)
        }
    };
    Ok((limit(train, spec.stage2_limit, spec.seed), val, set.skips))
}

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
        let (train, val, skips) = stage2_samples(spec, decode).context("stage 2")?;
        for (name, samples, skips) in [
            ("stage2/train", train, skips),
            ("stage2/val", val, SkipReport::default()),
        ] {
            let (seqs, seq_skips, tr) =
                b.build_all(&samples, |b, c| b.conversation(c), |c| c.id.clone());
            let images = distinct_images(seqs.iter().filter_map(|s| s.image.as_ref()));
            splits.push(summarize(name, &seqs, images, skips, seq_skips, tr));
        }
    }
    Ok(CheckReport {
        max_len: spec.max_len,
        image_tokens: spec.image_tokens,
        splits,
    })
}

pub fn builder<'a>(spec: &DataSpec, tok: &'a dyn TextCodec) -> anyhow::Result<SequenceBuilder<'a>> {
    SequenceBuilder::new(
        tok,
        spec.template.clone(),
        &spec.eos,
        spec.image_tokens,
        spec.max_len,
        spec.pad_id,
    )
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
