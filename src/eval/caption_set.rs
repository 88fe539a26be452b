//! Caption metrics of a scored set under resampling: BLEU-1..4, ROUGE-L and CIDEr-D of a
//! set in which image `i` appears `w[i]` times, without rebuilding the set each time.
//!
//! With every weight 1 the scores are pycocoevalcap's ([`super::captions::score_raw`]), and
//! with weights they equal that scorer run on the set with each image repeated `w[i]` times
//! under distinct ids (tested). That is what a bootstrap of the metric means: the metric
//! recomputed on a resampled test set. For CIDEr-D this includes its document frequencies,
//! which pycocoevalcap takes from the references of the evaluated images: a resample with an
//! image drawn twice counts that image's n-grams twice, and `log(#images)` is the resample's
//! size, exactly as if the copies were separate images. Keeping the full set's frequencies
//! fixed instead would treat them as part of the metric's definition and miss how they move
//! with the test set; they are recomputed.
//!
//! BLEU is a corpus statistic of additive per-image counts (lengths, n-gram matches), so
//! weights scale each image's counts; ROUGE-L is a mean over images.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

use super::captions::rouge_l;

/// Metric names, in the order [`CaptionSet::scores`] returns them (pycocoevalcap's).
pub const NAMES: [&str; 6] = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"];

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// An n-gram (interned id) with its order (0 = unigram) and count in one caption.
#[derive(Debug, Clone)]
struct Gram {
    id: u32,
    order: usize,
    tf: f64,
}

#[derive(Debug, Clone)]
struct Reference {
    grams: Vec<Gram>,
    /// Bigrams in this reference (CIDEr-D's length penalty compares these).
    bigrams: f64,
    /// N-grams the candidate shares with this reference: (id, order, min(tf_c, tf_r) * tf_r),
    /// the clipped product pycocoevalcap sums once multiplied by idf^2.
    matches: Vec<(u32, usize, f64)>,
}

#[derive(Debug, Clone)]
struct Image {
    testlen: f64,
    reflen: f64,
    guess: [f64; N],
    correct: [f64; N],
    rouge: f64,
    cand: Vec<Gram>,
    cand_bigrams: f64,
    refs: Vec<Reference>,
    /// Distinct n-grams over all references: what the document frequency counts.
    doc: Vec<u32>,
}

/// A scored set of captions, prepared for scoring under any weights.
#[derive(Debug, Clone)]
pub struct CaptionSet {
    images: Vec<Image>,
    vocab: usize,
}

fn counts<'a>(words: &[&'a str]) -> HashMap<Vec<&'a str>, usize> {
    let mut c = HashMap::new();
    for k in 1..=N {
        for g in words.windows(k) {
            *c.entry(g.to_vec()).or_insert(0) += 1;
        }
    }
    c
}

impl CaptionSet {
    /// Prepares `(prediction, references)` per image, both PTB-tokenized first as
    /// [`super::captions::score_raw`] does.
    pub fn from_raw(pairs: &[(String, Vec<String>)]) -> Result<Self> {
        let tok = super::ptb::tokenize;
        let t: Vec<(String, Vec<String>)> = pairs
            .iter()
            .map(|(p, r)| (tok(p), r.iter().map(|s| tok(s)).collect()))
            .collect();
        Self::new(&t)
    }

    /// Prepares already tokenized `(prediction, references)` pairs; every image needs a
    /// reference.
    pub fn new(pairs: &[(String, Vec<String>)]) -> Result<Self> {
        let mut vocab: HashMap<Vec<String>, u32> = HashMap::new();
        let mut intern = |g: &[&str]| -> u32 {
            let key: Vec<String> = g.iter().map(|s| s.to_string()).collect();
            let next = vocab.len() as u32;
            *vocab.entry(key).or_insert(next)
        };
        let mut images = Vec::with_capacity(pairs.len());
        for (i, (cand, refs)) in pairs.iter().enumerate() {
            if refs.is_empty() {
                bail!("image {i} has no reference captions");
            }
            let c: Vec<&str> = cand.split_whitespace().collect();
            let rw: Vec<Vec<&str>> = refs
                .iter()
                .map(|r| r.split_whitespace().collect())
                .collect();
            let cc = counts(&c);
            let rcs: Vec<HashMap<Vec<&str>, usize>> = rw.iter().map(|r| counts(r)).collect();
            // BLEU counts, as captions::bleu accumulates them.
            let mut max_ref: HashMap<&Vec<&str>, usize> = HashMap::new();
            for rc in &rcs {
                for (g, &n) in rc {
                    let m = max_ref.entry(g).or_insert(0);
                    *m = (*m).max(n);
                }
            }
            let closest = rw
                .iter()
                .map(|r| (r.len().abs_diff(c.len()), r.len()))
                .min()
                .map_or(0, |(_, l)| l);
            let mut guess = [0.0; N];
            let mut correct = [0.0; N];
            for (k, g) in guess.iter_mut().enumerate() {
                *g = c.len().saturating_sub(k) as f64;
            }
            for (g, &n) in &cc {
                correct[g.len() - 1] += n.min(max_ref.get(g).copied().unwrap_or(0)) as f64;
            }
            let grams = |m: &HashMap<Vec<&str>, usize>, intern: &mut dyn FnMut(&[&str]) -> u32| {
                let mut v: Vec<Gram> = m
                    .iter()
                    .map(|(g, &tf)| Gram {
                        id: intern(g),
                        order: g.len() - 1,
                        tf: tf as f64,
                    })
                    .collect();
                v.sort_by_key(|g| g.id);
                v
            };
            let cand_grams = grams(&cc, &mut intern);
            let bigrams = |v: &[Gram]| v.iter().filter(|g| g.order == 1).map(|g| g.tf).sum();
            let mut doc = HashSet::new();
            let refs_out: Vec<Reference> = rcs
                .iter()
                .map(|rc| {
                    let g = grams(rc, &mut intern);
                    doc.extend(g.iter().map(|x| x.id));
                    let tf_r: HashMap<u32, f64> = g.iter().map(|x| (x.id, x.tf)).collect();
                    let matches = cand_grams
                        .iter()
                        .filter_map(|x| tf_r.get(&x.id).map(|&r| (x.id, x.order, x.tf.min(r) * r)))
                        .collect();
                    Reference {
                        bigrams: bigrams(&g),
                        grams: g,
                        matches,
                    }
                })
                .collect();
            let mut doc: Vec<u32> = doc.into_iter().collect();
            doc.sort_unstable();
            images.push(Image {
                testlen: c.len() as f64,
                reflen: closest as f64,
                guess,
                correct,
                rouge: rouge_l(cand, refs),
                cand_bigrams: bigrams(&cand_grams),
                cand: cand_grams,
                refs: refs_out,
                doc,
            });
        }
        Ok(CaptionSet {
            images,
            vocab: vocab.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// BLEU-1..4, ROUGE-L, CIDEr-D ([`NAMES`]) of the set with image `i` counted `w[i]`
    /// times (whole numbers for a resample; 1 everywhere for the set itself).
    pub fn scores(&self, w: &[f64]) -> [f64; 6] {
        let bleu = self.bleu(w);
        let total: f64 = w.iter().sum();
        let rouge = self
            .images
            .iter()
            .zip(w)
            .map(|(im, w)| im.rouge * w)
            .sum::<f64>()
            / total;
        let cider = self
            .cider_per_image(w)
            .iter()
            .zip(w)
            .map(|(s, w)| s * w)
            .sum::<f64>()
            / total;
        [bleu[0], bleu[1], bleu[2], bleu[3], rouge, cider]
    }

    /// Each image's CIDEr-D within the whole set (pycocoevalcap's per-image scores, whose
    /// mean is the corpus CIDEr-D).
    pub fn per_image_cider(&self) -> Vec<f64> {
        self.cider_per_image(&vec![1.0; self.images.len()])
    }

    fn bleu(&self, w: &[f64]) -> [f64; N] {
        let (small, tiny) = (1e-9, 1e-15);
        let (mut testlen, mut reflen) = (0.0, 0.0);
        let (mut guess, mut correct) = ([0.0; N], [0.0; N]);
        for (im, &w) in self.images.iter().zip(w) {
            testlen += im.testlen * w;
            reflen += im.reflen * w;
            for k in 0..N {
                guess[k] += im.guess[k] * w;
                correct[k] += im.correct[k] * w;
            }
        }
        let mut out = [0.0; N];
        let mut prod = 1.0;
        for k in 0..N {
            prod *= (correct[k] + tiny) / (guess[k] + small);
            out[k] = prod.powf(1.0 / (k + 1) as f64);
        }
        let ratio = (testlen + tiny) / (reflen + small);
        if ratio < 1.0 {
            for b in &mut out {
                *b *= (1.0 - 1.0 / ratio).exp();
            }
        }
        out
    }

    /// CIDEr-D of every image with document frequencies from the weighted set (0 for
    /// images of weight 0, which are not in it).
    fn cider_per_image(&self, w: &[f64]) -> Vec<f64> {
        let total: f64 = w.iter().sum();
        let ref_len = total.ln();
        let mut df = vec![0.0f64; self.vocab];
        for (im, &w) in self.images.iter().zip(w) {
            if w > 0.0 {
                for &g in &im.doc {
                    df[g as usize] += w;
                }
            }
        }
        let idf: Vec<f64> = df.iter().map(|d| ref_len - d.max(1.0).ln()).collect();
        let norms = |grams: &[Gram]| {
            let mut n = [0.0f64; N];
            for g in grams {
                let x = g.tf * idf[g.id as usize];
                n[g.order] += x * x;
            }
            n.map(f64::sqrt)
        };
        self.images
            .iter()
            .zip(w)
            .map(|(im, &w)| {
                if w <= 0.0 {
                    return 0.0;
                }
                let nh = norms(&im.cand);
                let mut sum = [0.0f64; N];
                for r in &im.refs {
                    let nr = norms(&r.grams);
                    let mut val = [0.0f64; N];
                    for &(g, order, prod) in &r.matches {
                        let d = idf[g as usize];
                        val[order] += prod * d * d;
                    }
                    let delta = im.cand_bigrams - r.bigrams;
                    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                    for n in 0..N {
                        if nh[n] != 0.0 && nr[n] != 0.0 {
                            val[n] /= nh[n] * nr[n];
                        }
                        sum[n] += val[n] * penalty;
                    }
                }
                sum.iter().sum::<f64>() / N as f64 / im.refs.len() as f64 * 10.0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::eval::captions::score_raw;

    fn pairs() -> Vec<(String, Vec<String>)> {
        let p = |c: &str, r: &[&str]| (c.to_string(), r.iter().map(|s| s.to_string()).collect());
        vec![
            p(
                "A red circle on a blue background.",
                &[
                    "A red circle on blue.",
                    "There is one red circle in this image.",
                ],
            ),
            p(
                "two squares",
                &[
                    "Two green squares at the top.",
                    "A white picture with two squares.",
                    "two squares",
                ],
            ),
            p(
                "a picture",
                &[
                    "An image showing a yellow triangle in the center.",
                    "A yellow triangle.",
                ],
            ),
            p(
                "a yellow triangle in the center",
                &["A yellow triangle in the center.", "One triangle, yellow."],
            ),
            p("", &["A black picture with a small circle."]),
        ]
    }

    /// pycocoevalcap's scores of the set where image i appears w[i] times under new ids.
    fn reference(pairs: &[(String, Vec<String>)], w: &[usize]) -> [f64; 6] {
        let (mut p, mut r) = (BTreeMap::new(), BTreeMap::new());
        let mut id = 0;
        for ((c, refs), &n) in pairs.iter().zip(w) {
            for _ in 0..n {
                p.insert(id, c.clone());
                r.insert(id, refs.clone());
                id += 1;
            }
        }
        let s = score_raw(&p, &r).unwrap();
        [
            s.bleu[0], s.bleu[1], s.bleu[2], s.bleu[3], s.rouge_l, s.cider,
        ]
    }

    #[test]
    fn unit_weights_give_the_scorer_and_weights_give_the_repeated_set() {
        let pairs = pairs();
        let set = CaptionSet::from_raw(&pairs).unwrap();
        for w in [
            vec![1, 1, 1, 1, 1],
            vec![2, 0, 1, 3, 1],
            vec![0, 0, 4, 1, 0],
        ] {
            let wf: Vec<f64> = w.iter().map(|&x| x as f64).collect();
            let got = set.scores(&wf);
            let want = reference(&pairs, &w);
            for (k, (g, e)) in got.iter().zip(want).enumerate() {
                // Same arithmetic up to the order of float operations (idf^2 factored out).
                assert!(
                    (g - e).abs() <= 1e-12 * e.abs().max(1.0),
                    "{} w={w:?}: {g} vs {e}",
                    NAMES[k]
                );
            }
        }
        let per = set.per_image_cider();
        let mean = per.iter().sum::<f64>() / per.len() as f64;
        assert!((mean - reference(&pairs, &[1; 5])[5]).abs() < 1e-12);
        assert!(
            per[3] > per[2],
            "the matching caption scores higher: {per:?}"
        );
    }
}
