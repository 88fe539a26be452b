//! A stage's data, ready for the loop: sequences for train and val, the CLIP features of
//! every image they use (from the shared feature cache, built once), and what was skipped
//! or truncated on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::backend::Compute;
use crate::config::Experiment;
use crate::data::batch::{keep_cached, LlavaBatcher};
use crate::data::cache::{BuildOptions, FeatureCache};
use crate::data::clip_features::ClipExtractor;
use crate::data::samples::{self, DataSpec};
use crate::data::sequence::{Sequence, SequenceBuilder, Truncation};
use crate::data::skips::SkipReport;
use crate::model::assembly::vision_setup;
use crate::model::tokenizer::Tokenizer;

use super::evaluate::EvalSet;

/// Everything one stage trains and validates on.
pub struct StageData {
    pub train: Vec<Sequence>,
    pub val: Vec<Sequence>,
    pub cache: FeatureCache,
    pub batcher: LlavaBatcher,
    pub skips: SkipReport,
    pub truncation: Truncation,
    /// CLIP forward passes this preparation ran (0 when every image was cached).
    pub extracted: usize,
    /// What the stage is scored on when it ends.
    pub eval: EvalSet,
}

/// The data spec an experiment describes, with the image token count of its encoder.
pub fn spec(exp: &Experiment, tok: &Tokenizer, image_tokens: usize) -> Result<DataSpec> {
    let pad_id = tok
        .pad_id
        .or(tok.eos_id)
        .context("the tokenizer has neither pad nor eos")?;
    DataSpec::from_experiment(exp, image_tokens, pad_id)
}

/// Loads stage `stage`'s samples, builds sequences, and makes sure every image has cached
/// CLIP features (computing only the missing ones).
pub fn prepare(
    exp: &Experiment,
    stage: u8,
    vision_dir: &Path,
    tok: &Tokenizer,
) -> Result<StageData> {
    let device = crate::backend::device(exp.devices[0]);
    let (select, pre) = vision_setup(exp, vision_dir)?;
    let extractor = ClipExtractor::<Compute>::from_dir(vision_dir, select, &device)
        .with_context(|| format!("loading the vision tower from {}", vision_dir.display()))?;
    use crate::data::cache::FeatureExtractor;
    let spec = spec(exp, tok, extractor.tokens())?;
    let builder = samples::builder(&spec, tok)?;

    let mut eval = EvalSet::default();
    let (train, val, mut skips, truncation) = match stage {
        1 => {
            let (tr, mut sk) = samples::stage1_samples(&spec, "train", false)?;
            let (va, _) = samples::stage1_samples(
                &DataSpec {
                    stage1_limit: 0,
                    ..spec.clone()
                },
                "val",
                false,
            )?;
            let va = first_images(va, exp.data.val_images as usize, |s| s.image.clone());
            let mut refs: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
            for s in &va {
                refs.entry(s.image.clone())
                    .or_default()
                    .push(s.caption.clone());
            }
            eval.captions = refs
                .into_iter()
                .take(exp.eval.caption_images as usize)
                .collect();
            let (tr, s1, t1) = builder.build_all(&tr, SequenceBuilder::caption, |s| s.id.clone());
            let (va, _, _) = builder.build_all(&va, SequenceBuilder::caption, |s| s.id.clone());
            sk.merge(&s1);
            (tr, va, sk, t1)
        }
        _ => {
            let (tr, va, mut sk) = samples::stage2_samples(&spec, false)?;
            eval.questions = va
                .iter()
                .filter_map(|c| c.image.as_ref().map(|p| (p, &c.turns)))
                .flat_map(|(p, turns)| turns.iter().map(move |t| (p.clone(), t.clone())))
                .take(exp.eval.qa_samples as usize)
                .collect();
            let (tr, s2, t2) =
                builder.build_all(&tr, SequenceBuilder::conversation, |c| c.id.clone());
            let (va, _, _) =
                builder.build_all(&va, SequenceBuilder::conversation, |c| c.id.clone());
            sk.merge(&s2);
            (tr, va, sk, t2)
        }
    };
    let images: Vec<PathBuf> = train
        .iter()
        .chain(&val)
        .filter_map(|s| s.image.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let opts = BuildOptions {
        progress: true,
        ..Default::default()
    };
    let (cache, report) = FeatureCache::build(
        &crate::fsutil::cache_root().join("features"),
        &extractor,
        &pre,
        &images,
        &opts,
    )?;
    let (mut train, mut val) = (train, val);
    keep_cached(&mut train, &cache, &mut skips);
    keep_cached(&mut val, &cache, &mut SkipReport::default());
    // Score only images whose features exist (an undecodable one is counted as a skip).
    eval.captions.retain(|(p, _)| cache.get_f32(p).is_some());
    eval.questions.retain(|(p, _)| cache.get_f32(p).is_some());
    anyhow::ensure!(
        !train.is_empty(),
        "stage {stage} has no training samples left (skips: {:?})",
        skips.metrics()
    );
    let batcher = LlavaBatcher {
        pad_id: spec.pad_id,
        image_tokens: cache.tokens(),
        feature_dim: cache.dim(),
        pad_to_multiple: exp.data.pad_multiple(),
    };
    Ok(StageData {
        train,
        val,
        cache,
        batcher,
        skips,
        truncation,
        extracted: report.extracted,
        eval,
    })
}

/// The samples of the first `n` distinct images in a seeded but stable order (0 = all).
fn first_images<T>(samples: Vec<T>, n: usize, image: impl Fn(&T) -> PathBuf) -> Vec<T> {
    if n == 0 {
        return samples;
    }
    let mut names: Vec<PathBuf> = samples
        .iter()
        .map(&image)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    names.truncate(n);
    let keep: BTreeSet<PathBuf> = names.into_iter().collect();
    samples
        .into_iter()
        .filter(|s| keep.contains(&image(s)))
        .collect()
}
