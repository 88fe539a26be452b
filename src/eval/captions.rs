//! COCO caption metrics with pycocoevalcap's exact arithmetic: BLEU-1..4 (`Bleu(4)`,
//! corpus level, "closest" reference length), ROUGE-L (`Rouge`) and CIDEr-D (`Cider`).
//!
//! [`score`] takes captions that are already tokenized (words separated by single spaces,
//! what pycocoevalcap's `PTBTokenizer` returns); [`score_raw`] tokenizes first with
//! [`super::ptb::tokenize`]. Like `COCOEvalCap`, the images scored are those with a
//! prediction; references of other images are ignored (they do not enter CIDEr's document
//! frequencies either). METEOR and SPICE are not implemented (they need Java tools).
//!
//! Reference quirks kept on purpose, because equality with the published numbers is the
//! point:
//! - BLEU and CIDEr split on any whitespace, ROUGE-L on single spaces, so an empty caption
//!   is zero words for BLEU/CIDEr but one empty token for ROUGE-L.
//! - BLEU adds 1e-15 to matches and 1e-9 to guesses; the brevity penalty uses the summed
//!   closest reference lengths (ties go to the shorter reference).
//! - ROUGE-L takes the maximum precision and the maximum recall over the references
//!   separately and combines them with beta 1.2 (not the maximum F over references).
//! - CIDEr-D's Gaussian length penalty compares the number of *bigrams* of candidate and
//!   reference (pycocoevalcap counts `length` at n-gram index 1), sigma 6; the document
//!   frequency is the number of images whose references contain the n-gram, idf uses
//!   log(#images) - log(max(1, df)); the candidate's tf-idf is clipped by the reference's;
//!   mean over n = 1..4, mean over references, times 10.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;

use anyhow::{bail, Result};
use serde::Serialize;

/// Corpus scores, as pycocoevalcap reports them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaptionScores {
    /// BLEU-1..4.
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider: f64,
    /// Images scored.
    pub images: usize,
}

impl CaptionScores {
    /// `(name, value)` with pycocoevalcap's names: Bleu_1..Bleu_4, ROUGE_L, CIDEr.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("Bleu_1", self.bleu[0]),
            ("Bleu_2", self.bleu[1]),
            ("Bleu_3", self.bleu[2]),
            ("Bleu_4", self.bleu[3]),
            ("ROUGE_L", self.rouge_l),
            ("CIDEr", self.cider),
        ]
    }
}

const N: usize = 4;

/// Scores tokenized predictions (one per image) against tokenized references. Every
/// predicted image needs at least one reference.
pub fn score<K: Ord + Debug>(
    preds: &BTreeMap<K, String>,
    refs: &BTreeMap<K, Vec<String>>,
) -> Result<CaptionScores> {
    let mut pairs = Vec::with_capacity(preds.len());
    for (id, p) in preds {
        match refs.get(id) {
            Some(r) if !r.is_empty() => pairs.push((p.as_str(), r.as_slice())),
            Some(_) => bail!("image {id:?} has no reference captions"),
            None => bail!("image {id:?} has a prediction but no references"),
        }
    }
    if pairs.is_empty() {
        bail!("no predictions to score");
    }
    Ok(CaptionScores {
        bleu: bleu(&pairs),
        rouge_l: pairs.iter().map(|(c, r)| rouge_l(c, r)).sum::<f64>() / pairs.len() as f64,
        cider: cider(&pairs),
        images: pairs.len(),
    })
}

/// [`score`] after PTB-style tokenization of predictions and references.
pub fn score_raw<K: Ord + Debug + Clone>(
    preds: &BTreeMap<K, String>,
    refs: &BTreeMap<K, Vec<String>>,
) -> Result<CaptionScores> {
    let tok = super::ptb::tokenize;
    let p = preds.iter().map(|(k, v)| (k.clone(), tok(v))).collect();
    let r = refs
        .iter()
        .filter(|(k, _)| preds.contains_key(k))
        .map(|(k, v)| (k.clone(), v.iter().map(|s| tok(s)).collect()))
        .collect();
    score(&p, &r)
}

type Counts<'a> = HashMap<&'a [&'a str], usize>;

/// Counts of all 1..=4-grams of `words`.
fn ngrams<'a>(words: &'a [&'a str]) -> Counts<'a> {
    let mut c = HashMap::new();
    for k in 1..=N {
        for g in words.windows(k) {
            *c.entry(g).or_insert(0) += 1;
        }
    }
    c
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// pycocoevalcap `BleuScorer.compute_score(option="closest")`, corpus level.
fn bleu(pairs: &[(&str, &[String])]) -> [f64; 4] {
    let (small, tiny) = (1e-9, 1e-15);
    let (mut testlen, mut reflen) = (0usize, 0usize);
    let (mut guess, mut correct) = ([0usize; N], [0usize; N]);
    for (cand, refs) in pairs {
        let c = words(cand);
        let ref_words: Vec<Vec<&str>> = refs.iter().map(|r| words(r)).collect();
        let mut max_ref: HashMap<&[&str], usize> = HashMap::new();
        for r in &ref_words {
            for (g, n) in ngrams(r) {
                let m = max_ref.entry(g).or_insert(0);
                *m = (*m).max(n);
            }
        }
        // Closest reference length; on a tie the shorter one (Python's tuple min).
        let closest = ref_words
            .iter()
            .map(|r| (r.len().abs_diff(c.len()), r.len()))
            .min()
            .map_or(0, |(_, l)| l);
        testlen += c.len();
        reflen += closest;
        for (k, g) in guess.iter_mut().enumerate() {
            *g += c.len().saturating_sub(k);
        }
        for (g, n) in ngrams(&c) {
            correct[g.len() - 1] += n.min(max_ref.get(g).copied().unwrap_or(0));
        }
    }
    let mut out = [0.0; N];
    let mut prod = 1.0;
    for k in 0..N {
        prod *= (correct[k] as f64 + tiny) / (guess[k] as f64 + small);
        out[k] = prod.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (testlen as f64 + tiny) / (reflen as f64 + small);
    if ratio < 1.0 {
        for b in &mut out {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// Longest common subsequence length of two token lists.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

/// pycocoevalcap `Rouge.calc_score` for one image.
pub(super) fn rouge_l(cand: &str, refs: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    let c: Vec<&str> = cand.split(' ').collect();
    let (mut p_max, mut r_max) = (0.0f64, 0.0f64);
    for r in refs {
        let r: Vec<&str> = r.split(' ').collect();
        let l = lcs(&r, &c) as f64;
        p_max = p_max.max(l / c.len() as f64);
        r_max = r_max.max(l / r.len() as f64);
    }
    if p_max != 0.0 && r_max != 0.0 {
        (1.0 + BETA * BETA) * p_max * r_max / (r_max + BETA * BETA * p_max)
    } else {
        0.0
    }
}

/// A tf-idf vector per n-gram order, its norms and the bigram count.
struct TfIdf<'a> {
    vec: [HashMap<&'a [&'a str], f64>; N],
    norm: [f64; N],
    length: usize,
}

fn tfidf<'a>(counts: &Counts<'a>, df: &HashMap<&'a [&'a str], usize>, ref_len: f64) -> TfIdf<'a> {
    let mut v = TfIdf {
        vec: Default::default(),
        norm: [0.0; N],
        length: 0,
    };
    for (&g, &tf) in counts {
        let d = (df.get(g).copied().unwrap_or(0) as f64).max(1.0).ln();
        let n = g.len() - 1;
        let x = tf as f64 * (ref_len - d);
        v.vec[n].insert(g, x);
        v.norm[n] += x * x;
        if n == 1 {
            v.length += tf;
        }
    }
    for x in &mut v.norm {
        *x = x.sqrt();
    }
    v
}

/// pycocoevalcap `CiderScorer.compute_score`: the mean over images.
fn cider(pairs: &[(&str, &[String])]) -> f64 {
    const SIGMA: f64 = 6.0;
    let cands: Vec<Vec<&str>> = pairs.iter().map(|(c, _)| words(c)).collect();
    let refs: Vec<Vec<Vec<&str>>> = pairs
        .iter()
        .map(|(_, r)| r.iter().map(|s| words(s)).collect())
        .collect();
    let cand_counts: Vec<Counts> = cands.iter().map(|c| ngrams(c)).collect();
    let ref_counts: Vec<Vec<Counts>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| ngrams(r)).collect())
        .collect();
    let mut df: HashMap<&[&str], usize> = HashMap::new();
    for rs in &ref_counts {
        let seen: HashSet<&[&str]> = rs.iter().flat_map(|c| c.keys().copied()).collect();
        for g in seen {
            *df.entry(g).or_insert(0) += 1;
        }
    }
    let ref_len = (pairs.len() as f64).ln();
    let mut total = 0.0;
    for (cc, rcs) in cand_counts.iter().zip(&ref_counts) {
        let h = tfidf(cc, &df, ref_len);
        let mut sum = [0.0f64; N];
        for rc in rcs {
            let r = tfidf(rc, &df, ref_len);
            let delta = h.length as f64 - r.length as f64;
            let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            for (n, s) in sum.iter_mut().enumerate() {
                let mut val = 0.0;
                for (g, &x) in &h.vec[n] {
                    let y = r.vec[n].get(g).copied().unwrap_or(0.0);
                    val += x.min(y) * y;
                }
                if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
                    val /= h.norm[n] * r.norm[n];
                }
                *s += val * penalty;
            }
        }
        let mean = sum.iter().sum::<f64>() / N as f64;
        total += mean / rcs.len() as f64 * 10.0;
    }
    total / pairs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(pred: &str, refs: &[&str]) -> CaptionScores {
        let p = BTreeMap::from([(1, pred.to_string())]);
        let r = BTreeMap::from([(1, refs.iter().map(|s| s.to_string()).collect())]);
        score(&p, &r).unwrap()
    }

    #[test]
    fn identical_caption_scores_one_on_bleu_and_rouge() {
        let s = one(
            "a red square on a blue circle",
            &["a red square on a blue circle"],
        );
        for b in s.bleu {
            assert!((b - 1.0).abs() < 1e-9, "{b}");
        }
        assert!((s.rouge_l - 1.0).abs() < 1e-12);
    }

    #[test]
    fn missing_references_are_errors() {
        let p = BTreeMap::from([(7, "x".to_string())]);
        let r: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        assert!(score(&p, &r).unwrap_err().to_string().contains('7'));
    }
}
