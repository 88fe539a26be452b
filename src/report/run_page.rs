//! `results/<run>/report.html`: one run, with its charts also written to `charts/*.png`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::data::RunData;
use super::figures::{self, ChartOptions};
use super::html::{esc, page};
use super::sections;
use crate::store::Store;

/// Writes `report.html` and `charts/*.png` into the run's folder and returns the HTML path.
/// Works on runs in any state: a failed or running run shows what it has so far.
pub fn write(store: &Store, id: &str, o: &ChartOptions) -> Result<PathBuf> {
    let r = RunData::load(store, id).with_context(|| format!("cannot read run {id}"))?;
    let dir = store.run_dir(id);
    let charts = figures::run_charts(&r.curves, o);
    let body = format!(
        "<h1>{name}</h1><p class=\"muted\">{id} &middot; <a href=\"{index}\">all runs</a></p>\
         <h2>Status</h2>{status}\
         <h2>Curves</h2><p class=\"muted\">Faint: raw values (downsampled, extremes kept); \
         solid: smoothed ({smoothing}).</p>{charts}\
         <h2>Final metrics</h2>{metrics}\
         <h2>Data: skipped and truncated</h2>{counts}\
         <h2>Samples</h2>{samples}\
         <h2>Provenance</h2>{prov}\
         <h2>Config</h2>{config}",
        name = esc(&r.summary.name),
        id = esc(id),
        index = super::html::href(&sections::relative(
            &dir,
            &super::default_reports_dir(&store.root).join("index.html")
        )),
        status = sections::status(&r),
        smoothing = esc(&o.smoothing.label()),
        charts = sections::charts(&charts, &dir.join("charts"), "charts/")?,
        metrics = sections::final_metrics(&r),
        counts = sections::counts(&r),
        samples = sections::samples(&[&r], store),
        prov = sections::provenance(&[&r]),
        config = sections::config(&r),
    );
    let out = dir.join("report.html");
    crate::fsutil::write_atomic(
        &out,
        page(&format!("{} ({id})", r.summary.name), &body).as_bytes(),
    )?;
    Ok(out)
}
