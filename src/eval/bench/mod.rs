//! Benchmark scoring by the rules of the official / LLaVA evaluation scripts, on
//! predictions in LLaVA's answers format ([`answers`]).
//!
//! | task | ground truth | reference rule |
//! |---|---|---|
//! | [`pope`] | `coco_pope_<category>.json` label files (+ LLaVA's question file) | `llava/eval/eval_pope.py` |
//! | [`textvqa`] | `TextVQA_0.5.1_val.json` | `llava/eval/eval_textvqa.py` + `m4c_evaluator.py` |
//! | [`vqav2`] | VQA v2 annotations (+ questions) JSON | LLaVA's `convert_vqav2_for_submission.py` + `vqaEval.py` |
//! | [`gqa`] | `testdev_balanced_questions.json` | `scripts/convert_gqa_for_eval.py` + GQA's `eval.py` |
//! | [`scienceqa`] | `problems.json` + `pid_splits.json` | `llava/eval/eval_science_qa.py` |
//! | [`mme`] | `MME_Benchmark_release_version/` | `convert_answer_to_mme.py` + MME's `calculation.py` |
//!
//! [`GroundTruth::load`] reads a benchmark's files once; [`score`] scores [`Answers`] against
//! it and returns a [`BenchScore`]: `n` items scored, metrics by name in a fixed order,
//! per-item scores (for intervals and paired tests), and the [`Coverage`] (missing and extra
//! predictions are reported, not fatal; see [`matching`]). Accuracies are fractions in
//! [0, 1] (the scripts print some as percentages); MME scores are MME's points
//! (accuracy + accuracy+ per subtask, times 100). [`BenchScore::store_metrics`] names them
//! `bench/<task>/<metric>` for the run store.
//!
//! Generation: [`run`] has a run's model answer a benchmark's questions
//! (`harness eval bench`, `[[eval.bench]]`), from a folder in LLaVA's eval layout
//! ([`layout`]), into an answers file that survives interruption ([`answer_log`]).

pub mod answer_log;
pub mod answers;
pub mod gqa;
pub mod layout;
pub mod matching;
pub mod mme;
pub mod normalize;
pub mod pope;
pub mod pystr;
pub mod run;
pub mod scienceqa;
pub mod textvqa;
pub mod vqav2;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::ser::{Serialize, SerializeMap, Serializer};

pub use answers::{Answer, Answers, QuestionId};
pub use matching::{Coverage, IdSample};

/// A benchmark with a scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Pope,
    TextVqa,
    VqaV2,
    Gqa,
    ScienceQa,
    Mme,
}

impl Task {
    pub const ALL: [Task; 6] = [
        Task::Pope,
        Task::TextVqa,
        Task::VqaV2,
        Task::Gqa,
        Task::ScienceQa,
        Task::Mme,
    ];

    /// The name used on the command line and in metric names.
    pub fn name(self) -> &'static str {
        match self {
            Task::Pope => "pope",
            Task::TextVqa => "textvqa",
            Task::VqaV2 => "vqav2",
            Task::Gqa => "gqa",
            Task::ScienceQa => "scienceqa",
            Task::Mme => "mme",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Task> {
        let t = match s.to_ascii_lowercase().as_str() {
            "pope" => Task::Pope,
            "textvqa" => Task::TextVqa,
            "vqav2" => Task::VqaV2,
            "gqa" => Task::Gqa,
            "scienceqa" | "sqa" => Task::ScienceQa,
            "mme" => Task::Mme,
            _ => {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                bail!("unknown task {s:?}; one of {}", names.join(", "))
            }
        };
        Ok(t)
    }
}

/// Where a benchmark's ground truth lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtPaths {
    /// The ground truth: POPE's label folder, TextVQA's val JSON, VQAv2's annotations,
    /// GQA's questions JSON, ScienceQA's folder (problems.json, pid_splits.json), MME's
    /// `MME_Benchmark_release_version` folder.
    pub gt: PathBuf,
    /// A questions file: LLaVA's POPE question file (required for POPE: it has the
    /// categories), the VQA v2 questions JSON (optional, checked against the annotations).
    pub questions: Option<PathBuf>,
    /// ScienceQA's split in pid_splits.json (default `test`).
    pub split: Option<String>,
}

impl GtPaths {
    pub fn new(gt: impl Into<PathBuf>) -> GtPaths {
        GtPaths {
            gt: gt.into(),
            questions: None,
            split: None,
        }
    }
}

/// A benchmark's ground truth, loaded.
#[derive(Debug, Clone)]
pub enum GroundTruth {
    Pope(pope::PopeGt),
    TextVqa(textvqa::TextVqaGt),
    VqaV2(vqav2::VqaGt),
    Gqa(gqa::GqaGt),
    ScienceQa(scienceqa::ScienceQaGt),
    Mme(mme::MmeGt),
}

impl GroundTruth {
    /// Reads `task`'s ground truth; options that `task` does not take are an error.
    pub fn load(task: Task, paths: &GtPaths) -> Result<GroundTruth> {
        if paths.split.is_some() && task != Task::ScienceQa {
            bail!("--split is for scienceqa only (pid_splits.json); {task} has no splits");
        }
        let no_questions = || -> Result<()> {
            if let Some(q) = &paths.questions {
                bail!(
                    "{task} takes no questions file ({}): its ground truth has the questions",
                    q.display()
                );
            }
            Ok(())
        };
        Ok(match task {
            Task::Pope => {
                let Some(q) = &paths.questions else {
                    bail!(
                        "pope needs --questions: LLaVA's POPE question file \
                         (llava_pope_test.jsonl), which gives each question's category"
                    );
                };
                GroundTruth::Pope(pope::PopeGt::load(q, &paths.gt)?)
            }
            Task::TextVqa => {
                no_questions()?;
                GroundTruth::TextVqa(textvqa::TextVqaGt::load(&paths.gt)?)
            }
            Task::VqaV2 => {
                GroundTruth::VqaV2(vqav2::VqaGt::load(&paths.gt, paths.questions.as_deref())?)
            }
            Task::Gqa => {
                no_questions()?;
                GroundTruth::Gqa(gqa::GqaGt::load(&paths.gt)?)
            }
            Task::ScienceQa => {
                no_questions()?;
                let split = paths.split.as_deref().unwrap_or("test");
                GroundTruth::ScienceQa(scienceqa::ScienceQaGt::load(&paths.gt, split)?)
            }
            Task::Mme => {
                no_questions()?;
                GroundTruth::Mme(mme::MmeGt::load(&paths.gt)?)
            }
        })
    }

    pub fn task(&self) -> Task {
        match self {
            GroundTruth::Pope(_) => Task::Pope,
            GroundTruth::TextVqa(_) => Task::TextVqa,
            GroundTruth::VqaV2(_) => Task::VqaV2,
            GroundTruth::Gqa(_) => Task::Gqa,
            GroundTruth::ScienceQa(_) => Task::ScienceQa,
            GroundTruth::Mme(_) => Task::Mme,
        }
    }
}

/// Metric values by name, in the order the scorer gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    pub fn push(&mut self, name: impl Into<String>, value: f64) {
        self.0.push((name.into(), value));
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A JSON object in the metrics' order.
impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// One scored item: its id (as the answers file gives it) and its score in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct ItemScore {
    pub id: String,
    pub score: f64,
}

/// What a scorer returns.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchScore {
    pub task: Task,
    /// Items scored (ground-truth items with a prediction).
    pub n: usize,
    pub metrics: Metrics,
    /// Per item, in the ground truth's order (TextVQA: the answers' order).
    pub items: Vec<ItemScore>,
    pub coverage: Coverage,
    /// Remarks a reader should see (a category without predictions, ...).
    pub notes: Vec<String>,
}

impl BenchScore {
    /// The metrics as the run store names them: `bench/<task>/<metric>`.
    pub fn store_metrics(&self) -> Vec<(String, f64)> {
        self.metrics
            .iter()
            .map(|(k, v)| (format!("bench/{}/{k}", self.task), v))
            .collect()
    }

    /// One JSON object, `{"task", "n", "metrics", "missing", "extra"}`, the metrics in
    /// their order (written directly: a `serde_json::Value` would sort them).
    pub fn to_json_string(&self) -> String {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            task: &'a str,
            n: usize,
            metrics: &'a Metrics,
            missing: usize,
            extra: usize,
        }
        serde_json::to_string(&Out {
            task: self.task.name(),
            n: self.n,
            metrics: &self.metrics,
            missing: self.coverage.missing.count,
            extra: self.coverage.extra.count,
        })
        .expect("metrics serialize")
    }
}

/// Scores `answers` on `task` against its ground truth.
pub fn score(task: Task, answers: &Answers, gt: &GroundTruth) -> Result<BenchScore> {
    if gt.task() != task {
        bail!("ground truth of {} given to score {task}", gt.task().name());
    }
    match gt {
        GroundTruth::Pope(g) => pope::score(answers, g),
        GroundTruth::TextVqa(g) => textvqa::score(answers, g),
        GroundTruth::VqaV2(g) => vqav2::score(answers, g),
        GroundTruth::Gqa(g) => gqa::score(answers, g),
        GroundTruth::ScienceQa(g) => scienceqa::score(answers, g),
        GroundTruth::Mme(g) => mme::score(answers, g),
    }
}

/// Reads an answers file and the ground truth, and scores (`harness eval score`).
pub fn score_files(task: Task, pred: &Path, paths: &GtPaths) -> Result<BenchScore> {
    let gt = GroundTruth::load(task, paths)?;
    let answers = Answers::read(pred)?;
    score(task, &answers, &gt)
}

/// `num / den`, for the rates every scorer computes (`den` > 0 by construction).
pub(crate) fn ratio(num: usize, den: usize) -> f64 {
    num as f64 / den as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_round_trip() {
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
        }
        assert_eq!("SQA".parse::<Task>().unwrap(), Task::ScienceQa);
        let e = "vqa".parse::<Task>().unwrap_err().to_string();
        assert!(
            e.contains("one of pope, textvqa, vqav2, gqa, scienceqa, mme"),
            "{e}"
        );
    }

    #[test]
    fn config_names_the_same_tasks() {
        let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, crate::config::BENCH_TASKS);
    }

    #[test]
    fn metrics_keep_their_order_in_json_and_store_names() {
        let mut m = Metrics::default();
        m.push("f1", 0.5);
        m.push("accuracy", 0.25);
        let s = BenchScore {
            task: Task::Pope,
            n: 4,
            metrics: m,
            items: vec![],
            coverage: Coverage::default(),
            notes: vec![],
        };
        assert_eq!(
            s.to_json_string(),
            r#"{"task":"pope","n":4,"metrics":{"f1":0.5,"accuracy":0.25},"missing":0,"extra":0}"#
        );
        assert_eq!(
            s.store_metrics(),
            vec![
                ("bench/pope/f1".to_string(), 0.5),
                ("bench/pope/accuracy".to_string(), 0.25)
            ]
        );
    }

    #[test]
    fn options_a_task_does_not_take_are_errors() {
        let mut p = GtPaths::new("/nonexistent");
        p.split = Some("val".into());
        let e = GroundTruth::load(Task::Gqa, &p).unwrap_err().to_string();
        assert!(e.contains("--split is for scienceqa only"), "{e}");
        let e = GroundTruth::load(Task::Pope, &GtPaths::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pope needs --questions"), "{e}");
        let mut p = GtPaths::new("/nonexistent");
        p.questions = Some("q.json".into());
        let e = GroundTruth::load(Task::Mme, &p).unwrap_err().to_string();
        assert!(e.contains("mme takes no questions file"), "{e}");
    }
}
