//! VQA v2 as LLaVA scores it: `scripts/convert_vqav2_for_submission.py` runs each
//! prediction through `EvalAIAnswerProcessor` ([`eval_ai_answer`]), and the official
//! evaluation (`vqaEval.py`, [`vqa_accuracy`]) compares that with the 10 human answers:
//! newline/tab/space cleanup always, punctuation and digit/article processing only when
//! the human answers differ, then `min(1, matches / 3)` over the 10 leave-one-out subsets.
//! Without LLaVA's step a capitalized "Yes" would score 0 against ten identical "yes".
//!
//! Ground truth: the annotations JSON (`v2_mscoco_val2014_annotations.json`,
//! `{"annotations": [{"question_id", "image_id", "answer_type", "answers": [{"answer"}]}]}`);
//! it has everything vqaEval reads. The questions JSON (`{"questions": [{"question_id",
//! "image_id"}]}`), optional, is checked against it: same questions, same images.
//! Leave-one-out drops one answer by position; vqaEval drops answer records equal to it,
//! the same thing since every record has its own `answer_id`.
//!
//! Metrics: `accuracy`, and `<answer_type>/accuracy` for each answer type (`number`,
//! `other`, `yes/no`), fractions (the official code reports percentages rounded to 2
//! places; these are unrounded).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::answers::{Answers, QuestionId};
use super::matching::{index_unique, Coverage};
use super::normalize::{eval_ai_answer, vqa_accuracy};
use super::{BenchScore, ItemScore, Metrics, Task};

/// One annotated question.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaItem {
    pub question_id: QuestionId,
    pub answer_type: String,
    pub answers: Vec<String>,
}

/// VQA v2's ground truth, in the annotation file's order.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaGt {
    pub path: PathBuf,
    pub items: Vec<VqaItem>,
}

// Typed records: the val annotations hold 214k questions, far too many for a `Value` tree.
#[derive(Deserialize)]
struct AnnotationFile {
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Annotation {
    question_id: Value,
    #[serde(default)]
    image_id: Value,
    answer_type: String,
    answers: Vec<HumanAnswer>,
}

#[derive(Deserialize)]
struct HumanAnswer {
    answer: String,
}

#[derive(Deserialize)]
struct QuestionFile {
    questions: Vec<Question>,
}

#[derive(Deserialize)]
struct Question {
    question_id: Value,
    #[serde(default)]
    image_id: Value,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a {what}", path.display()))
}

fn id(v: &Value, at: impl Fn() -> String) -> Result<QuestionId> {
    QuestionId::from_json(v)
        .with_context(|| format!("{}: \"question_id\" must be an integer or a string", at()))
}

impl VqaGt {
    /// Reads the annotations, and checks the questions file against them if given.
    pub fn load(annotations: &Path, questions: Option<&Path>) -> Result<VqaGt> {
        let file: AnnotationFile = read(annotations, "VQA annotations file")?;
        let mut items = Vec::with_capacity(file.annotations.len());
        let mut images: HashMap<String, Value> = HashMap::new();
        for (i, r) in file.annotations.into_iter().enumerate() {
            let at = || format!("{}: annotations[{i}]", annotations.display());
            let question_id = id(&r.question_id, at)?;
            if r.answers.is_empty() {
                bail!("{} (question_id {question_id}): no answers", at());
            }
            if images.insert(question_id.key(), r.image_id).is_some() {
                bail!("{} (question_id {question_id}): annotated twice", at());
            }
            items.push(VqaItem {
                question_id,
                answer_type: r.answer_type,
                answers: r.answers.into_iter().map(|a| a.answer).collect(),
            });
        }
        if let Some(qpath) = questions {
            let q: QuestionFile = read(qpath, "VQA questions file")?;
            for (i, r) in q.questions.iter().enumerate() {
                let qid = id(&r.question_id, || {
                    format!("{}: questions[{i}]", qpath.display())
                })?;
                let Some(image) = images.get(&qid.key()) else {
                    bail!(
                        "{}: questions[{i}]: question_id {qid} is not in {}: the two files are \
                         not of one split",
                        qpath.display(),
                        annotations.display()
                    );
                };
                if *image != r.image_id {
                    bail!(
                        "{}: questions[{i}]: question_id {qid} is about image {}, the \
                         annotation about image {image}",
                        qpath.display(),
                        r.image_id
                    );
                }
            }
            if q.questions.len() != items.len() {
                bail!(
                    "{}: {} questions, {} annotated in {}: the two files are not of one split",
                    qpath.display(),
                    q.questions.len(),
                    items.len(),
                    annotations.display()
                );
            }
        }
        Ok(VqaGt {
            path: annotations.to_path_buf(),
            items,
        })
    }
}

/// LLaVA's score of one prediction: submission processing, then the official accuracy.
pub fn llava_vqa_accuracy(text: &str, answers: &[String]) -> f64 {
    vqa_accuracy(&eval_ai_answer(text), answers)
}

/// Scores VQA v2 answers.
pub fn score(answers: &Answers, gt: &VqaGt) -> Result<BenchScore> {
    let index = index_unique(answers, |a| Ok(Some(a.question_id.key())))?.index;
    let mut coverage = Coverage {
        gt_items: gt.items.len(),
        ..Coverage::default()
    };
    let mut items = Vec::new();
    let mut sum = 0.0;
    let mut by_type: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for item in &gt.items {
        let Some(a) = index.get(&item.question_id.key()) else {
            coverage.missing.push(&item.question_id);
            continue;
        };
        let s = llava_vqa_accuracy(&a.text, &item.answers);
        sum += s;
        let t = by_type.entry(&item.answer_type).or_default();
        t.0 += s;
        t.1 += 1;
        items.push(ItemScore {
            id: a.question_id.to_string(),
            score: s,
        });
    }
    let known: std::collections::HashSet<String> =
        gt.items.iter().map(|i| i.question_id.key()).collect();
    for a in &answers.items {
        if !known.contains(&a.question_id.key()) {
            coverage.extra.push(&a.question_id);
        }
    }
    coverage.require_some(answers, &gt.path.display().to_string())?;
    let mut metrics = Metrics::default();
    metrics.push("accuracy", sum / items.len() as f64);
    for (t, (s, n)) in by_type {
        metrics.push(format!("{t}/accuracy"), s / n as f64);
    }
    Ok(BenchScore {
        task: Task::VqaV2,
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

    fn ten(a: &str) -> Vec<String> {
        vec![a.to_string(); 10]
    }

    #[test]
    fn official_rule_normalizes_only_when_humans_disagree() {
        // Ten identical answers: the prediction is compared as it is (after strip).
        assert_eq!(vqa_accuracy("two", &ten("2")), 0.0);
        assert_eq!(vqa_accuracy("Two", &ten("2")), 0.0);
        assert_eq!(vqa_accuracy("Yes", &ten("yes")), 0.0);
        assert_eq!(vqa_accuracy(" 2\n", &ten("2")), 1.0);
        // Nine "2" and one "two": both sides processed, "two" -> "2" everywhere.
        let mut mixed = ten("2");
        mixed[9] = "two".into();
        assert_eq!(vqa_accuracy("Two", &mixed), 1.0);
        // 2 x "yes", 8 x "no", prediction "yes": 2 x 1/3 + 8 x 2/3 over 10.
        let mut yn = ten("no");
        yn[0] = "yes".into();
        yn[1] = "yes".into();
        assert!((vqa_accuracy("yes", &yn) - 0.6).abs() < 1e-15);
    }

    #[test]
    fn llava_processing_comes_first() {
        // EvalAIAnswerProcessor makes "Two" "2" and "Yes" "yes" before the official rule.
        assert_eq!(llava_vqa_accuracy("Two", &ten("2")), 1.0);
        assert_eq!(llava_vqa_accuracy("Yes.", &ten("yes")), 1.0);
        assert_eq!(llava_vqa_accuracy("1,000", &ten("1000")), 1.0);
        assert_eq!(llava_vqa_accuracy("dont", &ten("don't")), 1.0);
        assert_eq!(llava_vqa_accuracy("It is a cat.", &ten("cat")), 0.0);
        // 3.5 keeps its period; "3.50" is another answer.
        assert_eq!(llava_vqa_accuracy("3.5", &ten("3.5")), 1.0);
        assert_eq!(llava_vqa_accuracy("3.50", &ten("3.5")), 0.0);
    }

    #[test]
    fn questions_file_must_be_of_the_same_split() {
        let d = tempfile::tempdir().unwrap();
        let ann = d.path().join("ann.json");
        std::fs::write(
            &ann,
            r#"{"annotations": [{"question_id": 1, "image_id": 7, "answer_type": "other",
                "answers": [{"answer": "a", "answer_id": 1}]}]}"#,
        )
        .unwrap();
        let q = d.path().join("q.json");
        std::fs::write(&q, r#"{"questions": [{"question_id": 1, "image_id": 8}]}"#).unwrap();
        let e = format!("{:#}", VqaGt::load(&ann, Some(&q)).unwrap_err());
        assert!(
            e.contains("question_id 1 is about image 8, the annotation about image 7"),
            "{e}"
        );
        std::fs::write(&q, r#"{"questions": [{"question_id": 1, "image_id": 7}]}"#).unwrap();
        assert_eq!(VqaGt::load(&ann, Some(&q)).unwrap().items.len(), 1);
    }
}
