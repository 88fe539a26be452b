//! The leaderboard: every run in the store on one table, as a sortable HTML page
//! (`reports/index.html`) or as Markdown / CSV for terminals and papers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::html::{badge, esc, href, num, num_cell, page, table, td};
use super::sections;
use crate::store::metrics::Row;
use crate::store::runs::{self, RunSummary};
use crate::store::Store;

/// One leaderboard row: a run with the columns of the table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub summary: RunSummary,
    pub encoder: String,
    pub projector: String,
    pub lora_rank: Option<i64>,
    /// Wall seconds, ended - started (so far for an unfinished run).
    pub time_s: Option<f64>,
    /// Mean training `tokens_per_s` of the latest stage that logged it (a last value
    /// alone is one noisy step).
    pub tokens_per_s: Option<f64>,
    /// The Slurm task and node of each stage this run trained (`stage1 40_2 on gpu-07`),
    /// empty when it trained none in a Slurm job.
    pub ran_on: String,
}

/// `stage1 40_0 on n1, stage2 40_1 on n1`: the stages this run trained in Slurm tasks.
fn ran_on(s: &RunSummary) -> String {
    s.stages
        .iter()
        .filter(|(_, st)| st.run_id == s.id)
        .filter_map(|(name, st)| {
            let w = st.worker.as_ref().filter(|w| w.slurm.is_some())?;
            Some(format!("{name} {}", w.short()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether any run has a Slurm task to show: only then the table has the column.
fn any_ran_on(entries: &[Entry]) -> bool {
    entries.iter().any(|e| !e.ran_on.is_empty())
}

/// The metric columns: final losses, then every evaluation metric any run has.
pub const LOSS_COLUMNS: [&str; 4] = [
    "stage1/train/loss",
    "stage1/val/loss",
    "stage2/train/loss",
    "stage2/val/loss",
];

/// Every run, ranked: runs with a stage-2 validation loss first (lowest first), then the
/// rest newest first.
pub fn entries(store: &Store) -> Result<Vec<Entry>> {
    let mut loaded: Vec<(RunSummary, Vec<Row>)> = store
        .run_ids()?
        .iter()
        .filter_map(|id| runs::summary_and_rows(store, id).ok())
        .collect();
    loaded.sort_by(|a, b| b.0.started.cmp(&a.0.started));
    let mut out: Vec<Entry> = loaded
        .into_iter()
        .map(|(s, rows)| {
            let exp = store.read_experiment(&s.id).ok();
            let time_s = duration(&s);
            let tokens_per_s = ["stage2", "stage1"]
                .iter()
                .find_map(|st| mean_tokens_per_s(&rows, st));
            Entry {
                encoder: exp
                    .as_ref()
                    .map(|e| e.model.vision.clone())
                    .unwrap_or("?".into()),
                projector: exp
                    .as_ref()
                    .map(|e| {
                        let kind = serde_json::to_value(e.model.projector)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default();
                        format!("{kind} depth {}", e.model.projector_depth)
                    })
                    .unwrap_or("?".into()),
                lora_rank: exp.as_ref().map(|e| e.stage2.lora_rank),
                time_s,
                tokens_per_s,
                ran_on: ran_on(&s),
                summary: s,
            }
        })
        .collect();
    // `summaries` is newest first; a stable sort keeps that order among unranked runs.
    out.sort_by(|a, b| {
        let key = |e: &Entry| e.summary.metrics.get("stage2/val/loss").copied();
        match (key(a), key(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
    Ok(out)
}

fn mean_tokens_per_s(rows: &[Row], stage: &str) -> Option<f64> {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.stage == stage && r.split == "train" && r.metric == "tokens_per_s")
        .map(|r| r.value)
        .filter(|v| v.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn duration(s: &RunSummary) -> Option<f64> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let start = parse(&s.started)?;
    let end = match &s.ended {
        Some(e) => parse(e)?,
        // Still going: the time so far. Dead without an end: unknown.
        None if s.status == "running" => chrono::Utc::now().fixed_offset(),
        None => return None,
    };
    Some((end - start).num_milliseconds() as f64 / 1e3)
}

/// `*/eval/*` metrics present in any run, sorted.
pub fn eval_columns(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|e| e.summary.metrics.keys())
        .filter(|k| k.split('/').nth(1) == Some("eval"))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The column of Slurm tasks and nodes, shown when some run trained in a Slurm job.
pub const RAN_ON: &str = "ran on (Slurm)";

const TEXT_COLUMNS: [&str; 9] = [
    "#",
    "name",
    "id",
    "commit",
    "status",
    "encoder",
    "projector",
    "LoRA rank",
    "time (s)",
];

/// The table as plain cells (for Markdown and CSV): header, then one row per run.
pub fn cells(entries: &[Entry]) -> (Vec<String>, Vec<Vec<String>>) {
    let evals = eval_columns(entries);
    let slurm = any_ran_on(entries);
    let mut header: Vec<String> = TEXT_COLUMNS.iter().map(|s| s.to_string()).collect();
    if slurm {
        header.push(RAN_ON.into());
    }
    header.extend(LOSS_COLUMNS.iter().map(|s| s.to_string()));
    header.extend(evals.iter().cloned());
    header.push("tokens/s (mean)".into());
    let opt = |v: Option<f64>| v.map(num).unwrap_or_default();
    let rows = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let s = &e.summary;
            let mut row = vec![
                (i + 1).to_string(),
                s.name.clone(),
                s.id.clone(),
                commit(s),
                s.status.clone(),
                e.encoder.clone(),
                e.projector.clone(),
                e.lora_rank.map(|r| r.to_string()).unwrap_or_default(),
                e.time_s.map(|t| format!("{t:.0}")).unwrap_or_default(),
            ];
            if slurm {
                row.push(e.ran_on.clone());
            }
            row.extend(LOSS_COLUMNS.iter().map(|k| opt(s.metrics.get(*k).copied())));
            row.extend(evals.iter().map(|k| opt(s.metrics.get(k).copied())));
            row.push(opt(e.tokens_per_s));
            row
        })
        .collect();
    (header, rows)
}

fn commit(s: &RunSummary) -> String {
    let c: String = s.commit.chars().take(7).collect();
    if s.dirty {
        format!("{c}+dirty")
    } else {
        c
    }
}

/// Markdown table (pipes and newlines in values escaped).
pub fn markdown(entries: &[Entry]) -> String {
    let (header, rows) = cells(entries);
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let line = |r: &[String]| {
        format!(
            "| {} |\n",
            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        )
    };
    let mut out = line(&header);
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// CSV (RFC 4180 quoting).
pub fn csv(entries: &[Entry]) -> String {
    let (header, rows) = cells(entries);
    let cell = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    std::iter::once(&header)
        .chain(&rows)
        .map(|r| r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// Writes `<reports_dir>/index.html`, making each run's report first where it is missing
/// or older than the run's status, so every link works. Returns the HTML path.
pub fn write(store: &Store, reports_dir: &Path, o: &super::ChartOptions) -> Result<PathBuf> {
    for id in store.run_ids()? {
        if stale(store, &id) {
            if let Err(e) = super::run_page::write(store, &id, o) {
                eprintln!("warning: no report for {id}: {e:#}");
            }
        }
    }
    let entries = entries(store)?;
    let evals = eval_columns(&entries);
    let slurm = any_ran_on(&entries);
    let rows: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let s = &e.summary;
            let report = store.run_dir(&s.id).join("report.html");
            let name = if report.exists() {
                format!(
                    "<td><a href=\"{}\">{}</a></td>",
                    href(&sections::relative(reports_dir, &report)),
                    esc(&s.name)
                )
            } else {
                td(&s.name)
            };
            let mut row = format!(
                "<td class=\"n\" data-v=\"{}\">{}</td>{name}{}{}<td>{}</td>{}{}{}",
                i + 1,
                i + 1,
                td(&s.id),
                td(&commit(s)),
                badge(&s.status),
                td(&e.encoder),
                td(&e.projector),
                match e.lora_rank {
                    Some(r) => format!("<td class=\"n\" data-v=\"{r}\">{r}</td>"),
                    None => num_cell(None),
                },
            );
            row.push_str(&match e.time_s {
                Some(t) => format!(
                    "<td class=\"n\" data-v=\"{t}\">{}</td>",
                    esc(&runs::human_age(t))
                ),
                None => num_cell(None),
            });
            if slurm {
                row.push_str(&td(&e.ran_on));
            }
            for k in LOSS_COLUMNS
                .iter()
                .map(|k| k.to_string())
                .chain(evals.iter().cloned())
            {
                row.push_str(&num_cell(s.metrics.get(&k).copied()));
            }
            row.push_str(&num_cell(e.tokens_per_s));
            row
        })
        .collect();
    let mut header: Vec<String> = TEXT_COLUMNS.iter().map(|s| s.to_string()).collect();
    header[8] = "time".into();
    if slurm {
        header.push(RAN_ON.into());
    }
    header.extend(LOSS_COLUMNS.iter().map(|s| s.to_string()));
    header.extend(evals);
    header.push("tokens/s (mean)".into());
    let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    let body = format!(
        "<h1>Leaderboard</h1><p class=\"muted\">{} runs in {}; ranked by stage-2 validation \
         loss, click a column to sort.</p>{}",
        entries.len(),
        esc(&store.root.display().to_string()),
        if entries.is_empty() {
            "<p class=\"muted\">No runs yet.</p>".to_string()
        } else {
            table("leaderboard sortable", &header, &rows)
        }
    );
    let out = reports_dir.join("index.html");
    crate::fsutil::write_atomic(&out, page("harness leaderboard", &body).as_bytes())?;
    Ok(out)
}

/// A run's report is missing, or older than its status (which changes on every stage
/// transition and heartbeat).
fn stale(store: &Store, id: &str) -> bool {
    let dir = store.run_dir(id);
    let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        mtime(dir.join("report.html")),
        mtime(dir.join("status.json")),
    ) {
        (Some(r), Some(s)) => r < s,
        _ => true,
    }
}
