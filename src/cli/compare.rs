//! `harness compare A B [C ...]`: one page comparing runs; prints its path.

use std::path::{Path, PathBuf};

use clap::Args;

use super::report::ChartArgs;
use crate::report::{compare, CompareOptions};
use crate::store::Store;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Runs (ids, unique id prefixes, or experiment names); the first is the baseline
    /// the deltas are computed against.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<String>,
    /// HTML file to write (default: <reports>/compare-<a>-vs-<b>.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub charts: ChartArgs,
}

pub fn compare(results: &Path, a: CompareArgs) -> anyhow::Result<()> {
    let store = Store::new(results);
    let o = CompareOptions {
        out: a.out,
        reports_dir: Some(a.charts.reports_dir(results)),
        charts: a.charts.options(),
    };
    println!("{}", compare::write(&store, &a.runs, &o)?.display());
    Ok(())
}
