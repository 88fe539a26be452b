//! Rendering cost: comparing runs with 100k metric rows each. Prints the time (run with
//! `--nocapture`); no time is asserted, machines differ.

use std::time::{Duration, Instant};

use harness::report::{compare, CompareOptions};
use harness::store::metrics::MetricsWriter;
use harness::store::Store;

use crate::report_pages::{parse, sel, two_runs};

#[test]
fn compare_runs_with_100k_rows_each() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    for (k, run) in [&ia, &ib].into_iter().enumerate() {
        let mut w = MetricsWriter::new(
            &store.run_dir(run).join("metrics"),
            run,
            Duration::from_secs(3600),
        )
        .unwrap();
        // 20k steps x 5 metrics = 100k rows (stage 1 of beta is alpha's, so beta's own
        // rows are all stage 2).
        for step in 1..=20_000u64 {
            let s = step as f64;
            let noise = ((s * 12.9898).sin() * 43758.5453).fract() * 0.1;
            for (m, v) in [
                ("loss", 3.0 / (1.0 + s / 500.0) + noise + k as f64 * 0.05),
                ("lr", 2e-4 * (1.0 - s / 20_000.0)),
                ("grad_norm", 1.0 + noise),
                ("tokens_per_s", 5000.0 + 100.0 * noise),
                ("step_time_s", 0.5 + noise),
            ] {
                w.log("stage2", "train", step, s / 20_000.0, m, v).unwrap();
            }
        }
        w.flush().unwrap();
        harness::store::metrics::compact(&store.run_dir(run).join("metrics")).unwrap();
    }
    let store = Store::new(&store.root);
    let t = Instant::now();
    let path = compare::write(
        &store,
        &[ia.clone(), ib.clone()],
        &CompareOptions::default(),
    )
    .unwrap();
    let elapsed = t.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "compare of 2 runs x 100k+ metric rows: {:.2} s, page {} KiB",
        elapsed.as_secs_f64(),
        size / 1024
    );
    let doc = parse(&path);
    assert!(doc
        .select(&sel("#chart-stage2-train-loss svg"))
        .next()
        .is_some());
    assert!(doc
        .select(&sel("#chart-stage2-train-grad_norm svg"))
        .next()
        .is_some());
    // For screenshots (scripts/screenshot.sh): keep the store and its pages.
    if std::env::var_os("HARNESS_KEEP_REPORT_DEMO").is_some() {
        harness::report::leaderboard::write(&store, &d.path().join("reports"), &Default::default())
            .unwrap();
        eprintln!("kept {}", d.keep().display());
    }
}
