//! Evaluation at the end of each stage: after stage 1, captions for held-out val images
//! scored like pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D); after stage 2, answers to
//! held-out questions scored by exact match per question type. Scores go into the metrics
//! table (split `eval`), each item's score into the run's item tables
//! ([`crate::store::items`]: an image's CIDEr-D, a question's 0/1, with prediction and
//! reference), a gallery of samples into `samples.json` for the reports.

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
use crate::store::items::{self, Item};
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

/// What one evaluation produced besides its logged metrics.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// The first `eval.gallery` samples, for the reports.
    pub gallery: Vec<Sample>,
    /// Every scored item, one table per task (captions, qa).
    pub items: Vec<Vec<Item>>,
}

/// An image's id in the item tables: its file name, the same in every run on the data.
fn image_id(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| p.display().to_string())
}

/// Question ids: `<image file name>#<k>` for the k-th question about that image in the
/// evaluation's order (the file's order), stable across runs on the same data.
pub fn question_ids(images: &[&PathBuf]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    images
        .iter()
        .map(|p| {
            let name = image_id(p);
            let k = seen.entry(name.clone()).or_insert(0);
            let id = format!("{name}#{k}");
            *k += 1;
            id
        })
        .collect()
}

/// Scores the trained model of `stage` and logs the results; returns the gallery and the
/// per-item scores.
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
    run_id: &str,
) -> Result<Evaluation> {
    let device = crate::backend::device(exp.devices[0]);
    let opts = GenerateOptions::for_experiment(exp, tok.eos_id);
    let name = format!("stage{stage}");
    let batch = 16;
    let mut gallery = vec![];
    let mut tables = vec![];
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
        let pairs: Vec<(String, Vec<String>)> = set
            .captions
            .iter()
            .zip(&out)
            .map(|((_, r), o)| (o.clone(), r.clone()))
            .collect();
        let per_image = eval::caption_set::CaptionSet::from_raw(&pairs)?.per_image_cider();
        tables.push(
            set.captions
                .iter()
                .zip(&out)
                .zip(per_image)
                .map(|(((img, r), o), score)| Item {
                    run_id: run_id.into(),
                    stage: name.clone(),
                    task: "captions".into(),
                    item: image_id(img),
                    kind: String::new(),
                    metric: "CIDEr".into(),
                    score,
                    prediction: o.clone(),
                    reference: items::join_references(r),
                })
                .collect(),
        );
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
        let mut table = vec![];
        for (((_, q), o), id) in set.questions.iter().zip(&out).zip(question_ids(&images)) {
            let kind = q.qtype.as_deref().unwrap_or("other");
            let correct = eval::qa_exact_match(o, &q.answer);
            acc.add(kind, correct);
            table.push(Item {
                run_id: run_id.into(),
                stage: name.clone(),
                task: "qa".into(),
                item: id,
                kind: kind.into(),
                metric: "qa_acc".into(),
                score: if correct { 1.0 } else { 0.0 },
                prediction: o.clone(),
                reference: q.answer.clone(),
            });
        }
        tables.push(table);
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
    Ok(Evaluation {
        gallery,
        items: tables,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_ids_count_questions_per_image_in_order() {
        let (a, b) = (
            PathBuf::from("val2017/001.jpg"),
            PathBuf::from("/x/val2017/002.jpg"),
        );
        let ids = question_ids(&[&a, &a, &b, &a, &b]);
        assert_eq!(
            ids,
            [
                "001.jpg#0",
                "001.jpg#1",
                "002.jpg#0",
                "001.jpg#2",
                "002.jpg#1"
            ]
        );
    }
}
