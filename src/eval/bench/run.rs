//! Benchmark evaluation of a finished run (`harness eval bench`, `[[eval.bench]]`): the
//! run's stage-2 model ([`Session`]) answers a benchmark's questions ([`super::layout`]),
//! greedily, in batches, with the KV cache; the answers go to
//! `results/<run>/bench/<task>/answers.jsonl` in LLaVA's answers format (so LLaVA's own
//! scripts can score them too), are scored by [`super::score`], and the metrics go into
//! the run's metrics table as `bench/<task>/<metric>` (stage `stage2`, split `eval`, at
//! stage 2's last step), with `bench/<task>/n` (items scored), `bench/<task>/samples_per_s`
//! (questions answered per second by this call, image decoding and CLIP included, model
//! loading not) and `bench/<task>/missing_images`. `bench/<task>/result.json` sums it up.
//!
//! Resuming: answers are appended one line at a time ([`super::answer_log`]); a new call
//! skips every selected question already answered (matched by id and prompt) and asks
//! only the rest, so an interrupted evaluation (Ctrl-C, kill, crash) continues where it
//! stopped and every question is answered once. Scoring reads the selected questions'
//! answers only, so a smaller `--limit` after a larger one scores its own selection.
//!
//! Missing or unreadable images: the question is skipped (nothing written, so a later call
//! retries it), counted and named in [`BenchOutcome`], never fatal; only a benchmark where
//! no question could be answered at all is an error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::answer_log::{AnswerLine, AnswerLog, WriterLock};
use super::answers::{Answer, Answers};
use super::layout::{load_questions, spread, BenchQuestion, Layout};
use super::{score, BenchScore, GroundTruth, Metrics, Task};
use crate::backend::Compute;
use crate::config::{BenchConfig, Experiment};
use crate::data::cache::FeatureExtractor;
use crate::data::images::ImageRoot;
use crate::eval::generate::{Decoding, GenerateOptions};
use crate::eval::infer::{decode, generate_for_images, generate_for_text, PromptLayout};
use crate::eval::session::Session;
use crate::model::preprocess::{load_image, preprocess};
use crate::store::metrics::MetricsWriter;
use crate::store::{self, Store};

/// Images run through CLIP together.
const CLIP_BATCH: usize = 16;
/// Questions prepared and generated per round (times the batch): prompts of one length
/// batch together within a round, and an interrupt is noticed between rounds.
const ROUND_BATCHES: usize = 8;

/// One benchmark to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRequest {
    pub task: Task,
    /// The benchmark's folder ([`Layout`]).
    pub data: PathBuf,
    /// Questions evaluated, spread evenly over the question file ([`spread`]); 0 = all.
    pub limit: usize,
    /// Prompts generated together.
    pub batch: usize,
}

impl BenchRequest {
    /// The request an `[[eval.bench]]` entry makes.
    pub fn from_config(b: &BenchConfig) -> Result<BenchRequest> {
        Ok(BenchRequest {
            task: b.task.parse()?,
            data: PathBuf::from(&b.data),
            limit: b.limit as usize,
            batch: (b.batch as usize).max(1),
        })
    }
}

/// What one evaluation did.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub task: Task,
    /// `results/<run>/bench/<task>/answers.jsonl`.
    pub answers: PathBuf,
    /// Questions in the question file (duplicates dropped) and selected by the limit.
    pub questions: usize,
    pub selected: usize,
    /// Selected questions already answered by an earlier call.
    pub resumed: usize,
    /// Questions this call answered.
    pub generated: usize,
    /// Selected questions skipped because their image is missing (or escapes the image
    /// folder), with the image names, and because it does not decode.
    pub missing_images: Vec<String>,
    pub undecodable_images: Vec<String>,
    /// Questions per second of this call, when it answered any.
    pub samples_per_s: Option<f64>,
    /// Questions the file asks twice (asked once).
    pub duplicates: usize,
    /// Bytes of a torn last answer removed on reopening (a crash mid-write).
    pub cut: usize,
    /// The score of the selection; `None` when interrupted before the end.
    pub score: Option<BenchScore>,
}

impl BenchOutcome {
    pub fn interrupted(&self) -> bool {
        self.score.is_none()
    }

    /// Skipped questions in one line: how many, why, the first image names.
    pub fn skipped_line(&self) -> Option<String> {
        let part = |what: &str, names: &[String]| {
            (!names.is_empty()).then(|| {
                let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                let more = if names.len() > 5 { ", ..." } else { "" };
                format!("{} {what} ({}{more})", names.len(), shown.join(", "))
            })
        };
        let parts: Vec<String> = [
            part("missing images", &self.missing_images),
            part("undecodable images", &self.undecodable_images),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "{}: questions skipped, not answered: {}",
                self.task,
                parts.join("; ")
            )
        })
    }
}

/// Where a run keeps a task's answers.
pub fn bench_dir(store: &Store, run_id: &str, task: Task) -> PathBuf {
    store.run_dir(run_id).join("bench").join(task.name())
}

/// The step stage 2's metrics end at: the newest stage-2 checkpoint's step (next to the
/// `final/` weights the session loaded), else 0.
fn final_step(session: &Session) -> u64 {
    let Some(dir) = session.weights_dir.parent() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .filter_map(|e| {
            let v: serde_json::Value =
                crate::fsutil::read_json(&e.path().join("state.json")).ok()?;
            v.get("step")?.as_u64()
        })
        .max()
        .unwrap_or(0)
}

/// `harness eval bench`: loads run `reference`'s stage-2 model and evaluates `req`,
/// recording the metrics in the run's metrics table.
pub fn bench_run(store: &Store, reference: &str, req: &BenchRequest) -> Result<BenchOutcome> {
    let session = Session::load_stage(store, reference, Some(2))?;
    let dir = store.run_dir(&session.run_id);
    let mut metrics = MetricsWriter::new(
        &dir.join("metrics"),
        &session.run_id,
        std::time::Duration::from_secs(2),
    )?;
    let out = evaluate(store, &session, req, &mut metrics)?;
    metrics.flush()?;
    Ok(out)
}

/// The `[[eval.bench]]` entries of run `run_id`'s experiment, in order, on one loaded
/// model; stops after an interrupted one. Every outcome is also written to the run's log.
pub fn configured(
    store: &Store,
    run_id: &str,
    exp: &Experiment,
    metrics: &mut MetricsWriter,
) -> Result<Vec<BenchOutcome>> {
    let mut out = Vec::new();
    if exp.eval.bench.is_empty() {
        return Ok(out);
    }
    let session = Session::load_stage(store, run_id, Some(2))?;
    let dir = store.run_dir(run_id);
    for b in &exp.eval.bench {
        let req = BenchRequest::from_config(b)?;
        let o = evaluate(store, &session, &req, metrics)
            .with_context(|| format!("benchmark {} on {}", req.task, req.data.display()))?;
        for line in summary_lines(&o) {
            eprintln!("{line}");
            store::log_line(&dir, &line);
        }
        let stop = o.interrupted();
        out.push(o);
        if stop {
            break;
        }
    }
    Ok(out)
}

/// Human lines about an outcome (for logs and the CLI).
pub fn summary_lines(o: &BenchOutcome) -> Vec<String> {
    let mut lines = Vec::new();
    let rate = o
        .samples_per_s
        .map(|r| format!(", {r:.1} questions/s"))
        .unwrap_or_default();
    lines.push(format!(
        "bench {}: {} of {} questions selected; {} answered now{rate}, {} earlier",
        o.task, o.selected, o.questions, o.generated, o.resumed
    ));
    if let Some(s) = o.skipped_line() {
        lines.push(s);
    }
    match &o.score {
        None => lines.push(format!(
            "bench {}: interrupted; run again to resume ({} kept)",
            o.task,
            o.answers.display()
        )),
        Some(s) => {
            let shown: Vec<String> = s
                .metrics
                .iter()
                .filter(|(k, _)| !k.contains('/'))
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            lines.push(format!(
                "bench {}: {} scored: {}",
                o.task,
                s.n,
                shown.join(", ")
            ));
        }
    }
    lines
}

/// What `result.json` holds.
#[derive(Serialize)]
struct ResultFile<'a> {
    task: &'a str,
    n: usize,
    metrics: &'a Metrics,
    questions: usize,
    selected: usize,
    limit: usize,
    batch: usize,
    answered_before: usize,
    generated: usize,
    samples_per_s: Option<f64>,
    missing_images: &'a [String],
    undecodable_images: &'a [String],
    data: String,
}

/// A question ready to generate.
struct Ready<'a> {
    q: &'a BenchQuestion,
    /// Preprocessed pixels; `None` for a text-only question.
    pixels: Option<Vec<f32>>,
}

/// Evaluates `req` with a loaded session; metrics go to `metrics` (flushed at the end).
pub fn evaluate(
    store: &Store,
    session: &Session,
    req: &BenchRequest,
    metrics: &mut MetricsWriter,
) -> Result<BenchOutcome> {
    let task = req.task;
    let layout = Layout::new(task, &req.data);
    layout.check()?;
    // The ground truth first: a bad file is better found before an hour of generation.
    let gt = GroundTruth::load(task, &layout.gt)?;
    let (questions, duplicates) = load_questions(&layout)?;
    let selection: Vec<&BenchQuestion> = spread(questions.len(), req.limit)
        .into_iter()
        .map(|i| &questions[i])
        .collect();

    let dir = bench_dir(store, &session.run_id, task);
    let _lock = WriterLock::acquire(&dir.join("lock"))?;
    let opened = AnswerLog::open(&dir.join("answers.jsonl"))?;
    let (mut log, existing, cut) = (opened.log, opened.existing, opened.cut);
    // The last answer to each (id, prompt) wins, as in the scorers' view of a file.
    let mut answered: HashMap<(String, String), Answer> = existing
        .items
        .into_iter()
        .map(|a| {
            let key = (a.question_id.key(), a.prompt.clone().unwrap_or_default());
            (key, a)
        })
        .collect();
    let todo: Vec<&BenchQuestion> = selection
        .iter()
        .copied()
        .filter(|q| !answered.contains_key(&q.key()))
        .collect();
    let resumed = selection.len() - todo.len();

    let root = ImageRoot::new(&layout.images)?;
    let opts = GenerateOptions {
        max_new_tokens: session.exp.eval.max_new_tokens as usize,
        eos: session.answer_eos(),
        // LLaVA evaluates with temperature 0 and one beam.
        decoding: Decoding::Greedy,
        use_cache: true,
    };
    let pad = session.tok.pad_id.unwrap_or(0);
    let bar = progress_bar(task, selection.len(), resumed);
    let (mut missing, mut undecodable) = (Vec::new(), Vec::new());
    let mut generated = 0usize;
    let mut interrupted = false;
    let t0 = Instant::now();
    for round in todo.chunks(req.batch.max(1) * ROUND_BATCHES) {
        if store::interrupted() {
            interrupted = true;
            break;
        }
        let mut ready = Vec::with_capacity(round.len());
        for &q in round {
            let Some(name) = &q.image else {
                ready.push(Ready { q, pixels: None });
                continue;
            };
            let path = match root.resolve(name) {
                Ok(p) => p,
                Err(_) => {
                    missing.push(name.clone());
                    bar.inc(1);
                    continue;
                }
            };
            match load_image(&path) {
                Ok(img) => ready.push(Ready {
                    q,
                    pixels: Some(preprocess(&img, &session.preprocess)),
                }),
                Err(_) => {
                    undecodable.push(name.clone());
                    bar.inc(1);
                }
            }
        }
        let texts = answer_round(session, &ready, &opts, pad, req.batch)?;
        for (r, text) in ready.iter().zip(texts) {
            let line = AnswerLine::new(
                &r.q.question_id,
                &r.q.prompt,
                &text,
                &session.run_id,
                json!({"image": r.q.image}),
            );
            log.append(&line)?;
            answered.insert(
                r.q.key(),
                Answer {
                    question_id: r.q.question_id.clone(),
                    prompt: Some(r.q.prompt.clone()),
                    text,
                    line: 0,
                },
            );
            generated += 1;
            bar.inc(1);
        }
    }
    log.sync()?;
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let samples_per_s = (generated > 0 && elapsed > 0.0).then(|| generated as f64 / elapsed);
    let answers_path = log.path().to_path_buf();
    let mut outcome = BenchOutcome {
        task,
        answers: answers_path.clone(),
        questions: questions.len(),
        selected: selection.len(),
        resumed,
        generated,
        missing_images: missing,
        undecodable_images: undecodable,
        samples_per_s,
        duplicates,
        cut,
        score: None,
    };
    if interrupted {
        return Ok(outcome);
    }

    // The selection's answers, in question order.
    let items: Vec<Answer> = selection
        .iter()
        .filter_map(|q| answered.get(&q.key()).cloned())
        .enumerate()
        .map(|(i, a)| Answer { line: i + 1, ..a })
        .collect();
    if items.is_empty() {
        bail!(
            "{}: no question of {} could be answered{}",
            task,
            layout.questions.display(),
            outcome
                .skipped_line()
                .map(|s| format!(
                    " ({s}; images are looked up under {})",
                    layout.images.display()
                ))
                .unwrap_or_default()
        );
    }
    let answers = Answers {
        source: answers_path.display().to_string(),
        items,
    };
    let s = score(task, &answers, &gt)?;
    let step = final_step(session);
    let log_metric = |m: &mut MetricsWriter, name: &str, v: f64| {
        m.log(
            "stage2",
            "eval",
            step,
            0.0,
            &format!("bench/{task}/{name}"),
            v,
        )
    };
    for (k, v) in s.store_metrics() {
        metrics.log("stage2", "eval", step, 0.0, &k, v)?;
    }
    log_metric(metrics, "n", s.n as f64)?;
    log_metric(
        metrics,
        "missing_images",
        (outcome.missing_images.len() + outcome.undecodable_images.len()) as f64,
    )?;
    if let Some(r) = samples_per_s {
        log_metric(metrics, "samples_per_s", r)?;
    }
    metrics.flush()?;
    crate::fsutil::write_json(
        &dir.join("result.json"),
        &ResultFile {
            task: task.name(),
            n: s.n,
            metrics: &s.metrics,
            questions: outcome.questions,
            selected: outcome.selected,
            limit: req.limit,
            batch: req.batch,
            answered_before: resumed,
            generated,
            samples_per_s,
            missing_images: &outcome.missing_images,
            undecodable_images: &outcome.undecodable_images,
            data: req.data.display().to_string(),
        },
    )?;
    outcome.score = Some(s);
    Ok(outcome)
}

/// The answers to one round of prepared questions, in their order.
fn answer_round(
    session: &Session,
    ready: &[Ready],
    opts: &GenerateOptions,
    pad: u32,
    batch: usize,
) -> Result<Vec<String>> {
    let mut out: Vec<Option<String>> = vec![None; ready.len()];
    let (with, without): (Vec<usize>, Vec<usize>) =
        (0..ready.len()).partition(|&i| ready[i].pixels.is_some());
    if !with.is_empty() {
        let pixels: Vec<Vec<f32>> = with
            .iter()
            .map(|&i| ready[i].pixels.clone().expect("an image"))
            .collect();
        let feats = features(session, &pixels)?;
        let layouts = with
            .iter()
            .map(|&i| PromptLayout::question(&session.tok, &session.template, &ready[i].q.text))
            .collect::<Result<Vec<_>>>()?;
        let g = generate_for_images(
            &session.projector,
            &session.lm,
            feats,
            &layouts,
            pad,
            opts,
            batch,
        );
        for (&i, g) in with.iter().zip(&g) {
            out[i] = Some(decode(&session.tok, g, opts.eos)?);
        }
    }
    if !without.is_empty() {
        let prompts = without
            .iter()
            .map(|&i| PromptLayout::text_only(&session.tok, &session.template, &ready[i].q.text))
            .collect::<Result<Vec<_>>>()?;
        let g = generate_for_text(&session.lm, &prompts, opts, batch, &session.device);
        for (&i, g) in without.iter().zip(&g) {
            out[i] = Some(decode(&session.tok, g, opts.eos)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|t| t.expect("every question answered"))
        .collect())
}

/// CLIP features `[images, patches, d_vision]` of preprocessed images.
fn features(session: &Session, pixels: &[Vec<f32>]) -> Result<Tensor<Compute, 3>> {
    let (t, d) = (session.clip.tokens(), session.clip.dim());
    let mut flat = Vec::with_capacity(pixels.len() * t * d);
    for chunk in pixels.chunks(CLIP_BATCH) {
        for f in session.clip.extract(chunk)? {
            flat.extend(f);
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(flat, [pixels.len(), t, d]),
        &session.device,
    ))
}

fn progress_bar(task: Task, total: usize, at: usize) -> indicatif::ProgressBar {
    // indicatif draws nothing when stderr is not a terminal (tests, logs).
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("bench {task}"));
    bar.set_position(at as u64);
    bar
}
