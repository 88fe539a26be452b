//! A benchmark's folder (`eval bench --data DIR`, `[[eval.bench]] data`) in LLaVA's eval
//! layout (`playground/data/eval/<task>/` after unpacking LLaVA's `eval.zip` and each
//! benchmark's images), and its questions as the model is asked them.
//!
//! | task | questions | ground truth | images |
//! |---|---|---|---|
//! | `pope` | `llava_pope_test.jsonl` | `coco/coco_pope_<category>.json` | `val2014/` |
//! | `gqa` | `llava_gqa_testdev_balanced.jsonl` | `data/testdev_balanced_questions.json` | `data/images/` |
//! | `textvqa` | `llava_textvqa_val_v051_ocr.jsonl` | `TextVQA_0.5.1_val.json` | `train_images/` |
//! | `vqav2` | `v2_OpenEnded_mscoco_val2014_questions.json` | `v2_mscoco_val2014_annotations.json` | `val2014/` |
//! | `scienceqa` | `llava_test_CQM-A.json` | `problems.json`, `pid_splits.json` (split `test`) | `images/test/` |
//! | `mme` | `llava_mme.jsonl` | `MME_Benchmark_release_version/` | `MME_Benchmark_release_version/` |
//!
//! Prompts are LLaVA's (`llava/eval/model_vqa_loader.py`, `model_vqa_science.py`):
//! - a LLaVA question file (`{"question_id", "image", "text", ...}` per line) is used as it
//!   is: `text` is the whole question LLaVA asks, its answer-format instruction included
//!   ("Answer the question using a single word or phrase." in LLaVA-1.5's GQA, TextVQA,
//!   POPE and MME files), and is the answer's `prompt`;
//! - VQAv2: LLaVA's question file is test-dev (its answers are on EvalAI only), so the
//!   questions come from the official val questions JSON, with the instruction LLaVA's
//!   file carries appended ([`SHORT_ANSWER`]); images `COCO_val2014_<id:012>.jpg`;
//! - ScienceQA: the first human turn of LLaVA's `llava_test_CQM-A.json` (context, question,
//!   options), `<image>` removed, then [`LETTER_ANSWER`] on a new line (the script's
//!   `--single-pred-prompt`); the recorded prompt starts with `<image>\n` for problems with
//!   an image, which is how the scorer counts `img_accuracy`. Problems without an image
//!   are asked without one.
//!
//! Questions asked twice (same id and prompt) are asked once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::answers::QuestionId;
use super::{GtPaths, Task};

/// The instruction LLaVA-1.5 gives for short answers (GQA, VQAv2, TextVQA, POPE, MME).
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
/// ScienceQA's instruction (`--single-pred-prompt`).
pub const LETTER_ANSWER: &str = "Answer with the option's letter from the given choices directly.";

/// Where a task's files lie in its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub task: Task,
    pub dir: PathBuf,
    /// The question file.
    pub questions: PathBuf,
    /// What the scorer reads.
    pub gt: GtPaths,
    /// The folder image names are relative to (LLaVA's `--image-folder`).
    pub images: PathBuf,
}

impl Layout {
    /// The layout of `task` under `dir` (nothing is read yet).
    pub fn new(task: Task, dir: &Path) -> Layout {
        let at = |p: &str| dir.join(p);
        let (questions, gt, questions_for_gt, images) = match task {
            Task::Pope => (
                at("llava_pope_test.jsonl"),
                at("coco"),
                Some(at("llava_pope_test.jsonl")),
                at("val2014"),
            ),
            Task::Gqa => (
                at("llava_gqa_testdev_balanced.jsonl"),
                at("data/testdev_balanced_questions.json"),
                None,
                at("data/images"),
            ),
            Task::TextVqa => (
                at("llava_textvqa_val_v051_ocr.jsonl"),
                at("TextVQA_0.5.1_val.json"),
                None,
                at("train_images"),
            ),
            Task::VqaV2 => (
                at("v2_OpenEnded_mscoco_val2014_questions.json"),
                at("v2_mscoco_val2014_annotations.json"),
                Some(at("v2_OpenEnded_mscoco_val2014_questions.json")),
                at("val2014"),
            ),
            Task::ScienceQa => (
                at("llava_test_CQM-A.json"),
                dir.to_path_buf(),
                None,
                at("images/test"),
            ),
            Task::Mme => (
                at("llava_mme.jsonl"),
                at("MME_Benchmark_release_version"),
                None,
                at("MME_Benchmark_release_version"),
            ),
        };
        Layout {
            task,
            dir: dir.to_path_buf(),
            questions,
            gt: GtPaths {
                gt,
                questions: questions_for_gt,
                split: None,
            },
            images,
        }
    }

    /// Fails, naming every missing file and what the folder must hold, unless the question
    /// file, the ground truth and the image folder all exist.
    pub fn check(&self) -> Result<()> {
        let mut missing = Vec::new();
        for p in [&self.questions, &self.gt.gt, &self.images] {
            if !p.exists() {
                missing.push(p.display().to_string());
            }
        }
        if !missing.is_empty() {
            bail!(
                "{} is not a {} folder in LLaVA's eval layout: missing {} (it needs {})",
                self.dir.display(),
                self.task,
                missing.join(", "),
                self.needs()
            );
        }
        Ok(())
    }

    /// What the folder must hold, in words.
    pub fn needs(&self) -> String {
        let rel = |p: &Path| {
            p.strip_prefix(&self.dir)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.display().to_string())
        };
        let gt = match self.task {
            Task::ScienceQa => "problems.json and pid_splits.json".to_string(),
            _ => rel(&self.gt.gt),
        };
        format!(
            "the questions {}, the ground truth {gt} and the images under {}/",
            rel(&self.questions),
            rel(&self.images)
        )
    }
}

/// One question as the model is asked it.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchQuestion {
    pub question_id: QuestionId,
    /// The image, relative to [`Layout::images`]; `None`: text only.
    pub image: Option<String>,
    /// The user's text, put into the run's chat template after the image.
    pub text: String,
    /// What the answers file records as `prompt` (LLaVA's `cur_prompt`).
    pub prompt: String,
    /// 1-based line (JSON Lines) or record number (JSON) in the question file.
    pub line: usize,
}

impl BenchQuestion {
    /// The key an answer is matched by when resuming: id and prompt (TextVQA and MME
    /// ask several questions under one id).
    pub fn key(&self) -> (String, String) {
        (self.question_id.key(), self.prompt.clone())
    }
}

/// Reads the questions of `layout`, in file order, duplicates dropped; returns them and
/// how many duplicates there were.
pub fn load_questions(layout: &Layout) -> Result<(Vec<BenchQuestion>, usize)> {
    let path = &layout.questions;
    let qs = match layout.task {
        Task::VqaV2 => vqav2_questions(path)?,
        Task::ScienceQa => scienceqa_questions(path)?,
        _ => llava_jsonl(path)?,
    };
    let mut seen = HashSet::new();
    let before = qs.len();
    let qs: Vec<BenchQuestion> = qs.into_iter().filter(|q| seen.insert(q.key())).collect();
    let dups = before - qs.len();
    Ok((qs, dups))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A LLaVA question file: `{"question_id", "image", "text", ...}` per line.
fn llava_jsonl(path: &Path) -> Result<Vec<BenchQuestion>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let id = v
            .get("question_id")
            .and_then(QuestionId::from_json)
            .with_context(|| format!("{}: no integer or string \"question_id\"", at()))?;
        let question = match v.get("text") {
            Some(Value::String(s)) => s.clone(),
            _ => bail!("{}: no string \"text\" (the question)", at()),
        };
        let image = match v.get("image") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => bail!("{}: \"image\" must be a string, got {other}", at()),
        };
        out.push(BenchQuestion {
            question_id: id,
            image,
            prompt: question.clone(),
            text: question,
            line: i + 1,
        });
    }
    if out.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(out)
}

/// The official VQA v2 questions JSON, asked as LLaVA's VQAv2 file asks them.
fn vqav2_questions(path: &Path) -> Result<Vec<BenchQuestion>> {
    let v: Value = serde_json::from_str(&read(path)?)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let Some(list) = v.get("questions").and_then(Value::as_array) else {
        bail!(
            "{}: not a VQA questions file {{\"questions\": [{{\"question_id\", \"image_id\", \"question\"}}]}}",
            path.display()
        );
    };
    list.iter()
        .enumerate()
        .map(|(i, q)| {
            let at = || format!("{} question {}", path.display(), i + 1);
            let id = q
                .get("question_id")
                .and_then(Value::as_i64)
                .with_context(|| format!("{}: no integer \"question_id\"", at()))?;
            let image = q
                .get("image_id")
                .and_then(Value::as_i64)
                .with_context(|| format!("{}: no integer \"image_id\"", at()))?;
            let question = q
                .get("question")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: no string \"question\"", at()))?;
            let text = format!("{question}\n{SHORT_ANSWER}");
            Ok(BenchQuestion {
                question_id: QuestionId::Int(id),
                image: Some(format!("COCO_val2014_{image:012}.jpg")),
                prompt: text.clone(),
                text,
                line: i + 1,
            })
        })
        .collect()
}

/// LLaVA's ScienceQA file (`[{"id", "image"?, "conversations": [{"from": "human",
/// "value"}, ...]}]`), asked as `model_vqa_science.py --single-pred-prompt` asks it.
fn scienceqa_questions(path: &Path) -> Result<Vec<BenchQuestion>> {
    let v: Value = serde_json::from_str(&read(path)?)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let Some(list) = v.as_array() else {
        bail!(
            "{}: not LLaVA's ScienceQA question file (a JSON array of {{\"id\", \"conversations\"}})",
            path.display()
        );
    };
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let at = || format!("{} record {}", path.display(), i + 1);
            let id = r
                .get("id")
                .and_then(QuestionId::from_json)
                .with_context(|| format!("{}: no integer or string \"id\"", at()))?;
            let first = r
                .get("conversations")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .and_then(|t| t.get("value"))
                .and_then(Value::as_str)
                .with_context(|| format!("{}: no first turn with a string \"value\"", at()))?;
            let image = match r.get("image") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => bail!("{}: \"image\" must be a string, got {other}", at()),
            };
            let qs = first.replace("<image>", "");
            let text = format!("{}\n{LETTER_ANSWER}", qs.trim());
            let prompt = match image {
                Some(_) => format!("<image>\n{text}"),
                None => text.clone(),
            };
            Ok(BenchQuestion {
                question_id: id,
                image,
                text,
                prompt,
                line: i + 1,
            })
        })
        .collect()
}

/// `limit` of `n` questions spread evenly over the file (every category of a file grouped
/// by category is represented), the same ones every time; 0 or `limit >= n`: all.
pub fn spread(n: usize, limit: usize) -> Vec<usize> {
    if limit == 0 || limit >= n {
        return (0..n).collect();
    }
    (0..limit).map(|i| i * n / limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_evenly_spaced_distinct_questions() {
        assert_eq!(spread(10, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(spread(10, 20), (0..10).collect::<Vec<_>>());
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(9, 3), vec![0, 3, 6]);
        assert_eq!(spread(7, 3), vec![0, 2, 4]);
        let s = spread(1000, 333);
        assert_eq!(s.len(), 333);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn scienceqa_prompts_are_llava_single_pred_prompts() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("llava_test_CQM-A.json");
        std::fs::write(
            &p,
            r#"[{"id": "4", "conversations": [{"from": "human", "value": "Context: N/A\nQuestion: Which word is a noun?\nOptions: (A) run (B) dog"}, {"from": "gpt", "value": "The answer is B."}]},
               {"id": "5", "image": "5/image.png", "conversations": [{"from": "human", "value": "<image>\nContext: A map.\nQuestion: Which state is farthest north?\nOptions: (A) Ohio (B) Maine"}]}]"#,
        )
        .unwrap();
        let q = scienceqa_questions(&p).unwrap();
        let tail = "\nAnswer with the option's letter from the given choices directly.";
        assert_eq!(q[0].image, None);
        assert_eq!(
            q[0].text,
            format!(
                "Context: N/A\nQuestion: Which word is a noun?\nOptions: (A) run (B) dog{tail}"
            )
        );
        assert_eq!(q[0].prompt, q[0].text);
        assert_eq!(q[1].image.as_deref(), Some("5/image.png"));
        assert_eq!(
            q[1].text,
            format!("Context: A map.\nQuestion: Which state is farthest north?\nOptions: (A) Ohio (B) Maine{tail}")
        );
        assert_eq!(q[1].prompt, format!("<image>\n{}", q[1].text));
        assert_eq!(q[1].question_id, QuestionId::Str("5".into()));
    }

    #[test]
    fn vqav2_questions_get_the_short_answer_instruction_and_coco_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.json");
        std::fs::write(
            &p,
            r#"{"questions": [{"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000}]}"#,
        )
        .unwrap();
        let q = vqav2_questions(&p).unwrap();
        assert_eq!(q[0].question_id, QuestionId::Int(262148000));
        assert_eq!(q[0].image.as_deref(), Some("COCO_val2014_000000262148.jpg"));
        assert_eq!(
            q[0].text,
            "Where is he looking?\nAnswer the question using a single word or phrase."
        );
    }

    #[test]
    fn llava_question_files_are_used_as_written_and_bad_lines_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("llava_pope_test.jsonl");
        std::fs::write(
            &p,
            "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a dog in the image?\\nAnswer the question using a single word or phrase.\", \"category\": \"random\"}\n\n{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a dog in the image?\\nAnswer the question using a single word or phrase.\", \"category\": \"random\"}\n",
        )
        .unwrap();
        let layout = Layout::new(Task::Pope, d.path());
        let (q, dups) = load_questions(&layout).unwrap();
        assert_eq!((q.len(), dups), (1, 1));
        assert_eq!(q[0].prompt, q[0].text);
        assert!(q[0]
            .text
            .ends_with("\nAnswer the question using a single word or phrase."));
        std::fs::write(&p, "{\"question_id\": 1, \"image\": \"a.jpg\"}\n").unwrap();
        let e = format!("{:#}", load_questions(&layout).unwrap_err());
        assert!(
            e.contains("llava_pope_test.jsonl line 1: no string \"text\""),
            "{e}"
        );
        let e = format!("{:#}", layout.check().unwrap_err());
        assert!(
            e.contains("is not a pope folder in LLaVA's eval layout: missing")
                && e.contains("coco")
                && e.contains("val2014"),
            "{e}"
        );
    }
}
