//! ScienceQA as LLaVA's `llava/eval/eval_science_qa.py` scores it.
//!
//! Ground truth: ScienceQA's `problems.json` (`{"<pid>": {"choices": [...], "answer": i}}`)
//! and `pid_splits.json` (`{"test": [pids], ...}`), in a folder as LLaVA's `--base-dir`;
//! the split is `test` unless chosen.
//!
//! Letter parsing, exactly the script's ([`parse_letter`]):
//! 1. the whole text is one of `A`..`E` (so `B` is B, `b` and `B.` are not);
//! 2. else, at least 3 characters, the first one of `A`..`E` and the next two `". "`
//!    (`B. apostrophe` is B);
//! 3. else, the regex `The answer is ([A-Z]).` (the `.` is any character but a newline)
//!    must match exactly once (`The answer is B.` is B; `The answer is B` at the very end,
//!    or two such sentences, fail).
//!
//! Anything else (`(B)`, `Answer: B`) is FAILED. A letter counts when it is one of the
//! first `len(choices)` options and its index is the answer; FAILED and out-of-range
//! letters are wrong (the script's random-choice fallback is dead code after `return -1`).
//!
//! Metrics: `accuracy`, and `img_accuracy` over the answers whose *prompt* contains
//! `<image>`, which is how the script decides "multimodal" (LLaVA's ScienceQA prompts
//! carry `<image>` exactly for the problems with an image; the prompt is required). The
//! script counts a split problem without a prediction as FAILED; here it is reported as
//! missing and not scored, the same on a complete answers file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::answers::Answers;
use super::matching::{index_unique, Coverage};
use super::{ratio, BenchScore, ItemScore, Metrics, Task};

/// The option letters the script knows (`--options` default).
const OPTIONS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];

/// One problem of the split.
#[derive(Debug, Clone, PartialEq)]
pub struct SqaProblem {
    pub pid: String,
    pub n_choices: usize,
    /// Index of the right choice.
    pub answer: usize,
}

/// ScienceQA's ground truth: the split's problems, in pid_splits.json's order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScienceQaGt {
    pub dir: PathBuf,
    pub split: String,
    pub problems: Vec<SqaProblem>,
}

/// The letter the script reads from an answer, or `None` (FAILED).
pub fn parse_letter(text: &str) -> Option<char> {
    let cs: Vec<char> = text.chars().collect();
    if cs.len() == 1 && OPTIONS.contains(&cs[0]) {
        return Some(cs[0]);
    }
    if cs.len() >= 3 && OPTIONS.contains(&cs[0]) && cs[1] == '.' && cs[2] == ' ' {
        return Some(cs[0]);
    }
    // re.findall(r'The answer is ([A-Z]).', text): non-overlapping, left to right.
    const LEAD: &str = "The answer is ";
    let lead: Vec<char> = LEAD.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + lead.len() + 2 <= cs.len() {
        let letter = cs[i + lead.len()];
        let next = cs[i + lead.len() + 1];
        if cs[i..i + lead.len()] == lead[..] && letter.is_ascii_uppercase() && next != '\n' {
            found.push(letter);
            i += lead.len() + 2;
        } else {
            i += 1;
        }
    }
    match found[..] {
        [letter] => Some(letter),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

impl ScienceQaGt {
    /// Reads `problems.json` and `pid_splits.json` from `dir` (or from the folder of
    /// `dir` when it names `problems.json` itself).
    pub fn load(dir: &Path, split: &str) -> Result<ScienceQaGt> {
        let dir = if dir.is_file() {
            dir.parent().unwrap_or(Path::new("."))
        } else {
            dir
        };
        let problems_path = dir.join("problems.json");
        let splits_path = dir.join("pid_splits.json");
        let problems = read_json(&problems_path)?;
        let splits = read_json(&splits_path)?;
        let Some(pids) = splits.get(split).and_then(Value::as_array) else {
            let names: Vec<&str> = splits
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            bail!(
                "{}: no split {split:?} (splits: {})",
                splits_path.display(),
                names.join(", ")
            );
        };
        let mut out = Vec::with_capacity(pids.len());
        for pid in pids {
            let pid = pid
                .as_str()
                .map(str::to_string)
                .or_else(|| pid.as_i64().map(|i| i.to_string()))
                .with_context(|| {
                    format!(
                        "{}: {split:?} has a non-id entry {pid}",
                        splits_path.display()
                    )
                })?;
            let at = || format!("{}: problem {pid:?}", problems_path.display());
            let p = problems.get(&pid).with_context(|| {
                format!(
                    "{}: not there (listed in {split:?} of {})",
                    at(),
                    splits_path.display()
                )
            })?;
            let n_choices = p
                .get("choices")
                .and_then(Value::as_array)
                .with_context(|| format!("{}: no \"choices\" list", at()))?
                .len();
            let answer = p
                .get("answer")
                .and_then(Value::as_u64)
                .with_context(|| format!("{}: no integer \"answer\"", at()))?
                as usize;
            if answer >= n_choices {
                bail!("{}: answer {answer} but {n_choices} choices", at());
            }
            out.push(SqaProblem {
                pid,
                n_choices,
                answer,
            });
        }
        Ok(ScienceQaGt {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            problems: out,
        })
    }
}

/// Whether the script counts the parsed letter as the right answer.
pub fn is_correct(letter: Option<char>, p: &SqaProblem) -> bool {
    letter
        .and_then(|l| OPTIONS.iter().take(p.n_choices).position(|&o| o == l))
        .is_some_and(|i| i == p.answer)
}

/// Scores ScienceQA answers.
pub fn score(answers: &Answers, gt: &ScienceQaGt) -> Result<BenchScore> {
    let index = index_unique(answers, |a| Ok(Some(a.question_id.key())))?.index;
    let mut coverage = Coverage {
        gt_items: gt.problems.len(),
        ..Coverage::default()
    };
    let mut items = Vec::new();
    let (mut correct, mut img_correct, mut img_total) = (0, 0, 0);
    for p in &gt.problems {
        let Some(a) = index.get(&p.pid) else {
            coverage.missing.push(format!("{:?}", p.pid));
            continue;
        };
        let prompt = answers.prompt(
            a,
            "ScienceQA's img_accuracy counts the answers whose prompt has <image>",
        )?;
        let right = is_correct(parse_letter(&a.text), p);
        correct += usize::from(right);
        if prompt.contains("<image>") {
            img_total += 1;
            img_correct += usize::from(right);
        }
        items.push(ItemScore {
            id: a.question_id.to_string(),
            score: if right { 1.0 } else { 0.0 },
        });
    }
    let known: HashMap<&str, ()> = gt.problems.iter().map(|p| (p.pid.as_str(), ())).collect();
    for a in &answers.items {
        if !known.contains_key(a.question_id.key().as_str()) {
            coverage.extra.push(&a.question_id);
        }
    }
    let label = format!(
        "{} ({:?})",
        gt.dir.join("pid_splits.json").display(),
        gt.split
    );
    coverage.require_some(answers, &label)?;
    let mut metrics = Metrics::default();
    metrics.push("accuracy", ratio(correct, items.len()));
    let mut notes = Vec::new();
    if img_total > 0 {
        metrics.push("img_accuracy", ratio(img_correct, img_total));
    } else {
        notes.push("no prompt contains <image>: img_accuracy not computed".to_string());
    }
    Ok(BenchScore {
        task: Task::ScienceQa,
        n: items.len(),
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
    fn letters_parse_as_the_script_parses_them() {
        let cases = [
            ("B", Some('B')),
            ("E", Some('E')),
            ("F", None), // a bare letter must be one of A..E
            ("b", None),
            ("B.", None), // two characters: neither rule 1 nor rule 2
            ("B. apostrophe", Some('B')),
            ("B.apostrophe", None),
            ("(B)", None),
            ("The answer is B.", Some('B')),
            ("The answer is B", None), // the regex wants one more character
            ("The answer is B!", Some('B')),
            ("The answer is B\n", None), // `.` does not match a newline
            ("Because ... The answer is C. Really.", Some('C')),
            ("The answer is F.", Some('F')), // parsed; out of range later
            ("The answer is A. The answer is B.", None), // two matches
            ("The answer is AThe answer is B.", Some('A')), // findall does not overlap
            ("the answer is B.", None),
            ("It is a cat.", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_letter(text), want, "{text:?}");
        }
    }

    #[test]
    fn letters_beyond_the_choices_are_wrong() {
        let p = SqaProblem {
            pid: "1".into(),
            n_choices: 2,
            answer: 1,
        };
        assert!(is_correct(Some('B'), &p));
        assert!(!is_correct(Some('A'), &p));
        assert!(!is_correct(Some('C'), &p)); // only A and B exist
        assert!(!is_correct(Some('F'), &p));
        assert!(!is_correct(None, &p));
    }
}
