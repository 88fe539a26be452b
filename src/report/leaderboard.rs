//! The leaderboard: every run in the store on one table, as a sortable HTML page
//! (`reports/index.html`: groups of seeds as one row, headline eval metrics first with
//! their intervals and which differences are significant) or as Markdown / CSV for
//! terminals and papers (one line per run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::chart::{IntervalChart, IntervalRow};
use super::html::{badge, esc, href, num, num_cell, page, table, td};
use super::sections;
use super::subjects::{self, Estimate, Subject};
use crate::eval::intervals::is_headline_key;
use crate::eval::stats::Bootstrap;
use crate::store::groups;
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

/// `*/eval/*` metrics present in any run, sorted; of the benchmarks (`*/eval/bench/...`)
/// only the headline ones ([`bench_headline`]): per-category and per-type breakdowns would
/// bury the table (they are on each run's page and in `compare`).
pub fn eval_columns(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|e| e.summary.metrics.keys())
        .filter(|k| k.split('/').nth(1) == Some("eval"))
        .filter(|k| !k.contains("/eval/bench/") || bench_headline(k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Bookkeeping a benchmark records beside its scores (`eval::bench::run`).
const BENCH_BOOKKEEPING: [&str; 3] = ["n", "samples_per_s", "missing_images"];

/// A benchmark's headline score: `<stage>/eval/bench/<task>/<metric>` with a metric that
/// is not a breakdown (`adversarial/f1`) or bookkeeping (`n`): POPE's `accuracy` and `f1`,
/// GQA's `accuracy`, MME's `perception` and `cognition`, ...
pub fn bench_headline(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    matches!(parts.as_slice(), [_, "eval", "bench", _, m] if !BENCH_BOOKKEEPING.contains(m))
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

/// One row of the leaderboard page: a run, or a group of seeds.
struct Board {
    subject: Subject,
    estimates: BTreeMap<String, Estimate>,
    /// The per-run entries of its runs (encoder, projector, time, throughput).
    entries: Vec<Entry>,
}

impl Board {
    fn mean(&self, f: impl Fn(&Entry) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.entries.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// How a row stands against the best row on a headline metric.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Standing {
    Best,
    WithinNoise,
    Below,
    Unknown,
}

impl Standing {
    fn mark(self) -> &'static str {
        match self {
            Standing::Best => "<span class=\"mark best\" title=\"best on this metric\">★</span>",
            Standing::WithinNoise => "<span class=\"mark noise\" title=\"within noise of the best: the 95% interval of the difference includes 0\">≈</span>",
            Standing::Below => "<span class=\"mark sig\" title=\"significantly below the best: the 95% interval of the difference excludes 0\">▼</span>",
            Standing::Unknown => "",
        }
    }
    fn color(self) -> (u8, u8, u8) {
        match self {
            Standing::Best => (42, 138, 58),
            Standing::WithinNoise => (31, 119, 180),
            Standing::Below => (192, 57, 43),
            Standing::Unknown => (150, 150, 150),
        }
    }
}

/// A value, its interval underneath and its standing mark, as one sortable cell.
fn estimate_cell(e: Option<&Estimate>, standing: Standing) -> String {
    match e {
        Some(e) => format!(
            "<td class=\"n\" data-v=\"{}\">{}{}<br><span class=\"ci\">{}</span></td>",
            e.value,
            esc(&num(e.value)),
            standing.mark(),
            esc(&sections::interval_text(e.low, e.high))
        ),
        None => num_cell(None),
    }
}

/// For each headline metric, every row's standing against the best row (the highest:
/// headline metrics are all higher-is-better): two runs by a paired bootstrap over their
/// common items, groups by t over seeds.
fn standings(
    rows: &[Board],
    headline: &[String],
    o: &Bootstrap,
) -> BTreeMap<(usize, String), Standing> {
    let mut out = BTreeMap::new();
    let mut cache: BTreeMap<(usize, usize), Vec<subjects::Comparison>> = BTreeMap::new();
    for k in headline {
        let best = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.estimates.get(k)?.value)))
            .filter(|(_, v)| v.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((b, _)) = best else { continue };
        // "Best" means something only next to an interval.
        if rows[b].estimates[k].low.is_none() {
            continue;
        }
        for (i, r) in rows.iter().enumerate() {
            if !r.estimates.contains_key(k) {
                continue;
            }
            let st = if i == b {
                Standing::Best
            } else {
                let cs = cache
                    .entry((b, i))
                    .or_insert_with(|| subjects::compare(&rows[b].subject, &r.subject, o));
                match cs
                    .iter()
                    .find(|c| &c.metric == k)
                    .and_then(|c| c.significant)
                {
                    Some(true) => Standing::Below,
                    Some(false) => Standing::WithinNoise,
                    None => Standing::Unknown,
                }
            };
            out.insert((i, k.clone()), st);
        }
    }
    out
}

/// Writes `<reports_dir>/index.html`, making each run's report first where it is missing
/// or older than the run's status, so every link works. Returns the HTML path.
///
/// One row per run, or per group of runs that differ only in their seed (mean and t
/// interval over the seeds, each seed a click away). The headline eval metrics lead (with
/// 95% intervals and a mark against the best: ★ best, ≈ within noise, ▼ significantly
/// below), then the losses; the other eval metrics are folded into the last column. A
/// chart of the headline metrics per row, with interval bars, sits above the table.
pub fn write(store: &Store, reports_dir: &Path, o: &super::ChartOptions) -> Result<PathBuf> {
    for id in store.run_ids()? {
        if stale(store, &id) {
            if let Err(e) = super::run_page::write(store, &id, o) {
                eprintln!("warning: no report for {id}: {e:#}");
            }
        }
    }
    let boot = Bootstrap::default();
    let by_id: BTreeMap<String, Entry> = entries(store)?
        .into_iter()
        .map(|e| (e.summary.id.clone(), e))
        .collect();
    let mut rows: Vec<Board> = vec![];
    for g in groups::groups(store)? {
        let subject = match Subject::group(store, &g) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: leaving {} out of the leaderboard: {e:#}", g.name);
                continue;
            }
        };
        let estimates = subject.estimates(&boot);
        let entries = g
            .runs
            .iter()
            .filter_map(|id| by_id.get(id).cloned())
            .collect();
        rows.push(Board {
            subject,
            estimates,
            entries,
        });
    }
    // Ranked by stage-2 validation loss (a group's mean), lowest first; the rest after.
    rows.sort_by(|a, b| {
        let key = |r: &Board| r.subject.value("stage2/val/loss");
        match (key(a), key(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
    let all_keys: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| r.estimates.keys().cloned())
        .collect();
    let headline: Vec<String> = all_keys
        .iter()
        .filter(|k| is_headline_key(k))
        .cloned()
        .collect();
    let marks = standings(&rows, &headline, &boot);
    let slurm = rows.iter().any(|r| any_ran_on(&r.entries));
    let label = |r: &Board| {
        if r.subject.is_group() {
            format!("{} ({} seeds)", r.subject.label, r.subject.runs.len())
        } else {
            r.subject.label.clone()
        }
    };
    let link = |id: &str, text: &str| {
        let report = store.run_dir(id).join("report.html");
        if report.exists() {
            format!(
                "<a href=\"{}\">{}</a>",
                href(&sections::relative(reports_dir, &report)),
                esc(text)
            )
        } else {
            esc(text)
        }
    };
    let html_rows: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = &r.subject;
            let first = s.first();
            let name = if s.is_group() {
                // Each seed's run and headline values, a click away.
                let seed_rows: Vec<String> = s
                    .runs
                    .iter()
                    .map(|run| {
                        let seed = run.experiment.as_ref().map_or("?".into(), |e| e.seed.to_string());
                        let mut row = format!("{}<td>{}</td>", td(&seed), link(run.id(), run.id()));
                        for k in &headline {
                            row.push_str(&num_cell(run.summary.metrics.get(k).copied()));
                        }
                        row
                    })
                    .collect();
                let mut header = vec!["seed", "run"];
                header.extend(headline.iter().map(|k| k.as_str()));
                format!(
                    "<td><details><summary>{} <span class=\"muted\">{} seeds</span></summary>{}</details></td>",
                    esc(&s.label),
                    s.runs.len(),
                    table("seeds", &header, &seed_rows)
                )
            } else {
                format!("<td>{}</td>", link(first.id(), &s.label))
            };
            let mut row = format!("<td class=\"n\" data-v=\"{}\">{}</td>{name}", i + 1, i + 1);
            for k in &headline {
                let st = marks.get(&(i, k.clone())).copied().unwrap_or(Standing::Unknown);
                row.push_str(&estimate_cell(r.estimates.get(k), st));
            }
            for k in LOSS_COLUMNS {
                let v = s.values(k);
                let cell = match (v.len(), s.value(k)) {
                    (_, None) => num_cell(None),
                    (n, Some(m)) if n >= 2 => {
                        let t = crate::eval::stats::t_interval(&v, boot.level);
                        estimate_cell(
                            Some(&Estimate {
                                value: m,
                                low: t.map(|t| t.low),
                                high: t.map(|t| t.high),
                                how: String::new(),
                            }),
                            Standing::Unknown,
                        )
                    }
                    (_, Some(m)) => num_cell(Some(m)),
                };
                row.push_str(&cell);
            }
            let e0 = r.entries.first();
            row.push_str(&td(&e0.map_or("?".into(), |e| e.encoder.clone())));
            row.push_str(&td(&e0.map_or("?".into(), |e| e.projector.clone())));
            row.push_str(&match e0.and_then(|e| e.lora_rank) {
                Some(x) => format!("<td class=\"n\" data-v=\"{x}\">{x}</td>"),
                None => num_cell(None),
            });
            let seeds: Vec<String> = s
                .runs
                .iter()
                .map(|run| run.experiment.as_ref().map_or("?".into(), |e| e.seed.to_string()))
                .collect();
            row.push_str(&td(&seeds.join(", ")));
            row.push_str(&if s.is_group() {
                format!("<td class=\"muted\">{} runs</td>", s.runs.len())
            } else {
                td(first.id())
            });
            row.push_str(&td(&e0.map_or("?".into(), |e| commit(&e.summary))));
            let done = s.runs.iter().filter(|x| x.summary.status == "completed").count();
            row.push_str(&if s.is_group() && done < s.runs.len() {
                format!("<td>{}</td>", badge(&format!("{done}/{} completed", s.runs.len())))
            } else {
                format!("<td>{}</td>", badge(&first.summary.status))
            });
            row.push_str(&match r.mean(|e| e.time_s) {
                Some(t) => format!(
                    "<td class=\"n\" data-v=\"{t}\">{}</td>",
                    esc(&runs::human_age(t))
                ),
                None => num_cell(None),
            });
            if slurm {
                let mut on: Vec<&str> = r.entries.iter().map(|e| e.ran_on.as_str()).collect();
                on.dedup();
                row.push_str(&td(&on.join(", ")));
            }
            row.push_str(&num_cell(r.mean(|e| e.tokens_per_s)));
            // The other eval metrics (BLEU-1..3, ROUGE-L, per-type accuracies), folded.
            let rest: Vec<String> = subjects::ordered(r.estimates.keys().cloned())
                .into_iter()
                .filter(|k| !is_headline_key(k))
                .map(|k| {
                    let e = &r.estimates[&k];
                    format!(
                        "{}{}<td class=\"n ci\">{}</td>",
                        td(&k),
                        num_cell(Some(e.value)),
                        esc(&sections::interval_text(e.low, e.high))
                    )
                })
                .collect();
            row.push_str(&if rest.is_empty() {
                "<td class=\"muted\">-</td>".to_string()
            } else {
                format!(
                    "<td><details><summary>{} metrics</summary>{}</details></td>",
                    rest.len(),
                    table("more", &["metric", "value", "95% interval"], &rest)
                )
            });
            row
        })
        .collect();
    let mut header: Vec<String> = vec!["#".into(), "name".into()];
    header.extend(headline.iter().cloned());
    header.extend(LOSS_COLUMNS.iter().map(|s| s.to_string()));
    for h in [
        "encoder",
        "projector",
        "LoRA rank",
        "seeds",
        "id",
        "commit",
        "status",
        "time",
    ] {
        header.push(h.into());
    }
    if slurm {
        header.push(RAN_ON.into());
    }
    header.push("tokens/s (mean)".into());
    header.push("more eval metrics".into());
    let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    // The headline metrics per row, with their intervals, above the table.
    let charts: Vec<IntervalChart> = headline
        .iter()
        .map(|k| IntervalChart {
            id: super::figures::slug(k),
            title: format!("{k} (95% intervals)"),
            x_label: k.clone(),
            rows: rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let e = r.estimates.get(k)?;
                    let st = marks
                        .get(&(i, k.clone()))
                        .copied()
                        .unwrap_or(Standing::Unknown);
                    Some(IntervalRow {
                        label: format!("#{} {}", i + 1, label(r)),
                        value: e.value,
                        interval: e.low.zip(e.high),
                        color: st.color(),
                    })
                })
                .collect(),
        })
        .collect();
    let charts_html = if charts.is_empty() {
        String::new()
    } else {
        sections::charts(&charts, &reports_dir.join("index-charts"), "index-charts/")?
    };
    let runs_total: usize = rows.iter().map(|r| r.subject.runs.len()).sum();
    let groups_total = rows.iter().filter(|r| r.subject.is_group()).count();
    let body = format!(
        "<h1>Leaderboard</h1><p class=\"muted\">{runs_total} runs in {root}{grouped}; ranked \
         by stage-2 validation loss, click a column to sort. Eval metrics carry 95% intervals: \
         a percentile bootstrap over a run's scored items, or Student t over a group's seeds. \
         Against the best row on each headline metric: <b>★</b> best, <b>≈</b> within noise \
         (the interval of the difference includes 0), <b>▼</b> significantly below (paired \
         bootstrap over the items both runs scored; t over seeds for groups); no mark: no \
         interval (a run made before per-item results were kept).</p>{charts_html}{table}",
        root = esc(&store.root.display().to_string()),
        grouped = if groups_total > 0 {
            format!(", {groups_total} of them groups of seeds (one row each)")
        } else {
            String::new()
        },
        table = if rows.is_empty() {
            "<p class=\"muted\">No runs yet.</p>".to_string()
        } else {
            table("leaderboard sortable", &header, &html_rows)
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

#[cfg(test)]
mod tests {
    use super::bench_headline;

    #[test]
    fn benchmark_headlines_leave_out_breakdowns_and_bookkeeping() {
        for k in [
            "stage2/eval/bench/pope/accuracy",
            "stage2/eval/bench/pope/f1",
            "stage2/eval/bench/mme/perception",
        ] {
            assert!(bench_headline(k), "{k}");
        }
        for k in [
            "stage2/eval/bench/pope/adversarial/f1",
            "stage2/eval/bench/gqa/n",
            "stage2/eval/bench/gqa/samples_per_s",
            "stage2/eval/bench/gqa/missing_images",
            "stage2/eval/qa_acc",
            "stage2/train/bench/pope/accuracy",
        ] {
            assert!(!bench_headline(k), "{k}");
        }
    }
}
