//! `harness eval`: scoring outputs against references.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::eval::bench::run::{bench_run, summary_lines, BenchRequest};
use crate::eval::bench::{self, GtPaths, Task};
use crate::eval::coco_files::evaluate_files;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Score captions in the COCO results format against COCO caption annotations
    /// (BLEU-1..4, ROUGE-L, CIDEr-D as pycocoevalcap computes them).
    Captions(CaptionsArgs),
    /// Score a benchmark's answers (LLaVA's answers JSONL) as the official / LLaVA scripts
    /// do: pope, textvqa, vqav2, gqa, scienceqa, mme.
    Score(ScoreArgs),
    /// Answer a benchmark's questions with a run's stage-2 model and score them:
    /// answers to results/<run>/bench/<task>/answers.jsonl (LLaVA's format; an interrupted
    /// evaluation resumes), metrics bench/<task>/* into the run's metrics.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The run: id, unique id prefix, or experiment name (its latest run).
    pub run: String,
    /// pope, textvqa, vqav2, gqa, scienceqa (or sqa), mme.
    #[arg(long, value_parser = parse_task)]
    pub task: Task,
    /// The benchmark's folder in LLaVA's eval layout (README: Benchmarks).
    #[arg(long)]
    pub data: PathBuf,
    /// Questions evaluated, spread evenly over the question file (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Print the score as one JSON object {"task", "n", "metrics", "missing", "extra"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// pope, textvqa, vqav2, gqa, scienceqa (or sqa), mme.
    #[arg(long, value_parser = parse_task)]
    pub task: Task,
    /// Answers: JSON Lines `{"question_id", "prompt", "text", ...}`.
    #[arg(long)]
    pub pred: PathBuf,
    /// Ground truth: POPE's label folder (coco_pope_*.json), TextVQA_0.5.1_val.json, the
    /// VQA v2 annotations JSON, GQA's testdev_balanced_questions.json, ScienceQA's folder
    /// (problems.json, pid_splits.json), MME_Benchmark_release_version/.
    #[arg(long)]
    pub gt: PathBuf,
    /// POPE: LLaVA's question file (llava_pope_test.jsonl), required. VQA v2: the
    /// questions JSON, optional, checked against the annotations.
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// ScienceQA: the split of pid_splits.json (default test).
    #[arg(long)]
    pub split: Option<String>,
    /// Print one JSON object {"task", "n", "metrics", "missing", "extra"}.
    #[arg(long)]
    pub json: bool,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

#[derive(Args, Debug)]
pub struct CaptionsArgs {
    /// Predictions: `[{"image_id": int, "caption": str}, ...]`.
    #[arg(long)]
    pub pred: PathBuf,
    /// References: a COCO captions file such as `captions_val2017.json`.
    #[arg(long)]
    pub refs: PathBuf,
    /// Print one JSON object (keys Bleu_1..Bleu_4, ROUGE_L, CIDEr).
    #[arg(long)]
    pub json: bool,
}

pub fn eval(results: &Path, cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Captions(a) => captions(a),
        EvalCommand::Score(a) => score(a),
        EvalCommand::Bench(a) => run_bench(results, a),
    }
}

fn run_bench(results: &Path, a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    crate::store::install_signal_handler();
    let store = crate::store::Store::new(results);
    let req = BenchRequest {
        task: a.task,
        data: a.data,
        limit: a.limit,
        batch: a.batch,
    };
    let o = bench_run(&store, &a.run, &req)?;
    for line in summary_lines(&o) {
        eprintln!("{line}");
    }
    let Some(s) = &o.score else {
        anyhow::bail!(
            "interrupted after {} of {} questions; run the same command again to resume",
            o.resumed + o.generated,
            o.selected
        );
    };
    for n in &s.notes {
        eprintln!("note: {n}");
    }
    if a.json {
        println!("{}", s.to_json_string());
    } else {
        println!("answers: {}", o.answers.display());
        let width = s.metrics.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in s.metrics.iter() {
            println!("{k:<width$}  {v:.6}");
        }
    }
    Ok(())
}

fn score(a: ScoreArgs) -> anyhow::Result<()> {
    let paths = GtPaths {
        gt: a.gt,
        questions: a.questions,
        split: a.split,
    };
    let s = bench::score_files(a.task, &a.pred, &paths)?;
    // Coverage and notes go to stderr, so --json output stays one object.
    let c = &s.coverage;
    if c.missing.count > 0 {
        eprintln!(
            "warning: ground-truth items without a prediction (not scored): {}",
            c.missing.describe()
        );
    }
    if c.extra.count > 0 {
        eprintln!(
            "warning: predictions matching no ground-truth item: {}",
            c.extra.describe()
        );
    }
    for n in &s.notes {
        eprintln!("note: {n}");
    }
    if a.json {
        println!("{}", s.to_json_string());
    } else {
        println!(
            "{}: {} of {} ground-truth items scored ({} missing, {} extra predictions)",
            s.task, s.n, c.gt_items, c.missing.count, c.extra.count
        );
        let width = s.metrics.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in s.metrics.iter() {
            println!("{k:<width$}  {v:.6}");
        }
    }
    Ok(())
}

fn captions(a: CaptionsArgs) -> anyhow::Result<()> {
    let s = evaluate_files(&a.pred, &a.refs)?;
    if a.json {
        let mut m = serde_json::Map::new();
        for (k, v) in s.named() {
            m.insert(k.into(), v.into());
        }
        println!("{}", serde_json::Value::Object(m));
    } else {
        println!("images scored: {}", s.images);
        for (k, v) in s.named() {
            println!("{k:<8} {v:.6}");
        }
        println!("METEOR   not computed (needs Java; not implemented)");
        println!("SPICE    not computed (needs Java; not implemented)");
    }
    Ok(())
}
