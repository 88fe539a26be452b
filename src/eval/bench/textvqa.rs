//! TextVQA as LLaVA's `llava/eval/eval_textvqa.py` scores it, with `TextVQAAccuracyEvaluator`
//! of `m4c_evaluator.py`.
//!
//! Matching: LLaVA's TextVQA question file uses the *image id* as `question_id`, so an
//! answer is found by `(question_id, question)`, the question being recovered from the
//! prompt (`prompt_processor`): after `Question: ` up to ` Short answer:` when the prompt
//! starts with `OCR tokens: `; with `Reference OCR token: ` and three lines, the line that
//! is not the OCR line of the first two; with two lines, the first; lower-cased. Ground
//! truth `TextVQA_0.5.1_val.json` is keyed by `(image_id, question.lower())`; when two
//! entries share a key the later one wins (a dict in the reference).
//!
//! LLaVA does nothing to the prediction before the evaluator: the evaluator's
//! `EvalAIAnswerProcessor` normalizes prediction and the 10 human answers alike
//! ([`super::normalize::eval_ai_answer`]), and the score is the soft accuracy over the 10
//! leave-one-out subsets, `min(1, matches / 3)` averaged. Metric: `accuracy` (a fraction;
//! the script prints it times 100).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::answers::{Answers, QuestionId};
use super::matching::{index_unique, Coverage};
use super::normalize::{eval_ai_answer, soft_accuracy};
use super::{BenchScore, ItemScore, Metrics, Task};

/// One question with its human answers, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct TextVqaItem {
    pub image_id: String,
    pub question: String,
    pub answers: Vec<String>,
}

/// TextVQA's ground truth keyed as LLaVA keys it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextVqaGt {
    pub path: PathBuf,
    /// By `(image_id, lower-cased question)`.
    pub items: HashMap<(String, String), TextVqaItem>,
}

#[derive(Deserialize)]
struct File {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    image_id: serde_json::Value,
    question: String,
    answers: Vec<String>,
}

/// The question in a LLaVA TextVQA prompt (`prompt_processor`), lower case; `None` where
/// the reference's assertion fails.
pub fn prompt_question(prompt: &str) -> Option<String> {
    let lines: Vec<&str> = prompt.split('\n').collect();
    let q = if prompt.starts_with("OCR tokens: ") {
        // re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        let start = prompt.find("Question: ")? + "Question: ".len();
        let len = prompt[start..].find(" Short answer:")?;
        &prompt[start..start + len]
    } else if prompt.contains("Reference OCR token: ") && lines.len() == 3 {
        if prompt.starts_with("Reference OCR token:") {
            lines[1]
        } else {
            lines[0]
        }
    } else if lines.len() == 2 {
        lines[0]
    } else {
        return None;
    };
    Some(q.to_lowercase())
}

impl TextVqaGt {
    /// Reads `TextVQA_0.5.1_val.json` (`{"data": [{"image_id", "question", "answers"}]}`).
    pub fn load(path: &Path) -> Result<TextVqaGt> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: File = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a TextVQA file {{\"data\": [{{\"image_id\", \"question\", \"answers\"}}]}}",
                path.display()
            )
        })?;
        let mut items = HashMap::new();
        for (i, d) in file.data.into_iter().enumerate() {
            let at = || format!("{}: data[{i}]", path.display());
            let image_id = QuestionId::from_json(&d.image_id)
                .with_context(|| format!("{}: \"image_id\" must be a string", at()))?
                .key();
            let question = d.question;
            let answers: Vec<String> = d
                .answers
                .iter()
                .map(String::as_str)
                .map(eval_ai_answer)
                .collect();
            if answers.len() != 10 {
                // The reference asserts 10 (its soft score assumes them).
                bail!(
                    "{} (image {image_id}, {question:?}): {} answers, expected 10",
                    at(),
                    answers.len()
                );
            }
            let key = (image_id.clone(), question.to_lowercase());
            items.insert(
                key,
                TextVqaItem {
                    image_id,
                    question,
                    answers,
                },
            );
        }
        Ok(TextVqaGt {
            path: path.to_path_buf(),
            items,
        })
    }
}

/// `(image id, question)` of an answer, displayed for messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key(String, String);

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.0, self.1)
    }
}

/// Scores TextVQA answers.
pub fn score(answers: &Answers, gt: &TextVqaGt) -> Result<BenchScore> {
    let keyed = index_unique(answers, |a| {
        let prompt = answers.prompt(a, "TextVQA finds the question in the prompt")?;
        let q = prompt_question(prompt).with_context(|| {
            format!(
                "{} (question_id {}): cannot find the question in the prompt {prompt:?} \
                 (LLaVA's prompt_processor expects 'OCR tokens: ... Question: ... Short \
                 answer:', or a question line plus a 'Reference OCR token: ' line and an \
                 instruction line, or a question line and an instruction line)",
                answers.at(a),
                a.question_id
            )
        })?;
        Ok(Some(Key(a.question_id.key(), q)))
    })?;
    let mut coverage = Coverage {
        gt_items: gt.items.len(),
        ..Coverage::default()
    };
    let mut items = Vec::new();
    let mut sum = 0.0;
    // Items in the answers' order, as the reference sums them.
    for (a, key) in answers.items.iter().zip(&keyed.keys) {
        let key = key.as_ref().expect("every TextVQA answer has a key");
        match gt.items.get(&(key.0.clone(), key.1.clone())) {
            Some(item) => {
                let s = soft_accuracy(&eval_ai_answer(&a.text), &item.answers);
                sum += s;
                items.push(ItemScore {
                    id: a.question_id.to_string(),
                    score: s,
                });
            }
            None => coverage.extra.push(key.clone()),
        }
    }
    let mut missing: Vec<&(String, String)> = gt
        .items
        .keys()
        .filter(|(img, q)| !keyed.index.contains_key(&Key(img.clone(), q.clone())))
        .collect();
    missing.sort();
    for (img, q) in missing {
        coverage.missing.push(Key(img.clone(), q.clone()));
    }
    coverage.require_some(answers, &gt.path.display().to_string())?;
    let mut metrics = Metrics::default();
    metrics.push("accuracy", sum / items.len() as f64);
    Ok(BenchScore {
        task: Task::TextVqa,
        n: items.len(),
        metrics,
        items,
        coverage,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_comes_out_of_llava_prompts() {
        let cases = [
            (
                "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\nAnswer the question using a single word or phrase.",
                Some("what is the brand of this camera?"),
            ),
            (
                "Reference OCR token: A, B\nWhat does it say?\nAnswer briefly.",
                Some("what does it say?"),
            ),
            (
                "What Brand?\nAnswer the question using a single word or phrase.",
                Some("what brand?"),
            ),
            (
                "OCR tokens: a b Question: What is written? Short answer:",
                Some("what is written?"),
            ),
            // Three lines without an OCR line, or one line: the reference asserts.
            ("a\nb\nc", None),
            ("What brand?", None),
            ("OCR tokens: a b no question here", None),
        ];
        for (prompt, want) in cases {
            assert_eq!(prompt_question(prompt).as_deref(), want, "{prompt:?}");
        }
    }

    #[test]
    fn soft_accuracy_after_eval_ai_normalization() {
        let d = tempfile::tempdir().unwrap();
        let gt_path = d.path().join("TextVQA_0.5.1_val.json");
        // 3 x "coca cola" (written three ways) + 7 x "coke"; 10 x "1000" written as "1,000".
        let gt = serde_json::json!({"data": [
            {"image_id": "img1", "question": "What brand is it?", "answers":
                ["Coca-Cola", "coca cola", "the coca-cola", "coke", "coke", "coke", "coke",
                 "coke", "coke", "coke"]},
            {"image_id": "img1", "question": "How many?", "answers": vec!["1,000"; 10]},
        ]});
        std::fs::write(&gt_path, gt.to_string()).unwrap();
        let gt = TextVqaGt::load(&gt_path).unwrap();
        let p = |q: &str| {
            Some(format!(
                "{q}\nAnswer the question using a single word or phrase."
            ))
        };
        let a = Answers::from_items(
            "a.jsonl",
            vec![
                (
                    QuestionId::Str("img1".into()),
                    p("What brand is it?"),
                    "The Coca-Cola".into(),
                ),
                (
                    QuestionId::Str("img1".into()),
                    p("How many?"),
                    "1000".into(),
                ),
                (QuestionId::Str("img9".into()), p("What?"), "x".into()),
            ],
        );
        let s = score(&a, &gt).unwrap();
        // "coca cola" matches 3 answers: 3 x min(1, 2/3) + 7 x min(1, 3/3), over 10 = 0.9;
        // "1000" matches all 10: 1.
        assert_eq!(s.items[0].score, 0.9);
        assert_eq!(s.items[1].score, 1.0);
        assert!((s.metrics.get("accuracy").unwrap() - 0.95).abs() < 1e-15);
        assert_eq!(s.coverage.extra.first, ["img9 \"what?\""]);
        assert_eq!(s.coverage.missing.count, 0);
    }

    #[test]
    fn malformed_ground_truth_names_file_and_entry() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("val.json");
        let nine = serde_json::json!({"data": [
            {"image_id": "img1", "question": "Q?", "answers": vec!["a"; 9]}]});
        std::fs::write(&p, nine.to_string()).unwrap();
        let e = format!("{:#}", TextVqaGt::load(&p).unwrap_err());
        assert!(
            e.contains("val.json: data[0] (image img1, \"Q?\"): 9 answers, expected 10"),
            "{e}"
        );
        std::fs::write(&p, r#"{"data": [{"image_id": "img1", "answers": []}]}"#).unwrap();
        let e = format!("{:#}", TextVqaGt::load(&p).unwrap_err());
        assert!(e.contains("val.json: not a TextVQA file"), "{e}");
        assert!(e.contains("missing field `question`"), "{e}");
    }
}
