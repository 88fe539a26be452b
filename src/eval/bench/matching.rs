//! Predictions meet ground truth: one prediction per item (a second one is an error that
//! says which), ground-truth items without a prediction are *missing*, predictions that
//! match no item are *extra*. Both are counted and reported, never fatal; only scoring
//! nothing at all is an error. The reference scripts differ here (VQA's `loadRes` and GQA's
//! `eval.py` refuse incomplete files, POPE pairs by position, ScienceQA counts a missing
//! problem as wrong): on a complete answers file they all agree with these rules.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;

use anyhow::{bail, Result};

use super::answers::{Answer, Answers};

/// How many ids to show in a message.
pub const SHOW: usize = 5;

/// A count of ids and the first few of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSample {
    pub count: usize,
    pub first: Vec<String>,
}

impl IdSample {
    pub fn push(&mut self, id: impl Display) {
        self.count += 1;
        if self.first.len() < SHOW {
            self.first.push(id.to_string());
        }
    }

    /// `3 (first: 5, 7, 9)`, or `0`.
    pub fn describe(&self) -> String {
        if self.count == 0 {
            return "0".into();
        }
        let more = if self.count > self.first.len() {
            ", ..."
        } else {
            ""
        };
        format!("{} (first: {}{more})", self.count, self.first.join(", "))
    }
}

/// How the predictions covered the ground truth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Ground-truth items (questions) the scorer knows.
    pub gt_items: usize,
    /// Ground-truth items without a prediction.
    pub missing: IdSample,
    /// Predictions that match no ground-truth item.
    pub extra: IdSample,
}

impl Coverage {
    /// Items scored: those with a prediction.
    pub fn scored(&self) -> usize {
        self.gt_items - self.missing.count
    }

    /// Fails when nothing could be scored, with what did not match.
    pub fn require_some(&self, answers: &Answers, gt: &str) -> Result<()> {
        if self.scored() == 0 {
            bail!(
                "{}: no prediction matches a question of {gt} ({} predictions, {} ground-truth \
                 items; unmatched predictions: {})",
                answers.source,
                answers.items.len(),
                self.gt_items,
                self.extra.describe()
            );
        }
        Ok(())
    }
}

/// Answers indexed by a key.
#[derive(Debug)]
pub struct Keyed<'a, K> {
    /// Key -> its answer.
    pub index: HashMap<K, &'a Answer>,
    /// Each answer's key, in the answers' order (`None`: the answer cannot match).
    pub keys: Vec<Option<K>>,
}

/// Indexes answers by `key`, failing on a key seen twice (with how many and which).
/// `key` returns `None` for an answer that cannot match any item (it is extra).
pub fn index_unique<'a, K, F>(answers: &'a Answers, mut key: F) -> Result<Keyed<'a, K>>
where
    K: Hash + Eq + Clone + Display,
    F: FnMut(&'a Answer) -> Result<Option<K>>,
{
    let mut index: HashMap<K, &Answer> = HashMap::new();
    let mut keys = Vec::with_capacity(answers.items.len());
    // Keys seen more than once, in order of their second appearance, with all their lines.
    let mut dups: Vec<(K, Vec<usize>)> = Vec::new();
    for a in &answers.items {
        let k = key(a)?;
        keys.push(k.clone());
        let Some(k) = k else { continue };
        if let Some(first) = index.get(&k) {
            match dups.iter_mut().find(|(d, _)| *d == k) {
                Some((_, lines)) => lines.push(a.line),
                None => dups.push((k.clone(), vec![first.line, a.line])),
            }
        } else {
            index.insert(k, a);
        }
    }
    if !dups.is_empty() {
        let shown: Vec<String> = dups
            .iter()
            .take(SHOW)
            .map(|(k, lines)| {
                let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                format!("{k} (lines {})", lines.join(", "))
            })
            .collect();
        let more = if dups.len() > SHOW { "; ..." } else { "" };
        bail!(
            "{}: {} question(s) answered more than once: {}{more}; one prediction per question",
            answers.source,
            dups.len(),
            shown.join("; ")
        );
    }
    Ok(Keyed { index, keys })
}

#[cfg(test)]
mod tests {
    use super::super::answers::QuestionId;
    use super::*;

    fn answers(ids: &[i64]) -> Answers {
        Answers::from_items(
            "a.jsonl",
            ids.iter()
                .map(|&i| (QuestionId::Int(i), None, "x".to_string()))
                .collect(),
        )
    }

    #[test]
    fn duplicates_are_an_error_naming_them_and_their_lines() {
        let a = answers(&[1, 2, 1, 3, 2, 1]);
        let e = index_unique(&a, |a| Ok(Some(a.question_id.key())))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "a.jsonl: 2 question(s) answered more than once: 1 (lines 1, 3, 6); 2 (lines 2, 5); \
             one prediction per question"
        );
    }

    #[test]
    fn id_samples_count_all_and_show_the_first() {
        let mut s = IdSample::default();
        assert_eq!(s.describe(), "0");
        for i in 0..7 {
            s.push(i);
        }
        assert_eq!(s.count, 7);
        assert_eq!(s.describe(), "7 (first: 0, 1, 2, 3, 4, ...)");
    }

    #[test]
    fn scoring_nothing_is_an_error() {
        let a = answers(&[8, 9]);
        let mut c = Coverage {
            gt_items: 2,
            ..Coverage::default()
        };
        c.missing.push(1);
        c.missing.push(2);
        c.extra.push(8);
        c.extra.push(9);
        let e = c.require_some(&a, "gt.json").unwrap_err().to_string();
        assert!(
            e.contains("no prediction matches a question of gt.json"),
            "{e}"
        );
        assert!(e.contains("unmatched predictions: 2 (first: 8, 9)"), "{e}");
    }
}
