//! GQA as LLaVA scores it: `scripts/convert_gqa_for_eval.py` turns each answer into
//! `text.rstrip('.').lower()` (every trailing period goes, nothing else: no whitespace
//! strip, no other punctuation), and GQA's `eval.py` counts exact matches with the
//! question's `answer` over the questions with `isBalanced` (all of
//! `testdev_balanced_questions.json`; a question without the flag counts as balanced).
//!
//! Metrics: `accuracy`; `binary/accuracy` and `open/accuracy` split by the question's
//! structural type as eval.py does (`query` is open, everything else binary; questions
//! without `types.structural` are in neither). eval.py's validity, plausibility,
//! consistency, grounding and distribution scores are not computed (LLaVA reports
//! accuracy).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::answers::Answers;
use super::matching::{index_unique, Coverage};
use super::{ratio, BenchScore, ItemScore, Metrics, Task};

/// One balanced question.
#[derive(Debug, Clone, PartialEq)]
pub struct GqaItem {
    pub id: String,
    pub answer: String,
    /// `types.structural` (`query`, `verify`, `logical`, `choose`, `compare`).
    pub structural: Option<String>,
}

/// GQA's ground truth: the balanced questions, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct GqaGt {
    pub path: PathBuf,
    pub items: Vec<GqaItem>,
}

/// LLaVA's conversion of an answer for GQA's evaluation.
pub fn gqa_prediction(text: &str) -> String {
    text.trim_end_matches('.').to_lowercase()
}

// Typed, keeping only what is scored: GQA's question files run to hundreds of megabytes.
#[derive(Deserialize)]
struct Question {
    answer: String,
    #[serde(rename = "isBalanced", default = "balanced")]
    is_balanced: bool,
    #[serde(default)]
    types: Option<Types>,
}

#[derive(Deserialize)]
struct Types {
    structural: Option<String>,
}

fn balanced() -> bool {
    true
}

impl GqaGt {
    /// Reads a GQA questions file (`{"<id>": {"answer", "isBalanced", "types", ...}}`).
    pub fn load(path: &Path) -> Result<GqaGt> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let map: BTreeMap<String, Question> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a GQA questions file {{\"<question id>\": {{\"answer\", ...}}}}",
                path.display()
            )
        })?;
        let items = map
            .into_iter()
            .filter(|(_, q)| q.is_balanced)
            .map(|(id, q)| GqaItem {
                id,
                answer: q.answer,
                structural: q.types.and_then(|t| t.structural),
            })
            .collect();
        Ok(GqaGt {
            path: path.to_path_buf(),
            items,
        })
    }
}

/// Scores GQA answers.
pub fn score(answers: &Answers, gt: &GqaGt) -> Result<BenchScore> {
    let index = index_unique(answers, |a| Ok(Some(a.question_id.key())))?.index;
    let mut coverage = Coverage {
        gt_items: gt.items.len(),
        ..Coverage::default()
    };
    let mut items = Vec::new();
    let (mut correct, mut binary, mut open) = (0, (0, 0), (0, 0));
    for q in &gt.items {
        let Some(a) = index.get(&q.id) else {
            coverage.missing.push(format!("{:?}", q.id));
            continue;
        };
        let right = gqa_prediction(&a.text) == q.answer;
        correct += usize::from(right);
        match q.structural.as_deref() {
            Some("query") => open = (open.0 + usize::from(right), open.1 + 1),
            Some(_) => binary = (binary.0 + usize::from(right), binary.1 + 1),
            None => {}
        }
        items.push(ItemScore {
            id: a.question_id.to_string(),
            score: if right { 1.0 } else { 0.0 },
        });
    }
    let known: std::collections::HashSet<&str> = gt.items.iter().map(|q| q.id.as_str()).collect();
    for a in &answers.items {
        if !known.contains(a.question_id.key().as_str()) {
            coverage.extra.push(&a.question_id);
        }
    }
    coverage.require_some(answers, &gt.path.display().to_string())?;
    let mut metrics = Metrics::default();
    metrics.push("accuracy", ratio(correct, items.len()));
    if binary.1 > 0 {
        metrics.push("binary/accuracy", ratio(binary.0, binary.1));
    }
    if open.1 > 0 {
        metrics.push("open/accuracy", ratio(open.0, open.1));
    }
    Ok(BenchScore {
        task: Task::Gqa,
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
    use crate::eval::bench::QuestionId;

    #[test]
    fn llava_conversion_strips_trailing_periods_and_lowers() {
        assert_eq!(gqa_prediction("Yes."), "yes");
        assert_eq!(gqa_prediction("It is a cat."), "it is a cat");
        assert_eq!(gqa_prediction("Two"), "two");
        assert_eq!(gqa_prediction("the Coca-Cola"), "the coca-cola");
        assert_eq!(gqa_prediction("3.5"), "3.5");
        assert_eq!(gqa_prediction("left..."), "left");
        // Only periods at the very end: a trailing space keeps them.
        assert_eq!(gqa_prediction("Left. "), "left. ");
        assert_eq!(gqa_prediction("1,000"), "1,000");
    }

    #[test]
    fn exact_match_split_into_binary_and_open() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("testdev_balanced_questions.json");
        std::fs::write(
            &p,
            r#"{"1": {"answer": "yes", "isBalanced": true, "types": {"structural": "verify"}},
                "2": {"answer": "left", "isBalanced": true, "types": {"structural": "query"}},
                "3": {"answer": "cat", "isBalanced": true, "types": {"structural": "query"}},
                "4": {"answer": "no", "isBalanced": false, "types": {"structural": "verify"}}}"#,
        )
        .unwrap();
        let gt = GqaGt::load(&p).unwrap();
        assert_eq!(gt.items.len(), 3);
        let a = Answers::from_items(
            "a.jsonl",
            vec![
                (QuestionId::Str("1".into()), None, "Yes.".into()),
                (QuestionId::Str("2".into()), None, "Left".into()),
                (QuestionId::Str("3".into()), None, "a cat".into()),
                (QuestionId::Str("4".into()), None, "no".into()),
            ],
        );
        let s = score(&a, &gt).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.metrics.get("accuracy"), Some(2.0 / 3.0));
        assert_eq!(s.metrics.get("binary/accuracy"), Some(1.0));
        assert_eq!(s.metrics.get("open/accuracy"), Some(0.5));
        // The unbalanced question is not ground truth: its answer is extra.
        assert_eq!(s.coverage.extra.first, ["\"4\""]);
    }
}
