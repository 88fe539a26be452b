//! Summaries of runs in the store, shared by `ls`, `show` and the reports.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::metrics;
use crate::store::{StageStatus, Store};

/// One run as listed: identity, state, and the last value of every metric.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub name: String,
    pub commit: String,
    pub dirty: bool,
    pub status: String,
    pub error: Option<String>,
    pub started: String,
    pub ended: Option<String>,
    pub age_s: f64,
    pub stages: BTreeMap<String, StageStatus>,
    /// `stage/split/metric` -> last value, including metrics of stages reused from other runs.
    pub metrics: BTreeMap<String, f64>,
}

impl RunSummary {
    pub fn final_loss(&self, stage: &str) -> Option<f64> {
        self.metrics.get(&format!("{stage}/train/loss")).copied()
    }
}

pub fn summary(store: &Store, id: &str) -> Result<RunSummary> {
    let status = store.read_status(id)?;
    let exp = store.read_experiment(id).ok();
    let prov = store.read_provenance(id).ok();
    let mut metrics = BTreeMap::new();
    // A reused stage's metrics live in the run that trained it.
    let mut sources = vec![(id.to_string(), None)];
    for (name, st) in &status.stages {
        if st.run_id != id {
            sources.push((st.run_id.clone(), Some(name.clone())));
        }
    }
    for (src, only_stage) in sources {
        let rows = metrics::read_rows(&store.run_dir(&src).join("metrics")).unwrap_or_default();
        for (stage, split, metric, _, value) in metrics::last_values(&rows) {
            if only_stage.as_ref().is_none_or(|s| *s == stage) {
                metrics.insert(format!("{stage}/{split}/{metric}"), value);
            }
        }
    }
    let started = chrono::DateTime::parse_from_rfc3339(&status.started).ok();
    let age_s = started
        .map(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1e3
        })
        .unwrap_or(f64::NAN);
    Ok(RunSummary {
        id: id.into(),
        name: exp.map(|e| e.name).unwrap_or_else(|| "?".into()),
        commit: prov
            .as_ref()
            .map(|p| p.code.commit.clone())
            .unwrap_or_else(|| "?".into()),
        dirty: prov.as_ref().map(|p| p.code.dirty).unwrap_or(false),
        status: store.effective_state(&status).to_string(),
        error: status.error.clone(),
        started: status.started.clone(),
        ended: status.ended.clone(),
        age_s,
        stages: status.stages.clone(),
        metrics,
    })
}

/// Every run, newest first.
pub fn summaries(store: &Store) -> Result<Vec<RunSummary>> {
    let mut out: Vec<RunSummary> = store
        .run_ids()?
        .iter()
        .filter_map(|id| summary(store, id).ok())
        .collect();
    out.sort_by(|a, b| b.started.cmp(&a.started));
    Ok(out)
}

/// `45s`, `12m`, `3h`, `2d`.
pub fn human_age(s: f64) -> String {
    if !s.is_finite() {
        return "-".into();
    }
    match s as u64 {
        x if x < 60 => format!("{x}s"),
        x if x < 3600 => format!("{}m", x / 60),
        x if x < 86400 => format!("{}h", x / 3600),
        x => format!("{}d", x / 86400),
    }
}
