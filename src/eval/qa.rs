//! Question answering accuracy: exact match after normalisation, per question type.

use std::collections::BTreeMap;

use serde::Serialize;

/// The normal form compared by [`qa_exact_match`]: lower case, surrounding whitespace
/// trimmed, trailing punctuation (`. , ! ? ; :` and quotes) stripped, inner whitespace
/// runs collapsed to one space. Nothing else (articles and number words are kept, unlike
/// VQA's normaliser: the synthetic world's answers are short canonical words).
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let t = lower
        .trim()
        .trim_end_matches(['.', ',', '!', '?', ';', ':', '"', '\''])
        .trim();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a predicted answer equals the reference after [`normalize_answer`].
pub fn qa_exact_match(pred: &str, answer: &str) -> bool {
    normalize_answer(pred) == normalize_answer(answer)
}

/// `(correct, total)` per question type, and the overall fraction.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QaAccuracy {
    pub per_type: BTreeMap<String, (usize, usize)>,
}

impl QaAccuracy {
    /// Records one answer of type `kind` (e.g. colour, shape, count, position).
    pub fn add(&mut self, kind: &str, correct: bool) {
        let e = self.per_type.entry(kind.to_string()).or_default();
        e.0 += correct as usize;
        e.1 += 1;
    }

    /// Fraction in [0, 1] over all questions; `None` when there are none.
    pub fn overall(&self) -> Option<f64> {
        let (c, t) = self
            .per_type
            .values()
            .fold((0, 0), |(c, t), &(a, b)| (c + a, t + b));
        (t > 0).then(|| c as f64 / t as f64)
    }

    /// `(type, fraction)` for every type with at least one question.
    pub fn fractions(&self) -> Vec<(String, f64)> {
        self.per_type
            .iter()
            .filter(|(_, &(_, t))| t > 0)
            .map(|(k, &(c, t))| (k.clone(), c as f64 / t as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_normalises_case_space_and_trailing_punctuation() {
        assert!(qa_exact_match("  Red.", "red"));
        assert!(qa_exact_match("two  circles!", "Two circles"));
        assert!(!qa_exact_match("a red", "red"));
        assert!(!qa_exact_match("3", "three"));
    }

    #[test]
    fn accuracy_aggregates_per_type() {
        let mut a = QaAccuracy::default();
        a.add("colour", true);
        a.add("colour", false);
        a.add("count", true);
        assert_eq!(a.per_type["colour"], (1, 2));
        assert_eq!(a.overall(), Some(2.0 / 3.0));
        assert_eq!(
            a.fractions(),
            vec![("colour".into(), 0.5), ("count".into(), 1.0)]
        );
        assert_eq!(QaAccuracy::default().overall(), None);
    }
}
