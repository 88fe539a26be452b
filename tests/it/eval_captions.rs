//! Caption metrics against pycocoevalcap (scripts/ref_captions.py) and `harness eval captions`.

use std::collections::BTreeMap;

use harness::eval::captions::{score, score_raw};
use serde_json::Value;

use super::common::repo_path;
use crate::common::succeed;

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn lists(v: &Value) -> BTreeMap<String, Vec<String>> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let l = v.as_array().unwrap();
            (
                k.clone(),
                l.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn eval_caption_metrics_equal_pycocoevalcap() {
    let path = repo_path("tests/fixtures/eval/caption_cases.json");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 5);
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let got = score(&strings(&case["preds"]), &lists(&case["refs"])).unwrap();
        for (key, value) in got.named() {
            let want = case["scores"][key].as_f64().unwrap();
            worst = worst.max((value - want).abs());
            assert!(
                (value - want).abs() <= 1e-6,
                "{name} {key}: ours {value} vs pycocoevalcap {want}"
            );
        }
    }
    eprintln!("largest difference from pycocoevalcap: {worst:e}");
}

fn harness() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
}

#[test]
fn eval_captions_cli_scores_coco_files() {
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("results.json");
    let refs = dir.path().join("captions_val2017.json");
    std::fs::write(
        &pred,
        r#"[{"image_id": 1, "caption": "A red circle."}, {"image_id": 2, "caption": "Two blue squares!"}]"#,
    )
    .unwrap();
    std::fs::write(
        &refs,
        r#"{"images": [{"id": 1}, {"id": 2}, {"id": 3}], "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red circle on white."},
            {"id": 11, "image_id": 1, "caption": "a big red circle"},
            {"id": 12, "image_id": 2, "caption": "Two blue squares, side by side."},
            {"id": 13, "image_id": 3, "caption": "not predicted, ignored"}]}"#,
    )
    .unwrap();
    let out = succeed(
        harness()
            .args(["eval", "captions", "--json", "--pred"])
            .arg(&pred)
            .arg("--refs")
            .arg(&refs),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = BTreeMap::from([
        (1u64, "A red circle.".to_string()),
        (2, "Two blue squares!".into()),
    ]);
    let r = BTreeMap::from([
        (
            1u64,
            vec![
                "A red circle on white.".to_string(),
                "a big red circle".into(),
            ],
        ),
        (2, vec!["Two blue squares, side by side.".to_string()]),
    ]);
    let want = score_raw(&p, &r).unwrap();
    for (k, x) in want.named() {
        assert!((v[k].as_f64().unwrap() - x).abs() < 1e-12, "{k}");
    }
    // Text output says METEOR/SPICE are not computed rather than printing a number.
    let out = harness()
        .args(["eval", "captions", "--pred"])
        .arg(&pred)
        .arg("--refs")
        .arg(&refs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CIDEr") && text.contains("METEOR   not computed"),
        "{text}"
    );

    // A bad record is reported with its file and index.
    std::fs::write(
        &pred,
        r#"[{"image_id": 1, "caption": "x"}, {"image_id": 2}]"#,
    )
    .unwrap();
    let out = harness()
        .args(["eval", "captions", "--pred"])
        .arg(&pred)
        .arg("--refs")
        .arg(&refs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("results.json") && err.contains("record 1"),
        "{err}"
    );

    // A prediction for an image without references.
    std::fs::write(&pred, r#"[{"image_id": 99, "caption": "x"}]"#).unwrap();
    let out = harness()
        .args(["eval", "captions", "--pred"])
        .arg(&pred)
        .arg("--refs")
        .arg(&refs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("image_id 99"), "{err}");
}
