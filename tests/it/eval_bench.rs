//! Benchmark scorers against the reference scripts' own outputs on hand-made fixtures
//! (tests/fixtures/bench/<task>/, reference.json written by scripts/ref_bench.py), through
//! the library and once through `harness eval score`.

use std::path::{Path, PathBuf};

use harness::eval::bench::{self, GtPaths, Task};
use serde_json::Value;

use super::common::{repo_path, succeed};

fn dir(task: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/bench/{task}"))
}

/// Each task's ground truth as `harness eval score` takes it.
fn paths(task: Task) -> GtPaths {
    let d = dir(task.name());
    let mut p = match task {
        Task::Pope => GtPaths::new(d.join("coco")),
        Task::TextVqa => GtPaths::new(d.join("TextVQA_0.5.1_val.json")),
        Task::VqaV2 => GtPaths::new(d.join("annotations.json")),
        Task::Gqa => GtPaths::new(d.join("testdev_balanced_questions.json")),
        Task::ScienceQa => GtPaths::new(d.clone()),
        Task::Mme => GtPaths::new(d.join("MME_Benchmark_release_version")),
    };
    match task {
        Task::Pope => p.questions = Some(d.join("llava_pope_test.jsonl")),
        Task::VqaV2 => p.questions = Some(d.join("questions.json")),
        _ => {}
    }
    p
}

fn reference(task: &str) -> Value {
    let path = dir(task).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Same metric names, each within 1e-9 of the reference, same `n`.
fn assert_matches(task: &str, n: usize, got: &[(String, f64)], want: &Value) {
    assert_eq!(n as u64, want["n"].as_u64().unwrap(), "{task}: n");
    let want = want["metrics"].as_object().unwrap();
    let mut got_names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let mut want_names: Vec<&str> = want.keys().map(String::as_str).collect();
    got_names.sort();
    want_names.sort();
    assert_eq!(got_names, want_names, "{task}: metric names");
    for (k, v) in got {
        let w = want[k].as_f64().unwrap();
        assert!((v - w).abs() <= 1e-9, "{task} {k}: ours {v}, reference {w}");
    }
}

#[test]
fn bench_scorers_equal_the_reference_scripts() {
    for task in Task::ALL {
        let name = task.name();
        let s = bench::score_files(task, &dir(name).join("answers.jsonl"), &paths(task)).unwrap();
        let got: Vec<(String, f64)> = s.metrics.iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_matches(name, s.n, &got, &reference(name));
        // The fixtures are complete: nothing missing, nothing extra.
        assert_eq!(s.coverage.missing.count, 0, "{name}: {:?}", s.coverage);
        assert_eq!(s.coverage.extra.count, 0, "{name}: {:?}", s.coverage);
        assert_eq!(s.items.len(), s.n, "{name}: one score per item");
        // Not a constant: each fixture has right and wrong answers.
        let right = s.items.iter().filter(|i| i.score == 1.0).count();
        assert!(
            right > 0 && right < s.n,
            "{name}: {right} of {} fully right",
            s.n
        );
    }
}

fn harness() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_score_cli_prints_the_reference_metrics() {
    let d = dir("pope");
    let out = succeed(harness().args([
        "eval",
        "score",
        "--task",
        "pope",
        "--pred",
        arg(&d.join("answers.jsonl")),
        "--gt",
        arg(&d.join("coco")),
        "--questions",
        arg(&d.join("llava_pope_test.jsonl")),
        "--json",
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["task"], "pope");
    assert_eq!(v["missing"], 0);
    assert_eq!(v["extra"], 0);
    let got: Vec<(String, f64)> = v["metrics"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
        .collect();
    assert_matches(
        "pope",
        v["n"].as_u64().unwrap() as usize,
        &got,
        &reference("pope"),
    );
    // The metrics keep the scorer's order: the means first.
    assert!(text.find("\"accuracy\"").unwrap() < text.find("\"adversarial/accuracy\"").unwrap());
}

#[test]
fn eval_score_cli_reports_missing_and_extra_predictions() {
    let d = dir("gqa");
    let tmp = tempfile::tempdir().unwrap();
    // Drop the first two answers and add one for a question GQA does not have.
    let text = std::fs::read_to_string(d.join("answers.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().skip(2).collect();
    lines.push(r#"{"question_id": "999", "prompt": "?", "text": "yes"}"#);
    let pred = tmp.path().join("answers.jsonl");
    std::fs::write(&pred, lines.join("\n")).unwrap();
    let out = succeed(harness().args([
        "eval",
        "score",
        "--task",
        "gqa",
        "--pred",
        arg(&pred),
        "--gt",
        arg(&d.join("testdev_balanced_questions.json")),
    ]));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stdout.starts_with("gqa: 10 of 12 ground-truth items scored (2 missing, 1 extra"),
        "{stdout}"
    );
    assert!(stdout.contains("binary/accuracy"), "{stdout}");
    assert!(
        stderr.contains(
            "ground-truth items without a prediction (not scored): 2 (first: \"201307251\", \"201640614\")"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("predictions matching no ground-truth item: 1 (first: \"999\")"),
        "{stderr}"
    );

    // A duplicate is an error naming it and its lines.
    let dup = format!("{text}{}", text.lines().next().unwrap());
    std::fs::write(&pred, dup).unwrap();
    let out = harness()
        .args([
            "eval",
            "score",
            "--task",
            "gqa",
            "--pred",
            arg(&pred),
            "--gt",
        ])
        .arg(d.join("testdev_balanced_questions.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("1 question(s) answered more than once: 201307251 (lines 1, 13)"),
        "{stderr}"
    );
}
