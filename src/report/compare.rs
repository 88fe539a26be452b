//! `harness compare`: several runs, or groups of seeds, on one page: whether each eval
//! metric's difference is real (the delta with its 95% interval: paired bootstrap over
//! the items two runs share, t over the seeds of groups), the config keys that differ,
//! overlaid curves in fixed colours (a group's mean over its min/max band), final metrics
//! with deltas against the first, provenance and samples side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use super::chart;
use super::data::RunData;
use super::figures::{self, ChartOptions};
use super::html::{badge, esc, href, num, num_cell, page, table, td};
use super::sections;
use super::subjects::{self, Comparison, Subject};
use crate::eval::intervals::is_headline_key;
use crate::eval::stats::Bootstrap;
use crate::store::Store;

/// Where the page goes and how it is drawn.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Explicit HTML path; default `<reports>/compare-<a>-vs-<b>.html`.
    pub out: Option<PathBuf>,
    /// The reports folder (default: `reports/` beside the results folder).
    pub reports_dir: Option<PathBuf>,
    pub charts: ChartOptions,
    pub bootstrap: Bootstrap,
}

/// One metric's difference between the first subject (`a`) and another (`b`), as
/// `compare --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDelta {
    pub metric: String,
    pub a_name: String,
    pub b_name: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub delta: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// `null` when there is no interval (no per-item data, a single seed).
    pub significant: Option<bool>,
    /// How the interval was made, or why there is none.
    pub how: String,
}

fn resolve_all(store: &Store, refs: &[String]) -> Result<Vec<Subject>> {
    if refs.len() < 2 {
        bail!("compare needs at least two runs, got {}", refs.len());
    }
    refs.iter().map(|r| subjects::resolve(store, r)).collect()
}

/// Every eval metric of each subject after the first against the first: `b - a` with its
/// interval and whether it is significant (what `compare --json` prints).
pub fn deltas(store: &Store, refs: &[String], o: &Bootstrap) -> Result<Vec<MetricDelta>> {
    let subs = resolve_all(store, refs)?;
    let labels = labels(&subs);
    let mut out = vec![];
    for (j, b) in subs.iter().enumerate().skip(1) {
        for c in subjects::compare(&subs[0], b, o) {
            out.push(MetricDelta {
                metric: c.metric,
                a_name: labels[0].clone(),
                b_name: labels[j].clone(),
                a: c.a,
                b: c.b,
                delta: c.delta,
                low: c.low,
                high: c.high,
                significant: c.significant,
                how: c.how,
            });
        }
    }
    Ok(out)
}

/// Resolves each reference (id, group name, experiment name or prefix; errors list
/// candidates), then writes the page and its PNGs (in `<stem>-charts/` beside it).
/// Returns the HTML path.
pub fn write(store: &Store, refs: &[String], o: &CompareOptions) -> Result<PathBuf> {
    let subs = resolve_all(store, refs)?;
    let labels = labels(&subs);
    let out = match &o.out {
        Some(p) => p.clone(),
        None => o
            .reports_dir
            .clone()
            .unwrap_or_else(|| super::default_reports_dir(&store.root))
            .join(format!(
                "compare-{}.html",
                figures::slug(&labels.join("-vs-"))
            )),
    };
    let folder = out.parent().unwrap_or(Path::new(".")).to_path_buf();
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or("compare".into());
    let png_dir = folder.join(format!("{stem}-charts"));

    // A group is drawn as its mean curve over the band of its runs.
    let drawn: Vec<(Vec<super::series::Curve>, Vec<super::series::Band>)> = subs
        .iter()
        .map(|s| {
            if s.is_group() {
                let cs: Vec<&[super::series::Curve]> =
                    s.runs.iter().map(|r| r.curves.as_slice()).collect();
                super::series::aggregate(&cs)
            } else {
                (s.first().curves.clone(), vec![])
            }
        })
        .collect();
    let named: Vec<(String, &[super::series::Curve], &[super::series::Band])> = labels
        .iter()
        .zip(&drawn)
        .map(|(l, (c, b))| (l.clone(), c.as_slice(), b.as_slice()))
        .collect();
    let charts = figures::compare_charts_banded(&named, &o.charts);
    let all_runs: Vec<&RunData> = subs.iter().flat_map(|s| s.runs.iter()).collect();
    let firsts: Vec<&RunData> = subs.iter().map(|s| s.first()).collect();
    let body = format!(
        "<h1>Compare: {title}</h1>\
         <h2>Runs</h2>{runs_table}{across}\
         <h2>Is the difference real?</h2>{differences}\
         <h2>Config differences</h2>{diff}\
         <h2>Curves</h2><p class=\"muted\">Faint: raw values (downsampled, extremes kept); \
         solid: smoothed ({smoothing}); a group's line is the mean of its runs over the band \
         of their lowest and highest values. Colours are fixed per run as listed above.</p>{charts}\
         {bench}\
         <h2>Final metrics</h2><p class=\"muted\">Last logged value (a group's mean over its \
         seeds); deltas against {first}.</p>{metrics}\
         <h2>Samples</h2>{samples}\
         <h2>Provenance</h2>{prov}",
        title = esc(&labels.join(" vs ")),
        runs_table = runs_table(&subs, &labels, &folder, store),
        across = sections::across_code_notes(&all_runs),
        differences = differences(&subs, &labels, &o.bootstrap),
        diff = config_diff(&firsts, &labels),
        smoothing = esc(&o.charts.smoothing.label()),
        charts = sections::charts(&charts, &png_dir, &format!("{stem}-charts/"))?,
        first = esc(&labels[0]),
        bench = bench_table(&subs, &labels),
        metrics = metrics_table(&subs, &labels),
        samples = sections::samples(&firsts, store),
        prov = sections::provenance(&all_runs),
    );
    crate::fsutil::write_atomic(
        &out,
        page(&format!("compare {}", labels.join(" vs ")), &body).as_bytes(),
    )?;
    Ok(out)
}

/// Legend names: experiment (or group) names, or ids where names repeat.
fn labels(subs: &[Subject]) -> Vec<String> {
    let names: Vec<&str> = subs.iter().map(|s| s.label.as_str()).collect();
    let unique = names.iter().collect::<BTreeSet<_>>().len() == names.len();
    subs.iter()
        .map(|s| {
            if unique {
                s.label.clone()
            } else if s.is_group() {
                format!("{} ({} seeds)", s.label, s.runs.len())
            } else {
                s.first().id().to_string()
            }
        })
        .collect()
}

fn signed(v: f64) -> String {
    format!("{}{}", if v > 0.0 { "+" } else { "" }, num(v))
}

/// The rows of one comparison table.
fn comparison_rows(cs: &[&Comparison]) -> Vec<String> {
    cs.iter()
        .map(|c| {
            let delta = match c.delta {
                Some(d) => format!("<td class=\"n\" data-v=\"{d}\">{}</td>", esc(&signed(d))),
                None => num_cell(None),
            };
            let interval = match (c.low, c.high) {
                (Some(l), Some(h)) => format!(
                    "<td class=\"n ci\">[{}, {}]</td>",
                    esc(&signed(l)),
                    esc(&signed(h))
                ),
                _ => "<td class=\"muted\">-</td>".into(),
            };
            let class = match c.significant {
                Some(true) => "sig",
                Some(false) => "noise",
                None => "muted",
            };
            format!(
                "{}{}{}{delta}{interval}<td class=\"verdict {class}\">{}</td><td class=\"muted\">{}</td>",
                td(&c.metric),
                num_cell(c.a),
                num_cell(c.b),
                esc(c.verdict()),
                esc(&c.how)
            )
        })
        .collect()
}

/// Per subject after the first: each eval metric's difference to the first with its 95%
/// interval and verdict; headline metrics shown, the rest folded away.
fn differences(subs: &[Subject], labels: &[String], o: &Bootstrap) -> String {
    let mut s = String::new();
    for e in subs.iter().flat_map(|x| &x.items_errors) {
        let _ = write!(s, "<p class=\"err\">items unreadable: {}</p>", esc(e));
    }
    let _ = write!(
        s,
        "<p class=\"muted\">Δ = each run minus {first}. 95% intervals: between two runs a paired \
         bootstrap over the items both scored ({n} resamples: the same images and questions \
         are drawn for both, CIDEr recomputed on each resample); with a group of seeds, t over \
         the seeds. <b>significant</b>: the interval excludes 0; <b>within noise</b>: it \
         does not. Runs made before per-item results were kept have no interval.</p>",
        first = esc(&labels[0]),
        n = o.resamples
    );
    for (j, b) in subs.iter().enumerate().skip(1) {
        let cs = subjects::compare(&subs[0], b, o);
        if cs.is_empty() {
            let _ = write!(
                s,
                "<p class=\"muted\">{} vs {}: no eval metrics to compare.</p>",
                esc(&labels[j]),
                esc(&labels[0])
            );
            continue;
        }
        let header = [
            "metric",
            labels[0].as_str(),
            labels[j].as_str(),
            "Δ",
            "95% interval of Δ",
            "verdict",
            "how",
        ];
        let (head, rest): (Vec<&Comparison>, Vec<&Comparison>) =
            cs.iter().partition(|c| is_headline_key(&c.metric));
        if subs.len() > 2 {
            let _ = write!(s, "<h3>{} vs {}</h3>", esc(&labels[j]), esc(&labels[0]));
        }
        s.push_str(&table("delta sortable", &header, &comparison_rows(&head)));
        if !rest.is_empty() {
            let _ = write!(
                s,
                "<details><summary>{} more metrics (BLEU-1..3, ROUGE-L, per question type)</summary>{}</details>",
                rest.len(),
                table("delta sortable", &header, &comparison_rows(&rest))
            );
        }
    }
    s
}

fn swatch(i: usize) -> String {
    let (r, g, b) = chart::color(i);
    format!("<span class=\"swatch\" style=\"background:rgb({r},{g},{b})\"></span>")
}

fn runs_table(subs: &[Subject], labels: &[String], folder: &Path, store: &Store) -> String {
    let rows: Vec<String> = subs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.runs.iter().map(move |r| (i, s, r)))
        .map(|(i, s, r)| {
            let report = store.run_dir(r.id()).join("report.html");
            let link = if report.exists() {
                format!("<a href=\"{}\">{}</a>", href(&sections::relative(folder, &report)), esc(r.id()))
            } else {
                esc(r.id())
            };
            let error = r.status.error.as_deref().unwrap_or("");
            let label = if s.is_group() {
                format!(
                    "{} (seed {})",
                    labels[i],
                    r.experiment.as_ref().map_or("?".into(), |e| e.seed.to_string())
                )
            } else {
                labels[i].clone()
            };
            format!(
                "<td>{}{}</td><td>{link}</td><td>{}</td>{}<td class=\"n\">{}</td>{}<td class=\"err\">{}</td>",
                swatch(i),
                esc(&label),
                badge(&r.summary.status),
                td(&format!("{}{}", short(&r.summary.commit), if r.summary.dirty { " (dirty)" } else { "" })),
                r.rows,
                td(&r.duration_s().map(crate::store::runs::human_age).unwrap_or("-".into())),
                esc(error)
            )
        })
        .collect();
    table(
        "runs",
        &[
            "run",
            "id",
            "status",
            "commit",
            "metric rows",
            "time",
            "error",
        ],
        &rows,
    )
}

fn short(commit: &str) -> String {
    commit.chars().take(7).collect()
}

/// Config keys whose values are not the same in every run (a group's first run stands
/// for it: its runs differ only in the seed).
fn config_diff(runs: &[&RunData], labels: &[String]) -> String {
    let flat: Vec<Option<BTreeMap<String, String>>> = runs
        .iter()
        .map(|r| {
            r.experiment.as_ref().map(|e| {
                let mut m = BTreeMap::new();
                crate::config::flatten("", &crate::config::canonical(e), &mut m);
                m
            })
        })
        .collect();
    let keys: BTreeSet<&String> = flat.iter().flatten().flat_map(|m| m.keys()).collect();
    let rows: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let vals: Vec<String> = flat
                .iter()
                .map(|m| match m {
                    Some(m) => m.get(k).cloned().unwrap_or_else(|| "-".into()),
                    None => "?".into(),
                })
                .collect();
            if vals.iter().all(|v| *v == vals[0]) {
                return None;
            }
            let mut row = format!("<th>{}</th>", esc(k));
            for v in &vals {
                row.push_str(&td(v));
            }
            Some(row)
        })
        .collect();
    let mut s = String::new();
    for r in runs.iter().filter(|r| r.experiment.is_none()) {
        let _ = write!(
            s,
            "<p class=\"err\">{}: run.toml missing or unreadable</p>",
            esc(r.id())
        );
    }
    if rows.is_empty() {
        s.push_str("<p class=\"muted\">The configs are identical.</p>");
        return s;
    }
    let mut header = vec!["key"];
    header.extend(labels.iter().map(|l| l.as_str()));
    s.push_str(&table("diff", &header, &rows));
    s
}

/// The benchmarks' headline scores, one row per run or group (a group's mean) and one
/// column per score (as on the leaderboard); nothing when no run has any.
fn bench_table(subs: &[Subject], labels: &[String]) -> String {
    let keys: BTreeSet<&String> = subs
        .iter()
        .flat_map(|s| s.runs.iter().flat_map(|r| r.summary.metrics.keys()))
        .filter(|k| super::leaderboard::bench_headline(k))
        .collect();
    if keys.is_empty() {
        return String::new();
    }
    let mut header = vec!["run".to_string()];
    header.extend(keys.iter().map(|k| {
        // `stage2/eval/bench/pope/f1` -> `pope/f1`.
        k.splitn(4, '/').nth(3).unwrap_or(k).to_string()
    }));
    let rows: Vec<String> = subs
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (s, l))| {
            let mut row = format!("<td>{}{}</td>", swatch(i), esc(l));
            for k in &keys {
                row.push_str(&num_cell(s.value(k)));
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    format!(
        "<h2>Benchmarks</h2>{}",
        table("bench sortable", &header, &rows)
    )
}

/// Every metric's last value per subject (a group's mean); from the second on, the
/// absolute and relative difference to the first.
fn metrics_table(subs: &[Subject], labels: &[String]) -> String {
    let keys: BTreeSet<&String> = subs
        .iter()
        .flat_map(|s| s.runs.iter().flat_map(|r| r.summary.metrics.keys()))
        .collect();
    if keys.is_empty() {
        return "<p class=\"muted\">No metrics recorded.</p>".into();
    }
    // Runs are named by id (a group by its name), as the runs table lists them.
    let name = |i: usize| {
        if subs[i].is_group() {
            labels[i].clone()
        } else {
            subs[i].first().id().to_string()
        }
    };
    let mut header: Vec<String> = vec!["metric".into(), name(0)];
    for i in 1..subs.len() {
        header.push(name(i));
        header.push("Δ".into());
        header.push("Δ %".into());
    }
    let values: Vec<BTreeMap<&String, f64>> = subs
        .iter()
        .map(|s| {
            keys.iter()
                .filter_map(|k| Some((*k, s.value(k)?)))
                .collect()
        })
        .collect();
    let rows: Vec<String> = keys
        .iter()
        .map(|k| {
            let base = values[0].get(k).copied();
            let mut row = format!("{}{}", td(k), num_cell(base));
            for v in &values[1..] {
                let v = v.get(k).copied();
                row.push_str(&num_cell(v));
                match (base, v) {
                    (Some(b), Some(v)) => {
                        let d = v - b;
                        // No colour: whether up is better depends on the metric.
                        let _ = write!(
                            row,
                            "<td class=\"n\" data-v=\"{d}\">{}{}</td>",
                            if d > 0.0 { "+" } else { "" },
                            num(d)
                        );
                        if b != 0.0 {
                            let rel = d / b.abs() * 100.0;
                            let _ =
                                write!(row, "<td class=\"n\" data-v=\"{rel}\">{:+.2}%</td>", rel);
                        } else {
                            row.push_str("<td class=\"n\" data-v=\"\">-</td>");
                        }
                    }
                    _ => row.push_str(
                        "<td class=\"n\" data-v=\"\">-</td><td class=\"n\" data-v=\"\">-</td>",
                    ),
                }
            }
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    table("metrics sortable", &header, &rows)
}
