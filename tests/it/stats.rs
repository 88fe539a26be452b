//! Is the difference real? Bootstrap intervals against analytic ones, paired tests between
//! runs, per-item tables in the store, groups of seeds, and the pages that show them.

use std::path::Path;
use std::time::Duration;

use harness::eval::intervals;
use harness::eval::stats::{self, Bootstrap};
use harness::report::subjects::{self, Subject};
use harness::report::{compare, leaderboard, CompareOptions};
use harness::rng::Rng;
use harness::store::items::{self, Item};
use harness::store::metrics::MetricsWriter;
use harness::store::{groups, Store};

use crate::common::{experiment, harness, succeed, write};
use crate::report_pages::{parse, sel};

/// Wald and Wilson 95% intervals of a proportion k/n (z from scipy.stats.norm.ppf(0.975)).
fn wald_wilson(k: usize, n: usize) -> ((f64, f64), (f64, f64)) {
    let z = 1.959963984540054;
    let (p, n) = (k as f64 / n as f64, n as f64);
    let h = z * (p * (1.0 - p) / n).sqrt();
    let c = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let w = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((p - h, p + h), (c - w, c + w))
}

fn bernoulli(k: usize, n: usize) -> Vec<f64> {
    (0..n).map(|i| if i < k { 1.0 } else { 0.0 }).collect()
}

#[test]
fn bootstrap_interval_of_a_bernoulli_sample_matches_wald_and_wilson() {
    // Tolerance 0.005: with 2,000 resamples the Monte Carlo standard error of a 2.5%
    // percentile is sqrt(0.025 * 0.975 / 2000) / density = 0.0013 here (the bootstrap
    // distribution is close to N(p, p(1-p)/n), density 2.7 at its 2.5% point for p = 0.6),
    // the bootstrap distribution moves in steps of 1/n = 0.002, and Wald and Wilson differ
    // from each other by up to 0.003 at p = 0.9. Measured: within 0.0025 of both.
    let o = Bootstrap::default();
    for (k, n) in [(300, 500), (450, 500), (100, 500)] {
        let i = stats::mean_interval(&bernoulli(k, n), &o, 1);
        let ((wl, wh), (sl, sh)) = wald_wilson(k, n);
        eprintln!(
            "k={k} n={n}: bootstrap [{:.4}, {:.4}] Wald [{wl:.4}, {wh:.4}] Wilson [{sl:.4}, {sh:.4}]",
            i.low, i.high
        );
        assert_eq!(i.value, k as f64 / n as f64);
        for (got, want) in [(i.low, wl), (i.high, wh), (i.low, sl), (i.high, sh)] {
            assert!((got - want).abs() < 0.005, "{got} vs {want} (k={k})");
        }
    }
}

#[test]
fn bootstrap_intervals_cover_the_true_proportion_95_percent_of_the_time() {
    // 400 samples of 200 draws at p = 0.6: the number of intervals holding 0.6 is
    // Binomial(400, ~0.95) if the intervals are right (sd 4.4 around 380). Percentile
    // intervals of a proportion run a little short at this n (0.94 is typical), so the
    // band is 360..=395 (about -4.5 and +3.4 sd).
    let o = Bootstrap {
        resamples: 1000,
        ..Default::default()
    };
    let mut rng = Rng::new(42);
    let mut covered = 0;
    for s in 0..400 {
        let x: Vec<f64> = (0..200)
            .map(|_| if rng.unit() < 0.6 { 1.0 } else { 0.0 })
            .collect();
        let i = stats::mean_interval(&x, &o, s);
        covered += (i.low <= 0.6 && 0.6 <= i.high) as usize;
    }
    eprintln!("coverage: {covered}/400");
    assert!((360..=395).contains(&covered), "{covered} of 400");
}

/// The scipy/numpy reference of `scripts/ref_stats.py`.
fn reference() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats/reference.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// How far a bootstrap endpoint of ours may be from scipy's, in units of the statistic's
/// standard error `se`: our 20,000 resamples put a 2.5% percentile within
/// sqrt(0.025 * 0.975 / 20000) / phi(1.96) = 0.019 se of the ideal bootstrap's (1 sd),
/// scipy's 200,000 within 0.006 se; 0.08 se is four of their combined sd. A statistic of
/// 0/1 scores moves in steps of 1/n, so one step more.
fn boot_tolerance(se: f64, step: f64) -> f64 {
    0.08 * se + step
}

#[test]
fn bootstrap_and_paired_intervals_match_scipy() {
    let r = reference();
    let o = Bootstrap {
        resamples: 20_000,
        ..Default::default()
    };
    for c in r["mean"].as_array().unwrap() {
        let x = floats(&c["x"]);
        let binary = x.iter().all(|&v| v == 0.0 || v == 1.0);
        let tol = boot_tolerance(
            c["se"].as_f64().unwrap(),
            if binary { 1.0 / x.len() as f64 } else { 0.0 },
        );
        let i = stats::mean_interval(&x, &o, 3);
        let (low, high) = (c["low"].as_f64().unwrap(), c["high"].as_f64().unwrap());
        eprintln!(
            "{}: ours [{:.5}, {:.5}] scipy [{low:.5}, {high:.5}] tol {tol:.5}",
            c["name"], i.low, i.high
        );
        assert!((i.value - c["value"].as_f64().unwrap()).abs() < 1e-12);
        assert!(
            (i.low - low).abs() < tol && (i.high - high).abs() < tol,
            "{}",
            c["name"]
        );
    }
    for c in r["paired"].as_array().unwrap() {
        let (a, b) = (floats(&c["a"]), floats(&c["b"]));
        let tol = boot_tolerance(c["se"].as_f64().unwrap(), 1.0 / a.len() as f64);
        let d = intervals::paired(&qa_items("a", &a), &qa_items("b", &b), &o).unwrap();
        let d = d.iter().find(|d| d.key == "stage2/eval/qa_acc").unwrap();
        let (low, high) = (c["low"].as_f64().unwrap(), c["high"].as_f64().unwrap());
        eprintln!(
            "{}: ours [{:.5}, {:.5}] scipy [{low:.5}, {high:.5}] tol {tol:.5}",
            c["name"], d.low, d.high
        );
        assert!((d.delta - c["delta"].as_f64().unwrap()).abs() < 1e-12);
        assert!(
            (d.low - low).abs() < tol && (d.high - high).abs() < tol,
            "{}",
            c["name"]
        );
        assert_eq!(d.significant, low > 0.0 || high < 0.0, "{}", c["name"]);
    }
}

#[test]
fn t_and_welch_intervals_match_scipy() {
    let r = reference();
    for c in r["t"].as_array().unwrap() {
        let i = stats::t_interval(&floats(&c["values"]), 0.95).unwrap();
        for (got, k) in [(i.value, "value"), (i.low, "low"), (i.high, "high")] {
            assert!((got - c[k].as_f64().unwrap()).abs() < 1e-9, "{k} of {c}");
        }
    }
    for c in r["welch"].as_array().unwrap() {
        let i = stats::difference_interval(&floats(&c["a"]), &floats(&c["b"]), 0.95).unwrap();
        for (got, k) in [(i.value, "delta"), (i.low, "low"), (i.high, "high")] {
            assert!((got - c[k].as_f64().unwrap()).abs() < 1e-9, "{k} of {c}");
        }
    }
    for c in r["t_ppf"].as_array().unwrap() {
        let (p, df, t) = (
            c["p"].as_f64().unwrap(),
            c["df"].as_f64().unwrap(),
            c["t"].as_f64().unwrap(),
        );
        assert!((stats::t_quantile(p, df) - t).abs() < 1e-9 * t, "{c}");
    }
}

fn qa_items(run: &str, scores: &[f64]) -> Vec<Item> {
    scores
        .iter()
        .enumerate()
        .map(|(i, &s)| Item {
            run_id: run.into(),
            stage: "stage2".into(),
            task: "qa".into(),
            item: format!("{:012}.jpg#{}", i / 3, i % 3),
            kind: ["color", "shape", "count"][i % 3].into(),
            metric: "qa_acc".into(),
            score: s,
            prediction: if s > 0.0 { "red" } else { "blue" }.into(),
            reference: "red".into(),
        })
        .collect()
}

#[test]
fn paired_test_calls_identical_runs_noise_and_a_gap_of_0_2_significant() {
    let o = Bootstrap::default();
    let mut rng = Rng::new(7);
    let a: Vec<f64> = (0..500)
        .map(|_| if rng.unit() < 0.5 { 1.0 } else { 0.0 })
        .collect();
    // b: a, with 100 of a's wrong answers made right (+0.2 exactly).
    let mut b = a.clone();
    let mut fixed = 0;
    for s in b.iter_mut() {
        if *s == 0.0 && fixed < 100 {
            *s = 1.0;
            fixed += 1;
        }
    }
    let same = intervals::paired(&qa_items("a", &a), &qa_items("a2", &a), &o).unwrap();
    let overall = same.iter().find(|d| d.key == "stage2/eval/qa_acc").unwrap();
    assert_eq!((overall.delta, overall.low, overall.high), (0.0, 0.0, 0.0));
    assert!(!overall.significant, "identical runs are within noise");
    assert!(same.iter().all(|d| !d.significant));

    let gap = intervals::paired(&qa_items("a", &a), &qa_items("b", &b), &o).unwrap();
    let overall = gap.iter().find(|d| d.key == "stage2/eval/qa_acc").unwrap();
    assert!((overall.delta - 0.2).abs() < 1e-12);
    assert_eq!(overall.items, 500);
    // Every changed item moves by +1: the paired difference's sd is sqrt(0.2 * 0.8 / 500)
    // = 0.018, so the interval is about 0.2 +- 0.035.
    assert!(
        overall.significant && overall.low > 0.15 && overall.high < 0.25,
        "{overall:?}"
    );
    // Per type: the keys of the breakdown, each with its own items.
    let color = gap
        .iter()
        .find(|d| d.key == "stage2/eval/qa_acc/color")
        .unwrap();
    assert_eq!(color.items, 167);

    // Independent runs 0.2 apart (p = 0.5 and 0.7): significant; 0.01 apart: noise.
    let indep = |p: f64, seed: u64| -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..500)
            .map(|_| if r.unit() < p { 1.0 } else { 0.0 })
            .collect()
    };
    let d = intervals::paired(
        &qa_items("a", &indep(0.5, 1)),
        &qa_items("b", &indep(0.7, 2)),
        &o,
    )
    .unwrap();
    assert!(
        d.iter()
            .find(|d| d.key == "stage2/eval/qa_acc")
            .unwrap()
            .significant
    );
    let a = indep(0.6, 3);
    let mut b = a.clone();
    b[..5].iter_mut().for_each(|s| *s = 1.0 - *s);
    let d = intervals::paired(&qa_items("a", &a), &qa_items("b", &b), &o).unwrap();
    let d = d.iter().find(|d| d.key == "stage2/eval/qa_acc").unwrap();
    assert!(d.delta.abs() <= 0.01 && !d.significant, "{d:?}");
}

#[test]
fn items_round_trip_and_pair_only_common_items() {
    let dir = tempfile::tempdir().unwrap();
    let items = qa_items("r", &[1.0, 0.0, 1.0, 1.0]);
    let path = items::write(dir.path(), &items).unwrap().unwrap();
    assert_eq!(path, dir.path().join("items/stage2-qa.parquet"));
    assert_eq!(items::read_dir(dir.path()).unwrap(), items);
    // One file is one evaluation.
    let mut mixed = items.clone();
    mixed[1].task = "captions".into();
    let e = items::write(dir.path(), &mixed).unwrap_err().to_string();
    assert!(e.contains("one evaluation"), "{e}");
    // A broken file is named.
    std::fs::write(
        dir.path().join("items/stage1-captions.parquet"),
        b"not parquet",
    )
    .unwrap();
    let e = format!("{:#}", items::read_dir(dir.path()).unwrap_err());
    assert!(e.contains("stage1-captions.parquet"), "{e}");
    assert_eq!(
        items::file_name("stage2", "bench/pope"),
        "stage2-bench_pope.parquet"
    );

    // b scored only the first two items: pairing uses those.
    let b = qa_items("b", &[0.0, 0.0]);
    let d = intervals::paired(&items, &b, &Bootstrap::default()).unwrap();
    let all = d.iter().find(|d| d.key == "stage2/eval/qa_acc").unwrap();
    assert_eq!((all.items, all.a, all.b), (2, 0.5, 0.0));
}

#[test]
fn caption_items_give_the_corpus_scores_and_an_interval_around_them() {
    let caps = [
        (
            "a red circle",
            vec!["a red circle on blue", "one red circle"],
        ),
        (
            "two squares",
            vec!["two green squares", "a picture with two squares"],
        ),
        ("a triangle", vec!["a yellow triangle in the center"]),
        ("a blue circle", vec!["a small blue circle", "one circle"]),
        (
            "three shapes",
            vec!["three shapes: a circle, a square and a star"],
        ),
        ("a green star", vec!["a green star at the top", "one star"]),
    ];
    let pairs: Vec<(String, Vec<String>)> = caps
        .iter()
        .map(|(c, r)| (c.to_string(), r.iter().map(|s| s.to_string()).collect()))
        .collect();
    let per = harness::eval::caption_set::CaptionSet::from_raw(&pairs)
        .unwrap()
        .per_image_cider();
    let rows: Vec<Item> = pairs
        .iter()
        .zip(&per)
        .enumerate()
        .map(|(i, ((c, r), &s))| Item {
            run_id: "r".into(),
            stage: "stage1".into(),
            task: "captions".into(),
            item: format!("{i:012}.jpg"),
            kind: String::new(),
            metric: "CIDEr".into(),
            score: s,
            prediction: c.clone(),
            reference: items::join_references(r),
        })
        .collect();
    let got = intervals::run_intervals(&rows, &Bootstrap::default()).unwrap();
    let (p, r) = (
        pairs
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (i, c.clone()))
            .collect(),
        pairs
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (i, r.clone()))
            .collect(),
    );
    let want = harness::eval::score_raw(&p, &r).unwrap();
    for (name, v) in want.named() {
        let m = got
            .iter()
            .find(|m| m.key == format!("stage1/eval/{name}"))
            .unwrap();
        assert!((m.interval.value - v).abs() < 1e-12, "{name}");
        assert!(m.interval.low <= v && v <= m.interval.high, "{name}: {m:?}");
        assert!(
            m.interval.high > m.interval.low,
            "{name} varies over resamples"
        );
        assert_eq!(m.items, 6);
    }
}

/// Runs made by the real binary with the test stage runner, then given eval metrics and
/// items as training would write them.
fn store_with(dir: &Path, files: &[(&str, String)], extra_args: &[&str]) -> Store {
    let results = dir.join("results");
    let paths: Vec<_> = files.iter().map(|(f, t)| write(dir, f, t)).collect();
    succeed(
        harness(dir, &results)
            .arg("sweep")
            .args(&paths)
            .args(extra_args),
    );
    Store::new(&results)
}

fn log_eval(store: &Store, id: &str, qa: &[f64]) {
    let mut w = MetricsWriter::new(
        &store.run_dir(id).join("metrics"),
        id,
        Duration::from_secs(3600),
    )
    .unwrap();
    w.log(
        "stage2",
        "eval",
        30,
        1.0,
        "qa_acc",
        stats::weighted_mean(qa, &vec![1.0; qa.len()]),
    )
    .unwrap();
    w.log("stage2", "val", 30, 1.0, "loss", 1.0 - qa[0] * 0.1)
        .unwrap();
    w.flush().unwrap();
    items::write(&store.run_dir(id), &qa_items(id, qa)).unwrap();
}

fn id_of(store: &Store, name: &str) -> String {
    let exact: Vec<String> = store
        .run_ids()
        .unwrap()
        .into_iter()
        .filter(|i| store.read_experiment(i).unwrap().name == name)
        .collect();
    assert_eq!(exact.len(), 1, "{name}: {exact:?}");
    exact[0].clone()
}

#[test]
fn seeds_expand_into_replicas_and_groups_hold_exactly_the_seed_replicas() {
    let d = tempfile::tempdir().unwrap();
    let steps = "[stage1]\nmax_steps = 3\n\n[stage2]\nmax_steps = 3\n";
    let a = experiment("a", steps).replace("seed = 1\n", "seeds = [0, 1, 2]\n");
    let b = experiment("b", &format!("{steps}lora_rank = 4\n"))
        .replace("seed = 1\n", "seeds = [0, 1]\n");
    // a's config with another eval size: not a replica of a.
    let c = experiment("c", &format!("{steps}\n[eval]\nqa_samples = 7\n"))
        .replace("seed = 1\n", "seed = 0\n");
    let store = store_with(
        d.path(),
        &[("a.toml", a.clone()), ("b.toml", b), ("c.toml", c)],
        // Side by side: the workers run one replica each (`run FILE --seed S`).
        &["--jobs", "2"],
    );
    let mut names: Vec<String> = store
        .run_ids()
        .unwrap()
        .iter()
        .map(|i| store.read_experiment(i).unwrap().name)
        .collect();
    names.sort();
    assert_eq!(names, ["a-s0", "a-s1", "a-s2", "b-s0", "b-s1", "c"]);
    // Each replica is a normal run with its own stage keys: the seed is in stage 1's.
    let keys: std::collections::BTreeSet<String> = ["a-s0", "a-s1", "a-s2"]
        .iter()
        .map(|n| {
            let id = id_of(&store, n);
            store.read_status(&id).unwrap().stages["stage1"].key.clone()
        })
        .collect();
    assert_eq!(keys.len(), 3);
    let exp = store.read_experiment(&id_of(&store, "a-s1")).unwrap();
    assert_eq!((exp.seed, exp.seeds.len()), (1, 0));

    let mut gs: Vec<(String, Vec<u64>, usize)> = groups::groups(&store)
        .unwrap()
        .into_iter()
        .map(|g| (g.name, g.seeds, g.runs.len()))
        .collect();
    gs.sort();
    assert_eq!(
        gs,
        [
            ("a".to_string(), vec![0, 1, 2], 3),
            ("b".to_string(), vec![0, 1], 2),
            ("c".to_string(), vec![0], 1),
        ]
    );
    let g = groups::find(&store, "a").unwrap().unwrap();
    let ids: Vec<String> = ["a-s0", "a-s1", "a-s2"]
        .iter()
        .map(|n| id_of(&store, n))
        .collect();
    assert_eq!(g.runs, ids);
    assert!(
        groups::find(&store, "c").unwrap().is_none(),
        "one seed is no group"
    );

    // Adding a seed runs only the new replica; the others are skipped.
    let a4 = a.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3]");
    let out = succeed(harness(d.path(), &store.root).arg("sweep").arg(write(
        d.path(),
        "a.toml",
        &a4,
    )));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("skipped: already completed").count(),
        3,
        "{text}"
    );
    assert_eq!(
        groups::find(&store, "a").unwrap().unwrap().seeds,
        [0, 1, 2, 3]
    );

    // sweep --seeds N: seeds seed..seed+N of a file without a list.
    // (Another LoRA rank: the same config under another name would join a's group, the
    // name being no part of the config.)
    let e = experiment("e", &format!("{steps}lora_rank = 8\n")).replace("seed = 1\n", "seed = 5\n");
    succeed(
        harness(d.path(), &store.root)
            .arg("sweep")
            .arg(write(d.path(), "e.toml", &e))
            .args(["--seeds", "2"]),
    );
    assert_eq!(groups::find(&store, "e").unwrap().unwrap().seeds, [5, 6]);
    // run --seed S: that replica alone.
    succeed(
        harness(d.path(), &store.root)
            .arg("run")
            .arg(d.path().join("e.toml"))
            .args(["--seed", "9"]),
    );
    assert_eq!(groups::find(&store, "e").unwrap().unwrap().seeds, [5, 6, 9]);
}

#[test]
fn seed_beside_seeds_and_repeated_seeds_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let both = experiment("x", "").replace("seed = 1\n", "seed = 1\nseeds = [1, 2, 2]\n");
    let f = write(d.path(), "x.toml", &both);
    let out = harness(d.path(), &d.path().join("results"))
        .args(["sweep", "--dry-run"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("x.toml") && e.contains("line 2: `seed`"), "{e}");
    assert!(e.contains("`seeds` lists seed 2 twice"), "{e}");
}

#[test]
fn groups_aggregate_with_t_intervals_and_compare_between_groups_and_runs() {
    let d = tempfile::tempdir().unwrap();
    let steps = "[stage1]\nmax_steps = 3\n\n[stage2]\nmax_steps = 3\n";
    let a = experiment("a", steps).replace("seed = 1\n", "seeds = [0, 1, 2]\n");
    let b = experiment("b", &format!("{steps}lora_rank = 4\n"))
        .replace("seed = 1\n", "seeds = [0, 1]\n");
    let store = store_with(d.path(), &[("a.toml", a), ("b.toml", b)], &["--jobs", "1"]);
    // QA accuracies per seed: a 0.5, 0.6, 0.7 (30 items each); b 0.2, 0.3.
    let scores = |k: usize| bernoulli(k, 30);
    for (name, k) in [
        ("a-s0", 15),
        ("a-s1", 18),
        ("a-s2", 21),
        ("b-s0", 6),
        ("b-s1", 9),
    ] {
        log_eval(&store, &id_of(&store, name), &scores(k));
    }
    // `harness ls` shows the headline eval metric beside the losses.
    let ls = succeed(harness(d.path(), &store.root).args(["ls", "--format", "csv"]));
    let ls = String::from_utf8(ls.stdout).unwrap();
    let mut lines = ls.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let qa_col = header
        .iter()
        .position(|h| *h == "stage2/eval/qa_acc")
        .unwrap_or_else(|| panic!("{header:?}"));
    assert!(header.iter().position(|h| *h == "stage2_loss").unwrap() < qa_col);
    let a_s1 = id_of(&store, "a-s1");
    let row: Vec<&str> = lines
        .find(|l| l.starts_with(&format!("{a_s1},")))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(row[qa_col].parse::<f64>().unwrap(), 0.6);
    let g = groups::find(&store, "a").unwrap().unwrap();
    let sa = Subject::group(&store, &g).unwrap();
    let e = &sa.estimates(&Bootstrap::default())["stage2/eval/qa_acc"];
    // mean 0.6, sd 0.1, t(0.975, 2) = 4.302652729749462 (scipy): half 0.1 * t / sqrt(3).
    let half = 0.1 * 4.302652729749462 / 3f64.sqrt();
    assert!((e.value - 0.6).abs() < 1e-12);
    assert!((e.high.unwrap() - 0.6 - half).abs() < 1e-9, "{e:?}");
    assert_eq!(e.how, "t over 3 seeds");

    // compare --json on two group names: Welch over seeds.
    let out = succeed(harness(d.path(), &store.root).args(["compare", "a", "b", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let qa = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "stage2/eval/qa_acc")
        .unwrap()
        .clone();
    for k in ["metric", "a", "b", "delta", "low", "high", "significant"] {
        assert!(qa.get(k).is_some(), "{k} in {qa}");
    }
    let want = stats::difference_interval(&[0.5, 0.6, 0.7], &[0.2, 0.3], 0.95).unwrap();
    assert!((qa["delta"].as_f64().unwrap() + 0.35).abs() < 1e-12);
    assert!((qa["low"].as_f64().unwrap() - want.low).abs() < 1e-12);
    assert_eq!(qa["significant"], want.excludes_zero());
    assert!(qa["how"].as_str().unwrap().contains("Welch"), "{qa}");

    // Two single runs: the paired bootstrap over their 30 common items.
    let (r0, r1) = (id_of(&store, "a-s0"), id_of(&store, "b-s1"));
    let d01 = compare::deltas(&store, &[r0.clone(), r1.clone()], &Bootstrap::default()).unwrap();
    let qa = d01
        .iter()
        .find(|m| m.metric == "stage2/eval/qa_acc")
        .unwrap();
    assert!(
        (qa.delta.unwrap() + 0.2).abs() < 1e-12 && qa.significant == Some(true),
        "{qa:?}"
    );
    assert!(qa.how.contains("paired bootstrap over 30 common items"));
    // A run without items (an older run): the value, no interval, said so.
    std::fs::remove_dir_all(store.run_dir(&r1).join("items")).unwrap();
    let d01 = compare::deltas(&store, &[r0.clone(), r1.clone()], &Bootstrap::default()).unwrap();
    let qa = d01
        .iter()
        .find(|m| m.metric == "stage2/eval/qa_acc")
        .unwrap();
    assert_eq!((qa.low, qa.significant), (None, None));
    assert!(qa.how.contains("no per-item data"), "{qa:?}");
    let sub = subjects::resolve(&store, &r1).unwrap();
    let e = &sub.estimates(&Bootstrap::default())["stage2/eval/qa_acc"];
    assert_eq!(
        (e.low, e.how.as_str()),
        (None, "no per-item data: no interval")
    );

    // The compare page of two groups: the verdict table and the group's band.
    let page = compare::write(
        &store,
        &["a".into(), "b".into()],
        &CompareOptions::default(),
    )
    .unwrap();
    let doc = parse(&page);
    let rows: Vec<Vec<String>> = doc
        .select(&sel("table.delta tbody tr"))
        .map(|r| r.select(&sel("td")).map(|c| c.text().collect()).collect())
        .collect();
    let qa = rows.iter().find(|r| r[0] == "stage2/eval/qa_acc").unwrap();
    assert_eq!(qa[1..4], ["0.6000", "0.2500", "-0.3500"]);
    assert!(qa[4].starts_with('[') && ["significant", "within noise"].contains(&qa[5].as_str()));
    assert_eq!(
        doc.select(&sel("table.runs tbody tr")).count(),
        5,
        "every seed's run"
    );
    // Stage-2 train loss: the mean line over a translucent band (a filled path).
    let svg = doc
        .select(&sel("#chart-stage2-train-loss svg"))
        .next()
        .unwrap()
        .html();
    assert!(
        svg.contains("<polygon") && svg.contains("opacity=\"0.18\""),
        "band drawn"
    );

    // The leaderboard: one row per group, seeds a click away, intervals and marks.
    let lb = leaderboard::write(&store, &d.path().join("reports"), &Default::default()).unwrap();
    let doc = parse(&lb);
    let header: Vec<String> = doc
        .select(&sel("table.leaderboard > thead th"))
        .map(|h| h.text().collect())
        .collect();
    assert_eq!(header[..3], ["#", "name", "stage2/eval/qa_acc"]);
    let rows: Vec<_> = doc.select(&sel("table.leaderboard > tbody > tr")).collect();
    assert_eq!(rows.len(), 2);
    let seeds: Vec<String> = doc
        .select(&sel("table.leaderboard table.seeds tbody tr"))
        .map(|r| r.text().collect())
        .collect();
    assert_eq!(seeds.len(), 5, "{seeds:?}");
    let marks: Vec<String> = doc
        .select(&sel("table.leaderboard .mark"))
        .map(|m| m.text().collect())
        .collect();
    assert!(marks.contains(&"★".to_string()), "{marks:?}");
    assert_eq!(
        doc.select(&sel("figure.chart svg")).count(),
        1,
        "one headline chart"
    );
    assert!(d
        .path()
        .join("reports/index-charts/stage2_eval_qa_acc.png")
        .exists());

    // For a look in a browser (scripts/screenshot.sh): the pages, and a paired run-vs-run
    // comparison, moved to $HARNESS_KEEP_PAGES.
    if let Some(keep) = std::env::var_os("HARNESS_KEEP_PAGES") {
        let r2 = id_of(&store, "a-s2");
        compare::write(&store, &[r0, r2], &CompareOptions::default()).unwrap();
        std::fs::rename(d.path(), keep).unwrap();
    }
}
