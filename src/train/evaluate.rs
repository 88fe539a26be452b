//! Evaluation at the end of each stage: after stage 1, captions for held-out val images
//! scored like pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D); after stage 2, answers to
//! held-out questions scored by exact match per question type. Scores go into the metrics
//! table (split `eval`), a gallery of samples into `samples.json` for the reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Compute;
use crate::config::Experiment;
use crate::data::cache::FeatureCache;
use crate::data::instruct::QaTurn;
use crate::data::sequence::ChatTemplate;
use crate::eval::{self, GenerateOptions, PromptLayout, QaAccuracy};
use crate::model::phi::Phi;
use crate::model::projector::Projector;
use crate::model::tokenizer::Tokenizer;
use crate::store::metrics::MetricsWriter;

/// What a stage is scored on.
#[derive(Debug, Clone, Default)]
pub struct EvalSet {
    /// Val images with all their reference captions (stage 1).
    pub captions: Vec<(PathBuf, Vec<String>)>,
    /// Held-out questions with their image (stage 2).
    pub questions: Vec<(PathBuf, QaTurn)>,
}

/// One shown sample (`samples.json`, read by the reports).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub image: Option<String>,
    pub prompt: String,
    pub reference: String,
    pub output: String,
    pub stage: String,
}

fn features(
    cache: &FeatureCache,
    images: &[&PathBuf],
    device: &burn::tensor::Device<Compute>,
) -> Tensor<Compute, 3> {
    let (t, d) = (cache.tokens(), cache.dim());
    let mut v = Vec::with_capacity(images.len() * t * d);
    for p in images {
        v.extend(cache.get_f32(p).unwrap_or_else(|| vec![0.0; t * d]));
    }
    Tensor::from_data(TensorData::new(v, [images.len(), t, d]), device)
}

/// Scores the trained model of `stage` and logs the results; returns the gallery.
#[allow(clippy::too_many_arguments)]
pub fn run(
    stage: u8,
    exp: &Experiment,
    projector: &Projector<Compute>,
    lm: &Phi<Compute>,
    tok: &Tokenizer,
    set: &EvalSet,
    cache: &FeatureCache,
    metrics: &mut MetricsWriter,
    step: u64,
) -> Result<Vec<Sample>> {
    let device = crate::backend::device(exp.devices[0]);
    let opts = GenerateOptions::for_experiment(exp, tok.eos_id);
    let name = format!("stage{stage}");
    let batch = 16;
    let mut gallery = vec![];
    let shown = exp.eval.gallery as usize;
    let label = |p: &Path| Some(p.display().to_string());
    if stage == 1 && !set.captions.is_empty() {
        let images: Vec<&PathBuf> = set.captions.iter().map(|(p, _)| p).collect();
        let out = eval::caption_images(
            projector,
            lm,
            tok,
            features(cache, &images, &device),
            &PromptLayout::caption(),
            &opts,
            batch,
        )?;
        let preds: BTreeMap<usize, String> = out.iter().cloned().enumerate().collect();
        let refs: BTreeMap<usize, Vec<String>> = set
            .captions
            .iter()
            .map(|(_, r)| r.clone())
            .enumerate()
            .collect();
        let scores = eval::score_raw(&preds, &refs)?;
        for (k, v) in scores.named() {
            metrics.log(&name, "eval", step, 0.0, k, v)?;
        }
        for ((img, r), o) in set.captions.iter().zip(&out).take(shown) {
            gallery.push(Sample {
                image: label(img),
                prompt: String::new(),
                reference: r.join(" | "),
                output: o.clone(),
                stage: name.clone(),
            });
        }
    }
    if stage == 2 && !set.questions.is_empty() {
        let template = ChatTemplate::named(&exp.data.template)?;
        let images: Vec<&PathBuf> = set.questions.iter().map(|(p, _)| p).collect();
        let qs: Vec<String> = set
            .questions
            .iter()
            .map(|(_, q)| q.question.clone())
            .collect();
        let out = eval::answer_questions(
            projector,
            lm,
            tok,
            &template,
            features(cache, &images, &device),
            &qs,
            &opts,
            batch,
        )?;
        let mut acc = QaAccuracy::default();
        for ((_, q), o) in set.questions.iter().zip(&out) {
            acc.add(
                q.qtype.as_deref().unwrap_or("other"),
                eval::qa_exact_match(o, &q.answer),
            );
        }
        for (kind, v) in acc.fractions() {
            metrics.log(&name, "eval", step, 0.0, &format!("qa_acc/{kind}"), v)?;
        }
        if let Some(all) = acc.overall() {
            metrics.log(&name, "eval", step, 0.0, "qa_acc", all)?;
        }
        for ((img, q), o) in set.questions.iter().zip(&out).take(shown) {
            gallery.push(Sample {
                image: label(img),
                prompt: q.question.clone(),
                reference: q.answer.clone(),
                output: o.clone(),
                stage: name.clone(),
            });
        }
    }
    Ok(gallery)
}

/// Replaces this stage's entries in `run_dir/samples.json`, keeping the other stage's.
pub fn write_samples(run_dir: &Path, stage: u8, new: Vec<Sample>) -> Result<()> {
    let path = run_dir.join("samples.json");
    let name = format!("stage{stage}");
    let mut all: Vec<Sample> = crate::fsutil::read_json(&path).unwrap_or_default();
    all.retain(|s| s.stage != name);
    all.extend(new);
    crate::fsutil::write_json(&path, &all)
}
