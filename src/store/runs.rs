//! Summaries of runs in the store, shared by `ls`, `show` and the reports.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::store::metrics;
use crate::store::{StageStatus, Status, Store};

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
    Ok(summary_and_rows(store, id)?.0)
}

/// The metric rows a run's results rest on: its own, plus, for each stage reused from
/// another run, that stage's rows from the run that trained it (a reused stage's metrics
/// live there), benchmarks (`bench/...`) excepted: a run shows the benchmarks it ran
/// itself. Unreadable metrics count as none.
pub fn run_rows(store: &Store, id: &str, status: &Status) -> Vec<metrics::Row> {
    let reused: BTreeMap<&str, &str> = status
        .stages
        .iter()
        .filter(|(_, st)| st.run_id != id)
        .map(|(name, st)| (name.as_str(), st.run_id.as_str()))
        .collect();
    let read =
        |run: &str| metrics::read_rows(&store.run_dir(run).join("metrics")).unwrap_or_default();
    // This run's rows of a reused stage (none normally) give way to the source's, except
    // its benchmarks (`bench/...`, logged under stage2): those are this run's own
    // evaluations of the reused model, and the source's are not this run's.
    let own_eval = |r: &metrics::Row| r.metric.starts_with("bench/");
    let mut rows: Vec<metrics::Row> = read(id)
        .into_iter()
        .filter(|r| !reused.contains_key(r.stage.as_str()) || own_eval(r))
        .collect();
    for (stage, src) in reused {
        rows.extend(
            read(src)
                .into_iter()
                .filter(|r| r.stage == stage && !own_eval(r)),
        );
    }
    rows
}

/// [`summary`] together with the rows it was computed from (see [`run_rows`]), for
/// callers that draw them, so they are read once.
pub fn summary_and_rows(store: &Store, id: &str) -> Result<(RunSummary, Vec<metrics::Row>)> {
    let status = store.read_status(id)?;
    let exp = store.read_experiment(id).ok();
    let prov = store.read_provenance(id).ok();
    let rows = run_rows(store, id, &status);
    let metrics: BTreeMap<String, f64> = metrics::last_values(&rows)
        .into_iter()
        .map(|(stage, split, metric, _, value)| (format!("{stage}/{split}/{metric}"), value))
        .collect();
    let started = chrono::DateTime::parse_from_rfc3339(&status.started).ok();
    let age_s = started
        .map(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1e3
        })
        .unwrap_or(f64::NAN);
    let summary = RunSummary {
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
    };
    Ok((summary, rows))
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
