//! `harness compare A B [C ...]`: one page comparing runs (or groups of seeds); prints its
//! path. `--json` prints each eval metric's difference with its interval instead.

use std::path::{Path, PathBuf};

use clap::Args;

use super::report::ChartArgs;
use crate::report::{compare, CompareOptions};
use crate::store::Store;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Runs (ids, group names, experiment names or unique id prefixes); the first is the
    /// baseline the deltas are computed against. A group name stands for every seed of it.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<String>,
    /// HTML file to write (default: <reports>/compare-<a>-vs-<b>.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print, per eval metric and run after the first, {metric, a, b, delta, low, high,
    /// significant, how} as JSON, and write no page.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub charts: ChartArgs,
}

pub fn compare(results: &Path, a: CompareArgs) -> anyhow::Result<()> {
    let store = Store::new(results);
    if a.json {
        let d = compare::deltas(&store, &a.runs, &Default::default())?;
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let o = CompareOptions {
        out: a.out,
        reports_dir: Some(a.charts.reports_dir(results)),
        charts: a.charts.options(),
        ..Default::default()
    };
    println!("{}", compare::write(&store, &a.runs, &o)?.display());
    Ok(())
}
