//! Training samples from an experiment's data files: records loaded, limited to a seeded
//! subset, undecodable images dropped when asked, and the sequence builder that turns them
//! into token ids with labels. Every stage builds its data through here, and so do `harness
//! data check` / `data show` ([`super::inspect`]).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::coco::{self, CaptionSample};
use super::images::{load_rgb, par_map, ImageRoot};
use super::instruct::{self, source_of, Conversation, Sources};
use super::sequence::{ChatTemplate, SequenceBuilder, TextCodec};
use super::skips::{SkipReason, SkipReport};
use crate::config::Experiment;
use crate::rng::epoch_order;

/// Everything the data side of an experiment needs, with paths and sizes explicit (the CLI
/// fills it from the experiment config).
#[derive(Clone, Debug)]
pub struct DataSpec {
    /// COCO root: `annotations/captions_{train,val}2017.json`, `train2017/`, `val2017/`.
    pub coco_root: PathBuf,
    /// Instruct150K-format file (Instruct150K, mix665k, ...).
    pub instruct_json: PathBuf,
    /// The folder `instruct_json`'s image names are relative to; `None`:
    /// `coco_root/train2017` ([`DataSpec::image_folder`]).
    pub image_folder: Option<PathBuf>,
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

impl DataSpec {
    /// The spec an experiment's `[data]` describes, for an encoder of `image_tokens` tokens
    /// per image and a tokenizer whose padding id is `pad_id`.
    pub fn from_experiment(
        exp: &Experiment,
        image_tokens: usize,
        pad_id: u32,
    ) -> anyhow::Result<Self> {
        let d = &exp.data;
        Ok(DataSpec {
            coco_root: d.coco_root.clone().into(),
            instruct_json: d.instruct_json.clone().into(),
            image_folder: (!d.image_folder.is_empty()).then(|| d.image_folder.clone().into()),
            stage1_limit: d.stage1_limit as usize,
            stage2_limit: d.stage2_limit as usize,
            stage2_val: d.stage2_val as usize,
            instruct_val_json: (!d.instruct_val_json.is_empty())
                .then(|| d.instruct_val_json.clone().into()),
            max_len: d.max_len as usize,
            image_tokens,
            template: ChatTemplate::named(&d.template)?,
            eos: "<|endoftext|>".into(),
            pad_id,
            seed: exp.seed,
        })
    }
}

impl DataSpec {
    /// Where stage 2's image names are looked up.
    pub fn image_folder(&self) -> PathBuf {
        self.image_folder
            .clone()
            .unwrap_or_else(|| self.coco_root.join("train2017"))
    }
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
    drop_undecodable_counted(samples, skips, &mut Sources::new(), bad)
}

/// [`drop_undecodable_conversations`], moving each dropped record of `sources` from kept to
/// skipped.
fn drop_undecodable_counted(
    samples: &mut Vec<Conversation>,
    skips: &mut SkipReport,
    sources: &mut Sources,
    bad: &HashSet<PathBuf>,
) {
    samples.retain(|c| {
        let keep = c.image.as_ref().is_none_or(|p| !bad.contains(p));
        if !keep {
            skips.add(SkipReason::UndecodableImage, c.id.clone());
            if let Some(n) = sources.get_mut(&source_of(c.image_name.as_deref())) {
                n.kept = n.kept.saturating_sub(1);
                n.skipped += 1;
            }
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
    let s = stage2_data(spec, decode)?;
    Ok((s.train, s.val, s.skips))
}

/// Stage 2's conversations as [`stage2_data`] returns them.
#[derive(Debug, Default)]
pub struct Stage2Data {
    pub train: Vec<Conversation>,
    pub val: Vec<Conversation>,
    /// Skips of `instruct_json`.
    pub skips: SkipReport,
    /// `instruct_json`'s records by source (before the hold-out and the limit).
    pub sources: Sources,
}

/// [`stage2_samples`], with `instruct_json`'s records counted by source.
pub fn stage2_data(spec: &DataSpec, decode: bool) -> anyhow::Result<Stage2Data> {
    let folder = spec.image_folder();
    let root = ImageRoot::new(&folder).with_context(|| {
        format!(
            "the image folder of {} (data.image_folder)",
            spec.instruct_json.display()
        )
    })?;
    let mut set = instruct::load_instruct(&spec.instruct_json, &root)?;
    if decode {
        let bad = undecodable(set.samples.iter().filter_map(|c| c.image.clone()));
        drop_undecodable_counted(&mut set.samples, &mut set.skips, &mut set.sources, &bad);
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
    Ok(Stage2Data {
        train: limit(train, spec.stage2_limit, spec.seed),
        val,
        skips: set.skips,
        sources: set.sources,
    })
}

/// The sequence builder the spec describes.
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
