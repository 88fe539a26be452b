//! Reports: static, self-contained HTML pages (charts inlined as SVG, PNGs beside them for
//! slides) that open from disk, attach to a mail or a CI artifact.
//!
//! - [`write_run_report`]: `results/<run>/report.html` + `charts/*.png`, called when a run
//!   ends and by `harness report RUN`;
//! - [`compare::write`]: `harness compare A B ...`;
//! - [`leaderboard`]: `harness report` with no run (`reports/index.html`, Markdown, CSV).
//!
//! Pieces: `series` (grouping, smoothing, downsampling, a group's mean and band), `chart`
//! (plotters, embedded font; line charts and interval charts), `figures` (which charts,
//! units), `html` (escaping, page), `sections`, `data`, `subjects` (a run or a group of
//! seeds, each eval metric with its interval, differences with a verdict).

pub mod chart;
pub mod compare;
pub mod data;
pub mod figures;
pub mod html;
pub mod leaderboard;
pub mod run_page;
pub mod sections;
pub mod series;
pub mod subjects;

use std::path::{Path, PathBuf};

use anyhow::Result;

pub use compare::CompareOptions;
pub use figures::ChartOptions;
pub use series::Smoothing;

use crate::store::Store;

/// Writes `results/<id>/report.html` and `results/<id>/charts/*.png` with the default
/// chart options and returns the HTML path. Any run state works (a failed or running run
/// shows what it has). The training code calls this when a run ends.
pub fn write_run_report(store: &Store, id: &str) -> Result<PathBuf> {
    run_page::write(store, id, &ChartOptions::default())
}

/// [`write_run_report`] with chart options (smoothing, log scale).
pub fn write_run_report_with(store: &Store, id: &str, o: &ChartOptions) -> Result<PathBuf> {
    run_page::write(store, id, o)
}

/// `reports/` beside the results folder (`results` -> `reports`, `/x/results` ->
/// `/x/reports`).
pub fn default_reports_dir(results: &Path) -> PathBuf {
    results.parent().unwrap_or(Path::new("")).join("reports")
}
