//! `results/<run>/report.html`: one run, with its charts also written to `charts/*.png`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::figures::{self, ChartOptions};
use super::html::{esc, page};
use super::sections;
use super::subjects::Subject;
use crate::eval::stats::Bootstrap;
use crate::store::Store;

/// Writes `report.html` and `charts/*.png` into the run's folder and returns the HTML path.
/// Works on runs in any state: a failed or running run shows what it has so far. The page
/// leads with the results (eval metrics with 95% intervals, single values, the config in
/// brief, where the stages came from), then the gallery of samples, then the curves.
pub fn write(store: &Store, id: &str, o: &ChartOptions) -> Result<PathBuf> {
    let subject = Subject::run(store, id).with_context(|| format!("cannot read run {id}"))?;
    let r = subject.first();
    let dir = store.run_dir(id);
    let charts = figures::run_charts(&r.curves, o);
    let items_note = if subject.items_errors.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"err\">items unreadable: {}</p>",
            esc(&subject.items_errors.join("; "))
        )
    };
    let body = format!(
        "<h1>{name}</h1><p class=\"muted\">{id} &middot; <a href=\"{index}\">all runs</a></p>\
         <h2>Results</h2>{items_note}<p class=\"muted\">95% intervals: percentile bootstrap \
         over the scored items (images, questions; {n} resamples, CIDEr recomputed on each).</p>\
         {results}{single}<h3>Config in brief</h3>{brief}<h3>Stages</h3>{status}\
         <h2>Samples</h2>{samples}\
         <h2>Curves</h2><p class=\"muted\">Faint: raw values (downsampled, extremes kept); \
         solid: smoothed ({smoothing}).</p>{charts}\
         <h2>Final metrics</h2>{metrics}\
         <h2>Data: skipped and truncated</h2>{counts}\
         <h2>Provenance</h2>{prov}\
         <h2>Config</h2>{config}",
        name = esc(&r.summary.name),
        id = esc(id),
        index = super::html::href(&sections::relative(
            &dir,
            &super::default_reports_dir(&store.root).join("index.html")
        )),
        n = Bootstrap::default().resamples,
        results = sections::results(&subject.estimates(&Bootstrap::default())),
        single = sections::single_values(r),
        brief = sections::config_brief(r),
        status = sections::status(r),
        smoothing = esc(&o.smoothing.label()),
        charts = sections::charts(&charts, &dir.join("charts"), "charts/")?,
        metrics = sections::final_metrics(r),
        counts = sections::counts(r),
        samples = sections::samples(&[r], store),
        prov = sections::provenance(&[r]),
        config = sections::config(r),
    );
    let out = dir.join("report.html");
    crate::fsutil::write_atomic(
        &out,
        page(&format!("{} ({id})", r.summary.name), &body).as_bytes(),
    )?;
    Ok(out)
}
