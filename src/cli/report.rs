//! `harness report [RUN]`: one run's report, or, with no run, the leaderboard of all runs
//! (HTML page, or Markdown / CSV on stdout).

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::report::{self, leaderboard, ChartOptions, Smoothing};
use crate::store::Store;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run id, unique id prefix, or experiment name (its latest run). Without it: the
    /// leaderboard of every run.
    pub run: Option<String>,
    /// Leaderboard output: an HTML page in the reports folder, or a table on stdout.
    #[arg(long, value_enum, default_value = "html")]
    pub format: Format,
    #[command(flatten)]
    pub charts: ChartArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Html,
    Md,
    Csv,
}

/// Options shared by `report` and `compare`.
#[derive(Args, Debug)]
pub struct ChartArgs {
    /// Reports folder (default: `reports/` beside the results folder).
    #[arg(long, env = "HARNESS_REPORTS")]
    pub reports: Option<PathBuf>,
    /// Curve smoothing: auto, ema[:WEIGHT], ma[:WINDOW] or none.
    #[arg(long, default_value = "auto")]
    pub smoothing: Smoothing,
    /// Log-scale y axis for loss and perplexity.
    #[arg(long)]
    pub log_y: bool,
}

impl ChartArgs {
    pub fn options(&self) -> ChartOptions {
        ChartOptions {
            smoothing: self.smoothing,
            log_y: self.log_y,
            ..ChartOptions::default()
        }
    }

    pub fn reports_dir(&self, results: &Path) -> PathBuf {
        self.reports
            .clone()
            .unwrap_or_else(|| report::default_reports_dir(results))
    }
}

pub fn report(results: &Path, a: ReportArgs) -> anyhow::Result<()> {
    let store = Store::new(results);
    let o = a.charts.options();
    match (&a.run, a.format) {
        (Some(r), Format::Html) => {
            let id = store.resolve(r)?;
            println!(
                "{}",
                report::write_run_report_with(&store, &id, &o)?.display()
            );
        }
        (Some(_), _) => anyhow::bail!("--format md|csv is for the leaderboard (no RUN)"),
        (None, Format::Html) => {
            let dir = a.charts.reports_dir(results);
            println!("{}", leaderboard::write(&store, &dir, &o)?.display());
        }
        (None, Format::Md) => print!("{}", leaderboard::markdown(&leaderboard::entries(&store)?)),
        (None, Format::Csv) => print!("{}", leaderboard::csv(&leaderboard::entries(&store)?)),
    }
    Ok(())
}
