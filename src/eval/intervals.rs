//! A run's eval metrics recomputed from its items ([`crate::store::items`]) with bootstrap
//! intervals, and the paired difference between two runs on the items both scored.
//!
//! Which items make which metric:
//! - task `captions`: BLEU-1..4, ROUGE-L and CIDEr-D of the captioned images, recomputed on
//!   each resample of images ([`super::caption_set`]: CIDEr's document frequencies included);
//! - any other task (`qa`, `bench/<name>`): the row's `metric` is the mean of `score` over
//!   the task's rows, and `<metric>/<kind>` the mean over the rows of one kind, each
//!   resampled within its own rows.
//!
//! Keys are `<stage>/eval/<metric>`, as in the metrics table. Items are ordered by id
//! before resampling, so the interval does not depend on the order of a file.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use super::caption_set::{self, CaptionSet};
use super::stats::{self, Bootstrap, Interval};
use crate::store::items::{self, Item};

/// Whether an eval metric is a headline, what a stage is ranked by: CIDEr and BLEU-4 of
/// captions, QA accuracy, a benchmark's `bench/<task>/<metric>`. The rest (BLEU-1..3,
/// ROUGE-L, per-type breakdowns such as `qa_acc/<type>`) are details.
pub fn is_headline(metric: &str) -> bool {
    matches!(metric, "CIDEr" | "Bleu_4" | "qa_acc")
        || (metric.starts_with("bench/") && metric.matches('/').count() == 2)
}

/// The metric of a `stage/eval/metric` key, if it is an eval key.
pub fn eval_metric(key: &str) -> Option<&str> {
    let mut parts = key.splitn(3, '/');
    let (_, split, metric) = (parts.next()?, parts.next()?, parts.next()?);
    (split == "eval").then_some(metric)
}

/// Whether a `stage/eval/metric` key is a headline ([`is_headline`]).
pub fn is_headline_key(key: &str) -> bool {
    eval_metric(key).is_some_and(is_headline)
}

/// One eval metric of a run with its interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricInterval {
    /// `stage/eval/metric`.
    pub key: String,
    #[serde(flatten)]
    pub interval: Interval,
    /// Items it was computed from.
    pub items: usize,
}

/// `b - a` for one metric, over the items both runs scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedDelta {
    pub key: String,
    /// The metric of each run on the common items (the logged value when both scored the
    /// same items).
    pub a: f64,
    pub b: f64,
    pub delta: f64,
    pub low: f64,
    pub high: f64,
    pub items: usize,
    /// The interval of the difference excludes 0.
    pub significant: bool,
}

/// Items that make metrics together: a caption set, or the rows of one mean.
struct Family {
    names: Vec<String>,
    rows: Vec<usize>,
    captions: bool,
}

/// A family's items ready to be scored under resampling weights.
enum Prepared {
    Captions(CaptionSet),
    Mean(Vec<f64>),
}

impl Prepared {
    fn new(f: &Family, items: &[&Item]) -> Result<Self> {
        let rows = f.rows.iter().map(|&r| items[r]);
        if f.captions {
            let pairs: Vec<(String, Vec<String>)> = rows
                .map(|i| (i.prediction.clone(), items::split_references(&i.reference)))
                .collect();
            let set = CaptionSet::from_raw(&pairs).with_context(|| {
                format!("captions of {}", items.first().map_or("", |i| &i.run_id))
            })?;
            Ok(Prepared::Captions(set))
        } else {
            Ok(Prepared::Mean(rows.map(|i| i.score).collect()))
        }
    }

    fn eval(&self, w: &[f64]) -> Vec<f64> {
        match self {
            Prepared::Captions(s) => s.scores(w).to_vec(),
            Prepared::Mean(v) => vec![stats::weighted_mean(v, w)],
        }
    }

    fn len(&self) -> usize {
        match self {
            Prepared::Captions(s) => s.len(),
            Prepared::Mean(v) => v.len(),
        }
    }
}

/// The families of a list of items (sorted by key), in key order.
fn families(items: &[&Item]) -> Vec<Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    let mut add = |key: String, names: Vec<String>, row: usize, captions: bool| {
        out.entry(key)
            .or_insert_with(|| Family {
                names,
                rows: vec![],
                captions,
            })
            .rows
            .push(row);
    };
    for (r, i) in items.iter().enumerate() {
        if i.task == "captions" {
            let names = caption_set::NAMES
                .iter()
                .map(|n| format!("{}/eval/{n}", i.stage))
                .collect();
            add(format!("{}/captions", i.stage), names, r, true);
        } else {
            let key = format!("{}/eval/{}", i.stage, i.metric);
            add(key.clone(), vec![key.clone()], r, false);
            if !i.kind.is_empty() {
                let k = format!("{key}/{}", i.kind);
                add(k.clone(), vec![k], r, false);
            }
        }
    }
    out.into_values().collect()
}

/// A stream id per family, so each interval's draws do not depend on which others exist.
fn stream(name: &str) -> u64 {
    // FNV-1a.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn sorted(items: &[Item]) -> Vec<&Item> {
    let mut v: Vec<&Item> = items.iter().collect();
    v.sort_by(|a, b| a.key().cmp(&b.key()));
    v.dedup_by(|a, b| a.key() == b.key());
    v
}

/// Every eval metric the items make, with its percentile bootstrap interval.
pub fn run_intervals(items: &[Item], o: &Bootstrap) -> Result<Vec<MetricInterval>> {
    let rows = sorted(items);
    let mut out = vec![];
    for f in families(&rows) {
        let p = Prepared::new(&f, &rows)?;
        let point = p.eval(&vec![1.0; p.len()]);
        let ends = stats::bootstrap(p.len(), o, stream(&f.names[0]), |w| p.eval(w));
        for ((name, value), (low, high)) in f.names.iter().zip(point).zip(ends) {
            out.push(MetricInterval {
                key: name.clone(),
                interval: Interval { value, low, high },
                items: p.len(),
            });
        }
    }
    Ok(out)
}

/// Paired bootstrap of `b - a` for every metric both runs' items make: the common items
/// (same stage, task and id) are resampled together, so what the two runs share (an easy
/// image, a hard question) cancels out of the difference.
pub fn paired(a: &[Item], b: &[Item], o: &Bootstrap) -> Result<Vec<PairedDelta>> {
    let ra = sorted(a);
    let by_key: BTreeMap<(&str, &str, &str), &Item> =
        sorted(b).into_iter().map(|i| (i.key(), i)).collect();
    let (mut ca, mut cb) = (vec![], vec![]);
    for i in ra {
        if let Some(&j) = by_key.get(&i.key()) {
            ca.push(i);
            cb.push(j);
        }
    }
    let mut out = vec![];
    for f in families(&ca) {
        let (pa, pb) = (Prepared::new(&f, &ca)?, Prepared::new(&f, &cb)?);
        let ones = vec![1.0; pa.len()];
        let (va, vb) = (pa.eval(&ones), pb.eval(&ones));
        let ends = stats::bootstrap(pa.len(), o, stream(&f.names[0]), |w| {
            pb.eval(w)
                .iter()
                .zip(pa.eval(w))
                .map(|(y, x)| y - x)
                .collect()
        });
        for (k, name) in f.names.iter().enumerate() {
            let (low, high) = ends[k];
            let d = Interval {
                value: vb[k] - va[k],
                low,
                high,
            };
            out.push(PairedDelta {
                key: name.clone(),
                a: va[k],
                b: vb[k],
                delta: d.value,
                low,
                high,
                items: pa.len(),
                significant: d.excludes_zero(),
            });
        }
    }
    Ok(out)
}
