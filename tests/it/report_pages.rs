//! Reports: run report, compare page and leaderboard, parsed back as HTML.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::report::{self, compare, leaderboard, CompareOptions};
use harness::store::metrics::MetricsWriter;
use harness::store::{State, Store};
use scraper::{Html, Selector};

use crate::common::{experiment, harness, succeed, write};

pub const HOSTILE: &str = "<script>alert('x')</script>";

/// Two runs made by the real binary (the second reuses the first's stage 1), then given
/// the metrics training and evaluation will log: validation, throughput, memory, counters,
/// eval scores, and samples with hostile text.
pub fn two_runs(dir: &Path) -> (Store, String, String) {
    let results = dir.join("results");
    let steps = "[stage1]\nmax_steps = 40\n\n[stage2]\nmax_steps = 30\nlora_rank = ";
    let a = write(dir, "a.toml", &experiment("alpha", &format!("{steps}4\n")));
    let b = write(dir, "b.toml", &experiment("beta", &format!("{steps}16\n")));
    succeed(harness(dir, &results).arg("sweep").arg(&a).arg(&b));
    let store = Store::new(&results);
    let id = |name: &str| {
        store
            .run_ids()
            .unwrap()
            .into_iter()
            .find(|i| i.starts_with(name))
            .unwrap()
    };
    let (ia, ib) = (id("alpha"), id("beta"));
    for run in [&ia, &ib] {
        assert!(
            store.run_dir(run).join("report.html").exists(),
            "written when the run ended"
        );
    }
    let picture = dir.join("cat.png");
    image::RgbImage::from_pixel(400, 300, image::Rgb([200, 30, 30]))
        .save(&picture)
        .unwrap();
    for (k, run) in [&ia, &ib].into_iter().enumerate() {
        let mut w = MetricsWriter::new(
            &store.run_dir(run).join("metrics"),
            run,
            Duration::from_secs(3600),
        )
        .unwrap();
        for step in (10..=30).step_by(10) {
            w.log(
                "stage2",
                "val",
                step,
                0.0,
                "loss",
                2.0 / step as f64 + k as f64 * 0.1,
            )
            .unwrap();
        }
        for step in 1..=30 {
            w.log(
                "stage2",
                "train",
                step,
                0.0,
                "tokens_per_s",
                1000.0 + step as f64,
            )
            .unwrap();
            w.log(
                "stage2",
                "train",
                step,
                0.0,
                "peak_mem_bytes",
                3.0 * (1u64 << 30) as f64,
            )
            .unwrap();
        }
        w.log("stage2", "train", 30, 1.0, "skipped/too_long", 3.0)
            .unwrap();
        w.log("stage2", "train", 30, 1.0, "truncated", 7.0 + k as f64)
            .unwrap();
        // What training logs once per stage about its data.
        w.log("stage2", "data", 0, 0.0, "sequences", 500.0).unwrap();
        w.log("stage2", "data", 0, 0.0, "truncated_tokens", 12.0)
            .unwrap();
        for (m, v) in [("Bleu_4", 0.2), ("CIDEr", 0.9), ("qa_acc", 0.5)] {
            w.log("stage2", "eval", 30, 1.0, m, v + k as f64 * 0.05)
                .unwrap();
        }
        w.flush().unwrap();
        let samples = serde_json::json!([
            {"image": null, "prompt": "Describe the image.", "reference": HOSTILE,
             "output": format!("{HOSTILE} run {k}"), "stage": "stage2"},
            {"image": "missing.png", "prompt": "What colour?", "reference": ["red", "crimson"],
             "output": "red", "stage": "stage2"},
            {"image": picture, "prompt": "Caption this.", "reference": "a red square",
             "output": "a red box", "stage": "stage1"}
        ]);
        std::fs::write(store.run_dir(run).join("samples.json"), samples.to_string()).unwrap();
    }
    (store, ia, ib)
}

/// Marks a run failed with an error message (as a crash would leave it).
pub fn fail(store: &Store, id: &str, error: &str) {
    let mut s = store.read_status(id).unwrap();
    s.state = State::Failed;
    s.error = Some(error.into());
    harness::fsutil::write_json(&store.run_dir(id).join("status.json"), &s).unwrap();
}

pub fn parse(path: &Path) -> Html {
    Html::parse_document(&std::fs::read_to_string(path).unwrap())
}

pub fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn texts(doc: &Html, s: &str) -> Vec<String> {
    doc.select(&sel(s))
        .map(|e| e.text().collect::<String>().trim().to_string())
        .collect()
}

/// No script but the page's own sort script, and no element carrying an event handler.
fn assert_no_injection(doc: &Html) {
    let scripts: Vec<_> = doc.select(&sel("script")).collect();
    assert_eq!(scripts.len(), 1, "only the sort script");
    assert!(scripts[0].inner_html().contains("sortable"));
    for e in doc.select(&sel("*")) {
        for (name, _) in e.value().attrs() {
            assert!(!name.starts_with("on"), "event handler attribute {name}");
        }
    }
}

#[test]
fn run_report_has_every_part_and_escapes() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, _) = two_runs(d.path());
    // A hostile config value, as run.toml could carry one.
    let toml_path = store.run_dir(&ia).join("run.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    let text = text.replace(
        "template = \"phi\"",
        &format!("template = \"</pre>{HOSTILE}\""),
    );
    std::fs::write(&toml_path, text).unwrap();

    let path = report::write_run_report(&store, &ia).unwrap();
    assert_eq!(path, store.run_dir(&ia).join("report.html"));
    let doc = parse(&path);
    assert_eq!(texts(&doc, "h1"), ["alpha"]);

    // Charts inline as SVG with axes text, and as PNGs beside the page.
    let ids: Vec<String> = doc
        .select(&sel("figure.chart"))
        .map(|e| e.value().attr("id").unwrap().to_string())
        .collect();
    for want in [
        "chart-stage1-loss",
        "chart-stage2-loss",
        "chart-stage2-lr",
        "chart-stage2-tokens_per_s",
        "chart-stage2-peak_mem_bytes",
    ] {
        assert!(ids.contains(&want.to_string()), "{want} in {ids:?}");
    }
    // Single values (the eval scores, logged once) are a table at the top, not one-bar
    // charts; without per-item data they have no interval, and the page says so.
    assert!(
        !ids.iter()
            .any(|i| i.contains("caption_scores") || i.contains("qa_acc")),
        "{ids:?}"
    );
    let results: Vec<Vec<String>> = doc
        .select(&sel("table.results tbody tr"))
        .map(|r| r.select(&sel("td")).map(|c| c.text().collect()).collect())
        .collect();
    assert_eq!(
        results[2],
        [
            "stage2/eval/qa_acc",
            "0.5000",
            "-",
            "no per-item data: no interval"
        ]
    );
    let headings = texts(&doc, "h2");
    assert_eq!(
        headings[..3],
        ["Results", "Samples", "Curves"],
        "results lead, then the gallery"
    );
    let brief = texts(&doc, "table.brief td").join("|");
    assert!(
        brief.contains("builtin:v") && brief.contains("LoRA rank 4"),
        "{brief}"
    );
    assert_eq!(doc.select(&sel("figure.chart svg")).count(), ids.len());
    let svg_text = texts(&doc, "figure.chart text").join(" ");
    assert!(
        svg_text.contains("optimizer step") && svg_text.contains("peak memory (GiB)"),
        "{svg_text}"
    );
    for id in &ids {
        let png = store
            .run_dir(&ia)
            .join("charts")
            .join(format!("{}.png", id.trim_start_matches("chart-")));
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (1520, 760));
    }
    assert!(
        !ids.iter()
            .any(|i| i.contains("skipped") || i.contains("truncated") || i.contains("sequences")),
        "counts are tabled, not drawn"
    );

    // Final metrics, counters, samples, provenance, config.
    let metrics = texts(&doc, "table.metrics td").join("|");
    assert!(metrics.contains("stage2|val|loss|30"), "{metrics}");
    assert!(
        metrics.contains("stage1|train|loss|40"),
        "reused-from run's own stage: {metrics}"
    );
    let counts = texts(&doc, "table.counts td").join("|");
    assert!(
        counts.contains("skipped/too_long|30|3.0000")
            && counts.contains("truncated|30|7.0000")
            && counts.contains("stage2|data|truncated_tokens|0|12.0000"),
        "{counts}"
    );
    let samples = texts(&doc, "table.samples td");
    assert!(
        samples.contains(&HOSTILE.to_string()),
        "hostile reference shown as text: {samples:?}"
    );
    assert!(samples.contains(&format!("{HOSTILE} run 0")));
    assert!(samples.contains(&"red\ncrimson".to_string()), "{samples:?}");
    // An image that exists is inlined as a thumbnail; a missing one is named.
    let thumbs: Vec<_> = doc.select(&sel("table.samples img.thumb")).collect();
    assert_eq!(thumbs.len(), 1);
    let src = thumbs[0].value().attr("src").unwrap();
    assert!(src.starts_with("data:image/png;base64,") && src.len() > 100);
    assert!(samples.contains(&"missing.png".to_string()));
    let prov = texts(&doc, "table.prov td").join("|");
    assert!(prov.contains("no-git") && prov.contains("clean"), "{prov}");
    let config = texts(&doc, "pre.config").join("");
    assert!(
        config.contains("[model]") && config.contains(&format!("</pre>{HOSTILE}")),
        "{config}"
    );
    assert_no_injection(&doc);
}

#[test]
fn reused_stage_links_to_its_run() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    let doc = parse(&report::write_run_report(&store, &ib).unwrap());
    let link = doc
        .select(&sel("table.stages a"))
        .next()
        .expect("stage1 is reused from alpha");
    assert_eq!(
        link.value().attr("href").unwrap(),
        format!("../{ia}/report.html")
    );
    // The reused stage's curves come from alpha's metrics.
    assert!(doc.select(&sel("#chart-stage1-loss svg")).next().is_some());
}

#[test]
fn compare_page_diff_curves_deltas_and_failed_run() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    let hostile_error = format!("CUDA out of memory <img src=x onerror=alert(1)> {HOSTILE}");
    fail(&store, &ib, &hostile_error);
    let path = compare::write(
        &store,
        &["alpha".into(), "beta".into()],
        &CompareOptions::default(),
    )
    .unwrap();
    assert_eq!(
        path,
        d.path().join("reports").join("compare-alpha-vs-beta.html")
    );
    let doc = parse(&path);

    // Runs: both, the failed one marked with its (escaped) error.
    let runs = texts(&doc, "table.runs tbody tr");
    assert_eq!(runs.len(), 2);
    assert!(
        runs[1].contains("failed") && runs[1].contains(&hostile_error),
        "{runs:?}"
    );

    // Only differing keys.
    let keys = texts(&doc, "table.diff tbody th");
    assert!(
        keys.contains(&"stage2.lora_rank".to_string()) && keys.contains(&"name".to_string()),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k == "seed" || k == "stage1.lr"),
        "{keys:?}"
    );
    let rank_row = doc
        .select(&sel("table.diff tbody tr"))
        .map(|r| r.text().collect::<Vec<_>>())
        .find(|t| t.contains(&"stage2.lora_rank"))
        .unwrap();
    assert_eq!(rank_row, ["stage2.lora_rank", "4", "16"]);

    // Overlaid curves, a legend entry per run; eval scores as bars.
    let legend = texts(&doc, "#chart-stage2-train-loss text").join(" ");
    assert!(
        legend.contains("alpha") && legend.contains("beta"),
        "{legend}"
    );
    assert!(
        doc.select(&sel("#chart-stage2-eval-caption_scores svg rect"))
            .count()
            >= 4
    );
    let pngs = d
        .path()
        .join("reports")
        .join("compare-alpha-vs-beta-charts");
    assert!(pngs.join("stage2-train-loss.png").exists());

    // Final metrics with deltas against alpha.
    let header = texts(&doc, "table.metrics th");
    assert_eq!(header[..3], ["metric".to_string(), ia.clone(), ib.clone()]);
    assert_eq!(header[3..], ["Δ", "Δ %"]);
    let qa = doc
        .select(&sel("table.metrics tbody tr"))
        .map(|r| r.text().collect::<Vec<_>>())
        .find(|t| t[0] == "stage2/eval/qa_acc")
        .unwrap();
    assert_eq!(
        qa,
        [
            "stage2/eval/qa_acc",
            "0.5000",
            "0.5500",
            "+0.0500",
            "+10.00%"
        ]
    );

    // Samples side by side: one row per sample, one output column per run.
    let rows: Vec<Vec<String>> = doc
        .select(&sel("table.samples tbody tr"))
        .map(|r| r.select(&sel("td")).map(|c| c.text().collect()).collect())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0][4..],
        [format!("{HOSTILE} run 0"), format!("{HOSTILE} run 1")]
    );
    assert_eq!(texts(&doc, "table.prov tbody tr").len(), 11);
    assert_no_injection(&doc);
}

#[test]
fn compare_shows_a_running_run_with_what_it_has() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    let mut s = store.read_status(&ib).unwrap();
    s.state = State::Running;
    s.ended = None;
    s.pid = std::process::id();
    s.heartbeat_s = harness::fsutil::now_s();
    harness::fsutil::write_json(&store.run_dir(&ib).join("status.json"), &s).unwrap();
    let out = d.path().join("elsewhere").join("cmp.html");
    let o = CompareOptions {
        out: Some(out.clone()),
        ..Default::default()
    };
    let path = compare::write(&store, &[ia.clone(), ib.clone()], &o).unwrap();
    assert_eq!(path, out);
    assert!(d
        .path()
        .join("elsewhere/cmp-charts/stage2-train-loss.png")
        .exists());
    let doc = parse(&path);
    let badges = texts(&doc, "table.runs .badge");
    assert_eq!(badges, ["completed", "running"]);
}

#[test]
fn compare_names_candidates_for_unknown_and_ambiguous_runs() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    let o = CompareOptions::default();
    let e = compare::write(&store, &["alpha".into(), "gamma".into()], &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gamma") && e.contains(&ia) && e.contains(&ib),
        "{e}"
    );
    // Both ids share the `-` after a one-letter prefix? Use a prefix both ids have.
    let common: String = ia
        .chars()
        .zip(ib.chars())
        .take_while(|(a, b)| a == b)
        .map(|p| p.0)
        .collect();
    let prefix = if common.is_empty() { "" } else { &common };
    let e = compare::write(&store, &[ia.clone(), prefix.into()], &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ambiguous") && e.contains(&ia) && e.contains(&ib),
        "{e}"
    );
}

#[test]
fn leaderboard_ranks_links_and_prints_md_csv() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    let reports = d.path().join("reports");
    let path = leaderboard::write(&store, &reports, &Default::default()).unwrap();
    assert_eq!(path, reports.join("index.html"));
    let doc = parse(&path);
    let rows: Vec<Vec<String>> = doc
        .select(&sel("table.leaderboard > tbody > tr"))
        .map(|r| {
            r.children()
                .filter_map(scraper::ElementRef::wrap)
                .filter(|c| c.value().name() == "td")
                .map(|c| c.text().collect::<String>())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2);
    // The headline eval metrics lead (issue 22): columns are found by their header.
    let header = texts(&doc, "table.leaderboard > thead th");
    let col = |h: &str| header.iter().position(|x| x == h).unwrap();
    assert_eq!(
        header[..5],
        [
            "#",
            "name",
            "stage2/eval/Bleu_4",
            "stage2/eval/CIDEr",
            "stage2/eval/qa_acc"
        ]
    );
    assert_eq!(header[5], "stage1/train/loss", "losses next");
    // Ranked by stage-2 validation loss: alpha (0.0667) before beta (0.1667).
    assert_eq!(
        (rows[0][1].as_str(), rows[1][1].as_str()),
        ("alpha", "beta")
    );
    assert_eq!(rows[0][col("id")], ia);
    assert_eq!(rows[1][col("LoRA rank")], "16", "LoRA rank column");
    assert_eq!(rows[0][col("encoder")], "builtin:v");
    assert_eq!(
        rows[0][col("tokens/s (mean)")],
        "1015.5",
        "mean tokens/s of stage 2"
    );
    // No per-item data in these runs: values without intervals or marks.
    assert_eq!(rows[1][col("stage2/eval/qa_acc")], "0.5500-");
    for h in [
        "stage2/val/loss",
        "stage2/eval/CIDEr",
        "stage2/eval/qa_acc",
        "tokens/s (mean)",
        "encoder",
        "projector",
    ] {
        assert!(header.contains(&h.to_string()), "{h} in {header:?}");
    }
    // Every run's report was written and the links reach it.
    for a in doc.select(&sel("table.leaderboard a")) {
        let target = reports.join(a.value().attr("href").unwrap());
        assert!(target.exists(), "{}", target.display());
    }
    assert!(doc.select(&sel("table.sortable")).next().is_some());
    assert!(store.run_dir(&ib).join("report.html").exists());

    let entries = leaderboard::entries(&store).unwrap();
    let md = leaderboard::markdown(&entries);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 4, "{md}");
    assert!(
        lines[0].starts_with("| # | name | id |") && lines[2].contains("alpha"),
        "{md}"
    );
    let csv = leaderboard::csv(&entries);
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.lines().nth(2).unwrap().starts_with("2,beta,"), "{csv}");
}

#[test]
fn cli_report_and_compare_print_paths() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, _) = two_runs(d.path());
    let results = store.root.clone();
    let run = |args: &[&str]| {
        let out = harness(d.path(), &results).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let p = run(&["report", "alpha", "--log-y", "--smoothing", "ma:5"]);
    assert_eq!(
        PathBuf::from(p.trim()),
        store.run_dir(&ia).join("report.html")
    );
    let p = run(&["compare", "alpha", "beta", "--reports", "out"]);
    assert_eq!(p.trim(), "out/compare-alpha-vs-beta.html");
    assert!(d.path().join("out/compare-alpha-vs-beta.html").exists());
    let p = run(&["report"]);
    assert!(
        d.path().join(p.trim()).ends_with("reports/index.html"),
        "{p}"
    );
    let csv = run(&["report", "--format", "csv"]);
    assert!(csv.starts_with("#,name,id,"), "{csv}");
    let out = harness(d.path(), &results)
        .args(["compare", "alpha", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run matches \"nope\""));
}

#[test]
fn a_run_that_failed_before_any_metric_still_gets_a_report() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, _) = two_runs(d.path());
    std::fs::remove_dir_all(store.run_dir(&ia).join("metrics")).unwrap();
    std::fs::remove_file(store.run_dir(&ia).join("samples.json")).unwrap();
    fail(&store, &ia, "no data: <b>bold</b>");
    let doc = parse(&report::write_run_report(&store, &ia).unwrap());
    assert_eq!(texts(&doc, "p.err"), ["Error: no data: <b>bold</b>"]);
    assert_eq!(doc.select(&sel("figure.chart")).count(), 0);
    let page = doc.root_element().text().collect::<String>();
    assert!(page.contains("No metrics to draw yet") && page.contains("No sample outputs"));
    assert!(
        std::fs::read_dir(store.run_dir(&ia).join("charts"))
            .unwrap()
            .next()
            .is_none(),
        "stale PNGs removed"
    );
    assert_no_injection(&doc);
}

#[test]
fn compare_of_three_runs_names_the_file_after_all_of_them() {
    let d = tempfile::tempdir().unwrap();
    let (store, ia, ib) = two_runs(d.path());
    // Names repeat (alpha twice), so labels fall back to ids.
    let refs = [ia.clone(), ib.clone(), "alpha".to_string()];
    let path = compare::write(&store, &refs, &CompareOptions::default()).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(name, format!("compare-{ia}-vs-{ib}-vs-{ia}.html"));
    let doc = parse(&path);
    let header = texts(&doc, "table.metrics th");
    assert_eq!(header.len(), 1 + 1 + 3 * 2, "{header:?}");
    assert_eq!(texts(&doc, "table.runs tbody tr").len(), 3);
}
