//! POPE as LLaVA's `llava/eval/eval_pope.py` scores it.
//!
//! Ground truth: a folder of `coco_pope_<category>.json` label files (JSON Lines,
//! `{"question_id", "image", "text", "label": "yes"|"no"}`) and LLaVA's question file
//! (`llava_pope_test.jsonl`, `{"question_id", "image", "text", "category"}`), whose ids are
//! what the answers carry. The reference pairs the i-th answer of a category with the i-th
//! line of its label file; here the i-th *question* of a category (in the question file's
//! order) gets the i-th label, and answers find their question by id. With a complete
//! answers file in question order (what LLaVA's generation writes) the two are the same;
//! with missing or reordered answers this stays right where the reference silently
//! misaligns. Where both files name the image, they must agree (a check the reference
//! lacks), so a label file from another POPE version is an error, not a wrong score.
//!
//! The answer rule (quirks included): keep the text before the first `.`, delete commas,
//! split on single spaces (`str.split(' ')`), and answer "no" if a word is exactly `No`,
//! `no` or `not`, else "yes". So "No, there is not." is no, "Not at all" and "NO" are yes,
//! "There is no dog." is no, and "Yes. No." is yes (only the first sentence counts).
//!
//! Metrics per category: `accuracy`, `precision`, `recall`, `f1`, `yes_ratio` (share of
//! "yes" answers); overall `accuracy` and `f1` are their means over the categories scored.
//! Where the reference divides by zero (no "yes" answers, or no "yes" labels) precision,
//! recall or F1 is 0 here. A question category without a label file is not scored (its
//! predictions count as extra), as in the reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::answers::{Answers, QuestionId};
use super::matching::{index_unique, Coverage};
use super::{ratio, BenchScore, ItemScore, Metrics, Task};

/// A POPE question with its label.
#[derive(Debug, Clone, PartialEq)]
pub struct PopeItem {
    pub question_id: QuestionId,
    /// The label is "yes".
    pub yes: bool,
}

/// One category (one label file).
#[derive(Debug, Clone, PartialEq)]
pub struct PopeCategory {
    pub name: String,
    pub label_file: PathBuf,
    pub items: Vec<PopeItem>,
}

/// POPE's ground truth: the labelled questions of each category, categories sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct PopeGt {
    pub questions_file: PathBuf,
    pub categories: Vec<PopeCategory>,
    /// Categories of the question file without a label file, with their question counts.
    pub unlabelled: Vec<(String, usize)>,
}

/// The reference's answer rule: whether `text` says no.
pub fn says_no(text: &str) -> bool {
    let first = match text.find('.') {
        Some(i) => &text[..i],
        None => text,
    };
    first
        .replace(',', "")
        .split(' ')
        .any(|w| w == "No" || w == "no" || w == "not")
}

/// One line of a JSON Lines file as an object, or an error naming file and line.
fn json_lines(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        match serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))? {
            Value::Object(m) => out.push((i + 1, m)),
            _ => bail!("{}: expected a JSON object", at()),
        }
    }
    Ok(out)
}

fn string_field<'a>(
    m: &'a serde_json::Map<String, Value>,
    key: &str,
    at: &dyn Fn() -> String,
) -> Result<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("{}: \"{key}\" must be a string, got {v}", at()),
    }
}

struct Question {
    id: QuestionId,
    image: Option<String>,
    line: usize,
}

impl PopeGt {
    /// Reads LLaVA's question file and the label folder.
    pub fn load(questions_file: &Path, label_dir: &Path) -> Result<PopeGt> {
        // Questions by category, in file order.
        let mut by_category: Vec<(String, Vec<Question>)> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (line, m) in json_lines(questions_file)? {
            let at = || format!("{} line {line}", questions_file.display());
            let id = m
                .get("question_id")
                .and_then(QuestionId::from_json)
                .with_context(|| format!("{}: no integer or string \"question_id\"", at()))?;
            if let Some(first) = seen.insert(id.key(), line) {
                bail!("{}: question_id {id} again (first on line {first})", at());
            }
            let category = string_field(&m, "category", &at)?
                .with_context(|| format!("{}: no \"category\"", at()))?;
            let image = string_field(&m, "image", &at)?.map(str::to_string);
            let q = Question { id, image, line };
            match by_category.iter_mut().find(|(c, _)| c == category) {
                Some((_, qs)) => qs.push(q),
                None => by_category.push((category.to_string(), vec![q])),
            }
        }

        let entries = std::fs::read_dir(label_dir)
            .with_context(|| format!("reading the POPE label folder {}", label_dir.display()))?;
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("reading {}", label_dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(cat) = name
                .strip_prefix("coco_pope_")
                .and_then(|r| r.strip_suffix(".json"))
            {
                files.push((cat.to_string(), e.path()));
            }
        }
        files.sort();
        if files.is_empty() {
            bail!(
                "{}: no coco_pope_<category>.json label files",
                label_dir.display()
            );
        }

        let mut categories = Vec::new();
        for (name, file) in files {
            let questions = by_category
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, q)| q.as_slice())
                .unwrap_or_default();
            let labels = json_lines(&file)?;
            if questions.len() > labels.len() {
                bail!(
                    "{}: {} labels, but {} has {} questions of category {name:?}",
                    file.display(),
                    labels.len(),
                    questions_file.display(),
                    questions.len()
                );
            }
            let mut items = Vec::with_capacity(questions.len());
            for (q, (line, m)) in questions.iter().zip(&labels) {
                let at = || format!("{} line {line}", file.display());
                let yes = match string_field(m, "label", &at)? {
                    Some("yes") => true,
                    Some("no") => false,
                    Some(other) => bail!("{}: label {other:?}, expected \"yes\" or \"no\"", at()),
                    None => bail!("{}: no \"label\"", at()),
                };
                if let (Some(qi), Some(li)) = (&q.image, string_field(m, "image", &at)?) {
                    if qi != li {
                        bail!(
                            "{}: image {li:?}, but question {} ({} line {}; number {} of \
                             category {name:?}) is about {qi:?}: the label file and the \
                             question file are not in the same order",
                            at(),
                            q.id,
                            questions_file.display(),
                            q.line,
                            items.len() + 1
                        );
                    }
                }
                items.push(PopeItem {
                    question_id: q.id.clone(),
                    yes,
                });
            }
            categories.push(PopeCategory {
                name,
                label_file: file,
                items,
            });
        }
        let unlabelled = by_category
            .iter()
            .filter(|(c, _)| !categories.iter().any(|k| k.name == *c))
            .map(|(c, q)| (c.clone(), q.len()))
            .collect();
        Ok(PopeGt {
            questions_file: questions_file.to_path_buf(),
            categories,
            unlabelled,
        })
    }
}

/// Scores POPE answers.
pub fn score(answers: &Answers, gt: &PopeGt) -> Result<BenchScore> {
    let index = index_unique(answers, |a| Ok(Some(a.question_id.key())))?.index;
    let mut coverage = Coverage::default();
    let mut metrics = Metrics::default();
    let mut per_category = Metrics::default();
    let mut items = Vec::new();
    let mut notes = Vec::new();
    let (mut acc_sum, mut f1_sum, mut scored_categories) = (0.0, 0.0, 0);
    let mut known = std::collections::HashSet::new();
    for cat in &gt.categories {
        let (mut tp, mut fp, mut tn, mut fn_) = (0usize, 0usize, 0usize, 0usize);
        for item in &cat.items {
            coverage.gt_items += 1;
            known.insert(item.question_id.key());
            let Some(a) = index.get(&item.question_id.key()) else {
                coverage.missing.push(&item.question_id);
                continue;
            };
            let pred_yes = !says_no(&a.text);
            match (pred_yes, item.yes) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, false) => tn += 1,
                (false, true) => fn_ += 1,
            }
            items.push(ItemScore {
                id: a.question_id.to_string(),
                score: if pred_yes == item.yes { 1.0 } else { 0.0 },
            });
        }
        let n = tp + fp + tn + fn_;
        if n == 0 {
            notes.push(format!("category {:?}: no predictions", cat.name));
            continue;
        }
        // The reference's formulas; 0 where it would divide by zero.
        let precision = if tp + fp > 0 { ratio(tp, tp + fp) } else { 0.0 };
        let recall = if tp + fn_ > 0 {
            ratio(tp, tp + fn_)
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        let accuracy = ratio(tp + tn, n);
        let c = &cat.name;
        per_category.push(format!("{c}/accuracy"), accuracy);
        per_category.push(format!("{c}/precision"), precision);
        per_category.push(format!("{c}/recall"), recall);
        per_category.push(format!("{c}/f1"), f1);
        per_category.push(format!("{c}/yes_ratio"), ratio(tp + fp, n));
        acc_sum += accuracy;
        f1_sum += f1;
        scored_categories += 1;
    }
    for a in &answers.items {
        if !known.contains(&a.question_id.key()) {
            coverage.extra.push(&a.question_id);
        }
    }
    for (c, n) in &gt.unlabelled {
        notes.push(format!(
            "category {c:?} ({n} questions in {}) has no coco_pope_{c}.json: not scored",
            gt.questions_file.display()
        ));
    }
    coverage.require_some(answers, &gt.questions_file.display().to_string())?;
    metrics.push("accuracy", acc_sum / scored_categories as f64);
    metrics.push("f1", f1_sum / scored_categories as f64);
    for (k, v) in per_category.iter() {
        metrics.push(k, v);
    }
    Ok(BenchScore {
        task: Task::Pope,
        n: coverage.scored(),
        metrics,
        items,
        coverage,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_rule_is_eval_popes() {
        // (answer, says no) worked out from eval_pope.py by hand.
        let cases = [
            ("Yes, there is.", false),
            ("No, there is not.", true),
            ("No", true),
            ("no", true),
            ("NO", false),
            ("Not at all", false),
            ("There is not a dog", true),
            ("There is no dog.", true),
            ("Yes. No.", false),
            ("No.", true),
            ("Yes, no", true),
            ("no\nthere is", false), // "no\nthere" is one word for split(' ')
            ("nope", false),
            ("", false),
        ];
        for (text, no) in cases {
            assert_eq!(says_no(text), no, "{text:?}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Two categories; `random` questions 10000001.. as in LLaVA's file.
    fn fixture(dir: &Path) -> PopeGt {
        let q = write(
            dir,
            "q.jsonl",
            concat!(
                "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a dog?\", \"category\": \"adversarial\"}\n",
                "{\"question_id\": 2, \"image\": \"a.jpg\", \"text\": \"Is there a cat?\", \"category\": \"adversarial\"}\n",
                "{\"question_id\": 3, \"image\": \"b.jpg\", \"text\": \"Is there a car?\", \"category\": \"adversarial\"}\n",
                "{\"question_id\": 4, \"image\": \"b.jpg\", \"text\": \"Is there a bus?\", \"category\": \"adversarial\"}\n",
                "{\"question_id\": 10000001, \"image\": \"c.jpg\", \"text\": \"Is there a cup?\", \"category\": \"random\"}\n",
                "{\"question_id\": 10000002, \"image\": \"c.jpg\", \"text\": \"Is there a pen?\", \"category\": \"random\"}\n",
            ),
        );
        let labels = dir.join("coco");
        std::fs::create_dir_all(&labels).unwrap();
        write(
            &labels,
            "coco_pope_adversarial.json",
            concat!(
                "{\"question_id\": 1, \"image\": \"a.jpg\", \"label\": \"yes\"}\n",
                "{\"question_id\": 2, \"image\": \"a.jpg\", \"label\": \"no\"}\n",
                "{\"question_id\": 3, \"image\": \"b.jpg\", \"label\": \"yes\"}\n",
                "{\"question_id\": 4, \"image\": \"b.jpg\", \"label\": \"no\"}\n",
            ),
        );
        write(
            &labels,
            "coco_pope_random.json",
            concat!(
                "{\"question_id\": 1, \"image\": \"c.jpg\", \"label\": \"yes\"}\n",
                "{\"question_id\": 2, \"image\": \"c.jpg\", \"label\": \"no\"}\n",
            ),
        );
        PopeGt::load(&q, &labels).unwrap()
    }

    fn answers(lines: &[(i64, &str)]) -> Answers {
        Answers::from_items(
            "a.jsonl",
            lines
                .iter()
                .map(|&(i, t)| (QuestionId::Int(i), None, t.to_string()))
                .collect(),
        )
    }

    #[test]
    fn metrics_per_category_and_their_means() {
        let d = tempfile::tempdir().unwrap();
        let gt = fixture(d.path());
        // adversarial: labels y n y n; answers yes, yes, no, no -> TP 1, FP 1, FN 1, TN 1.
        // random: labels y n; answers yes (out of order), no -> TP 1, TN 1.
        let a = answers(&[
            (1, "Yes, there is a dog."),
            (2, "Yes"),
            (3, "No, there is not."),
            (4, "There is no bus."),
            (10000002, "No"),
            (10000001, "Yes"),
        ]);
        let s = score(&a, &gt).unwrap();
        assert_eq!(s.n, 6);
        let m = &s.metrics;
        assert_eq!(m.get("adversarial/accuracy"), Some(0.5));
        assert_eq!(m.get("adversarial/precision"), Some(0.5));
        assert_eq!(m.get("adversarial/recall"), Some(0.5));
        assert_eq!(m.get("adversarial/f1"), Some(0.5));
        assert_eq!(m.get("adversarial/yes_ratio"), Some(0.5));
        assert_eq!(m.get("random/accuracy"), Some(1.0));
        assert_eq!(m.get("random/f1"), Some(1.0));
        assert_eq!(m.get("random/yes_ratio"), Some(0.5));
        assert_eq!(m.get("accuracy"), Some(0.75));
        assert_eq!(m.get("f1"), Some(0.75));
        let names: Vec<&str> = m.iter().map(|(k, _)| k).take(3).collect();
        assert_eq!(names, ["accuracy", "f1", "adversarial/accuracy"]);
        assert_eq!(s.items.len(), 6);
        assert_eq!(s.items[1].score, 0.0);
    }

    #[test]
    fn missing_and_extra_are_reported_and_all_no_gives_zero_f1() {
        let d = tempfile::tempdir().unwrap();
        let gt = fixture(d.path());
        // Only "no" answers in adversarial: the reference divides by zero; here p = r = f1 = 0.
        let a = answers(&[(1, "No"), (2, "No"), (3, "no"), (99, "Yes")]);
        let s = score(&a, &gt).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.coverage.missing.count, 3);
        assert_eq!(s.coverage.missing.first, ["4", "10000001", "10000002"]);
        assert_eq!(s.coverage.extra.first, ["99"]);
        assert_eq!(s.metrics.get("adversarial/precision"), Some(0.0));
        assert_eq!(s.metrics.get("adversarial/f1"), Some(0.0));
        assert_eq!(s.metrics.get("adversarial/accuracy"), Some(1.0 / 3.0));
        assert_eq!(s.metrics.get("random/accuracy"), None);
        assert_eq!(s.notes, ["category \"random\": no predictions"]);
        assert_eq!(s.metrics.get("accuracy"), Some(1.0 / 3.0));
    }

    #[test]
    fn misordered_label_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let q = write(
            d.path(),
            "q.jsonl",
            "{\"question_id\": 1, \"image\": \"a.jpg\", \"category\": \"random\"}\n",
        );
        write(
            d.path(),
            "coco_pope_random.json",
            "{\"question_id\": 1, \"image\": \"z.jpg\", \"label\": \"yes\"}\n",
        );
        let e = format!("{:#}", PopeGt::load(&q, d.path()).unwrap_err());
        assert!(
            e.contains("coco_pope_random.json line 1: image \"z.jpg\""),
            "{e}"
        );
        assert!(e.contains("not in the same order"), "{e}");
    }
}
