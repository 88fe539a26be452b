//! `harness compare`: several runs on one page: the config keys that differ, overlaid
//! curves in fixed colours, final metrics with deltas against the first run, provenance
//! and samples side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::chart;
use super::data::RunData;
use super::figures::{self, ChartOptions};
use super::html::{badge, esc, href, num, num_cell, page, table, td};
use super::sections;
use crate::store::Store;

/// Where the page goes and how it is drawn.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Explicit HTML path; default `<reports>/compare-<a>-vs-<b>.html`.
    pub out: Option<PathBuf>,
    /// The reports folder (default: `reports/` beside the results folder).
    pub reports_dir: Option<PathBuf>,
    pub charts: ChartOptions,
}

/// Resolves each reference (id, prefix or name; errors list candidates), then writes the
/// page and its PNGs (in `<stem>-charts/` beside it). Returns the HTML path.
pub fn write(store: &Store, refs: &[String], o: &CompareOptions) -> Result<PathBuf> {
    if refs.len() < 2 {
        bail!("compare needs at least two runs, got {}", refs.len());
    }
    let ids = refs
        .iter()
        .map(|r| store.resolve(r))
        .collect::<Result<Vec<_>>>()?;
    let runs = ids
        .iter()
        .map(|id| RunData::load(store, id))
        .collect::<Result<Vec<_>>>()?;
    let labels = labels(&runs);
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

    let named: Vec<(String, &[super::series::Curve])> = labels
        .iter()
        .zip(&runs)
        .map(|(l, r)| (l.clone(), r.curves.as_slice()))
        .collect();
    let charts = figures::compare_charts(&named, &o.charts);
    let refs: Vec<&RunData> = runs.iter().collect();
    let body = format!(
        "<h1>Compare: {title}</h1>\
         <h2>Runs</h2>{runs_table}{across}\
         <h2>Config differences</h2>{diff}\
         <h2>Curves</h2><p class=\"muted\">Faint: raw values (downsampled, extremes kept); \
         solid: smoothed ({smoothing}). Colours are fixed per run as listed above.</p>{charts}\
         <h2>Final metrics</h2><p class=\"muted\">Last logged value; deltas against {first}.</p>{metrics}\
         <h2>Samples</h2>{samples}\
         <h2>Provenance</h2>{prov}",
        title = esc(&labels.join(" vs ")),
        runs_table = runs_table(&runs, &labels, &folder, store),
        across = sections::across_code_notes(&refs),
        diff = config_diff(&runs),
        smoothing = esc(&o.charts.smoothing.label()),
        charts = sections::charts(&charts, &png_dir, &format!("{stem}-charts/"))?,
        first = esc(&labels[0]),
        metrics = metrics_table(&runs),
        samples = sections::samples(&refs, store),
        prov = sections::provenance(&refs),
    );
    crate::fsutil::write_atomic(
        &out,
        page(&format!("compare {}", labels.join(" vs ")), &body).as_bytes(),
    )?;
    Ok(out)
}

/// Legend names: experiment names, or ids where names repeat.
fn labels(runs: &[RunData]) -> Vec<String> {
    let names: Vec<&str> = runs.iter().map(|r| r.summary.name.as_str()).collect();
    let unique = names.iter().collect::<BTreeSet<_>>().len() == names.len();
    runs.iter()
        .map(|r| {
            if unique {
                r.summary.name.clone()
            } else {
                r.id().to_string()
            }
        })
        .collect()
}

fn swatch(i: usize) -> String {
    let (r, g, b) = chart::color(i);
    format!("<span class=\"swatch\" style=\"background:rgb({r},{g},{b})\"></span>")
}

fn runs_table(runs: &[RunData], labels: &[String], folder: &Path, store: &Store) -> String {
    let rows: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let report = store.run_dir(r.id()).join("report.html");
            let link = if report.exists() {
                format!("<a href=\"{}\">{}</a>", href(&sections::relative(folder, &report)), esc(r.id()))
            } else {
                esc(r.id())
            };
            let error = r.status.error.as_deref().unwrap_or("");
            format!(
                "<td>{}{}</td><td>{link}</td><td>{}</td>{}<td class=\"n\">{}</td>{}<td class=\"err\">{}</td>",
                swatch(i),
                esc(&labels[i]),
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

/// Config keys whose values are not the same in every run.
fn config_diff(runs: &[RunData]) -> String {
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
    header.extend(runs.iter().map(|r| r.id()));
    s.push_str(&table("diff", &header, &rows));
    s
}

/// Every metric's last value per run; from the second run on, the absolute and relative
/// difference to the first.
fn metrics_table(runs: &[RunData]) -> String {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.summary.metrics.keys()).collect();
    if keys.is_empty() {
        return "<p class=\"muted\">No metrics recorded.</p>".into();
    }
    let mut header: Vec<String> = vec!["metric".into(), runs[0].id().into()];
    for r in &runs[1..] {
        header.push(r.id().into());
        header.push("Δ".into());
        header.push("Δ %".into());
    }
    let rows: Vec<String> = keys
        .into_iter()
        .map(|k| {
            let base = runs[0].summary.metrics.get(k).copied();
            let mut row = format!("{}{}", td(k), num_cell(base));
            for r in &runs[1..] {
                let v = r.summary.metrics.get(k).copied();
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
