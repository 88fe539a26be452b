//! What reports compare: a subject is one run, or a group of runs that differ only in their
//! seed ([`crate::store::groups`]). Each eval metric of a subject carries a 95% interval
//! (bootstrap over the run's items, or Student t over a group's seeds), and two subjects'
//! difference carries one too, with a verdict: "significant" when it excludes 0.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;

use super::data::RunData;
use crate::eval::intervals::{self, is_headline_key};
use crate::eval::stats::{self, Bootstrap};
use crate::store::groups::Group;
use crate::store::items::{self, Item};
use crate::store::Store;

/// A run, or the replicas of one experiment.
#[derive(Debug, Clone)]
pub struct Subject {
    pub label: String,
    /// One run, or one per seed.
    pub runs: Vec<RunData>,
    /// Each run's items (empty for runs made before items were kept).
    pub items: Vec<Vec<Item>>,
    /// Item tables that could not be read, per run.
    pub items_errors: Vec<String>,
}

/// An eval metric's value with its interval and how the interval was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// `bootstrap over 1000 items`, `t over 3 seeds`, or why there is no interval.
    pub how: String,
}

/// One metric of two subjects: `b - a` with its interval and verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub delta: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// `None` when there is no interval to judge by.
    pub significant: Option<bool>,
    pub how: String,
}

impl Comparison {
    /// "significant", "within noise", or "no interval".
    pub fn verdict(&self) -> &'static str {
        match self.significant {
            Some(true) => "significant",
            Some(false) => "within noise",
            None => "no interval",
        }
    }
}

impl Subject {
    /// One run.
    pub fn run(store: &Store, id: &str) -> Result<Subject> {
        Self::of(
            store,
            RunData::load(store, id)?.summary.name.clone(),
            &[id.to_string()],
        )
    }

    /// A group's runs, labelled with its name.
    pub fn group(store: &Store, g: &Group) -> Result<Subject> {
        Self::of(store, g.name.clone(), &g.runs)
    }

    fn of(store: &Store, label: String, ids: &[String]) -> Result<Subject> {
        let runs = ids
            .iter()
            .map(|id| RunData::load(store, id))
            .collect::<Result<Vec<_>>>()?;
        let mut items = vec![];
        let mut items_errors = vec![];
        for r in &runs {
            match items::run_items(store, r.id(), &r.status) {
                Ok(i) => items.push(i),
                Err(e) => {
                    items_errors.push(format!("{}: {e:#}", r.id()));
                    items.push(vec![]);
                }
            }
        }
        Ok(Subject {
            label,
            runs,
            items,
            items_errors,
        })
    }

    pub fn is_group(&self) -> bool {
        self.runs.len() > 1
    }

    pub fn first(&self) -> &RunData {
        &self.runs[0]
    }

    /// The metric's last value in each run that has it.
    pub fn values(&self, key: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.summary.metrics.get(key).copied())
            .collect()
    }

    /// The metric: a run's last value, a group's mean over its runs.
    pub fn value(&self, key: &str) -> Option<f64> {
        let v = self.values(key);
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Every `*/eval/*` metric of its runs.
    pub fn eval_keys(&self) -> BTreeSet<String> {
        self.runs
            .iter()
            .flat_map(|r| r.summary.metrics.keys())
            .filter(|k| intervals::eval_metric(k).is_some())
            .cloned()
            .collect()
    }

    /// Each eval metric with its interval: bootstrap over a run's items, t over a group's
    /// seeds; a metric without items (or a group with one value) has none, and says so.
    pub fn estimates(&self, o: &Bootstrap) -> BTreeMap<String, Estimate> {
        let mut out = BTreeMap::new();
        if self.is_group() {
            for k in self.eval_keys() {
                let v = self.values(&k);
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let e = match stats::t_interval(&v, o.level) {
                    Some(i) => Estimate {
                        value: i.value,
                        low: Some(i.low),
                        high: Some(i.high),
                        how: format!("t over {} seeds", v.len()),
                    },
                    None => Estimate {
                        value: mean,
                        low: None,
                        high: None,
                        how: "one seed has it: no interval".into(),
                    },
                };
                out.insert(k, e);
            }
            return out;
        }
        let boot = intervals::run_intervals(&self.items[0], o).unwrap_or_default();
        for b in boot {
            out.insert(
                b.key.clone(),
                Estimate {
                    value: self.value(&b.key).unwrap_or(b.interval.value),
                    low: Some(b.interval.low),
                    high: Some(b.interval.high),
                    how: format!("bootstrap over {} items", b.items),
                },
            );
        }
        for k in self.eval_keys() {
            if !out.contains_key(&k) {
                out.insert(
                    k.clone(),
                    Estimate {
                        value: self.value(&k).unwrap_or(f64::NAN),
                        low: None,
                        high: None,
                        how: "no per-item data: no interval".into(),
                    },
                );
            }
        }
        out
    }
}

/// Eval metrics in report order: headline metrics first, then the rest, each sorted.
pub fn ordered(keys: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = keys
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    v.sort_by_key(|k| !is_headline_key(k));
    v
}

/// `b - a` for every eval metric either subject has. Two runs: paired bootstrap over the
/// items both scored. A group on either side: Welch's t over the seeds' values (with a
/// single run opposite, the group's spread stands for both). Without items or seeds to go
/// on, the difference alone, marked as having no interval.
pub fn compare(a: &Subject, b: &Subject, o: &Bootstrap) -> Vec<Comparison> {
    let keys = ordered(a.eval_keys().into_iter().chain(b.eval_keys()));
    let paired: BTreeMap<String, intervals::PairedDelta> = if !a.is_group() && !b.is_group() {
        intervals::paired(&a.items[0], &b.items[0], o)
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.key.clone(), d))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut out = vec![];
    for key in keys.iter().chain(
        paired
            .keys()
            .filter(|k| !keys.contains(k))
            .collect::<Vec<_>>(),
    ) {
        if let Some(d) = paired.get(key) {
            out.push(Comparison {
                metric: key.clone(),
                a: Some(d.a),
                b: Some(d.b),
                delta: Some(d.delta),
                low: Some(d.low),
                high: Some(d.high),
                significant: Some(d.significant),
                how: format!("paired bootstrap over {} common items", d.items),
            });
            continue;
        }
        let (va, vb) = (a.value(key), b.value(key));
        let delta = va.zip(vb).map(|(x, y)| y - x);
        let (interval, how) = if a.is_group() || b.is_group() {
            match stats::difference_interval(&a.values(key), &b.values(key), o.level) {
                Some(i) => (
                    Some(i),
                    format!(
                        "{} t over seeds ({} vs {})",
                        if a.is_group() && b.is_group() {
                            "Welch"
                        } else {
                            "group's spread for both,"
                        },
                        a.values(key).len(),
                        b.values(key).len()
                    ),
                ),
                None => (None, "fewer than two seeds: no interval".into()),
            }
        } else if va.is_some() && vb.is_some() {
            (None, "no per-item data for both runs: no interval".into())
        } else {
            (None, "only one side has it".into())
        };
        out.push(Comparison {
            metric: key.clone(),
            a: va,
            b: vb,
            delta,
            low: interval.map(|i| i.low),
            high: interval.map(|i| i.high),
            significant: interval.map(|i| i.excludes_zero()),
            how,
        });
    }
    out
}

/// Resolves what a report names: a run id, then a group name (a group of at least two
/// seeds), then a run by experiment name or unique id prefix.
pub fn resolve(store: &Store, reference: &str) -> Result<Subject> {
    if store.run_ids()?.iter().any(|i| i == reference) {
        return Subject::run(store, reference);
    }
    if let Some(g) = crate::store::groups::find(store, reference)? {
        return Subject::group(store, &g);
    }
    Subject::run(store, &store.resolve(reference)?)
}
