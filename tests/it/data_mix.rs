//! Stage-2 data beyond Instruct150K: LLaVA-1.5's `llava_v1_5_mix665k.json` (fixture in the
//! real format: images under coco/, gqa/, ocr_vqa/, textvqa/, vg/ of one image folder,
//! text-only ShareGPT conversations), through `data.image_folder`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use harness::data::images::ImageRoot;
use harness::data::instruct::{load_instruct, SourceCount, TEXT_ONLY};
use harness::data::SkipReason;

use crate::common::{harness, repo_path, succeed, write};

fn mix() -> PathBuf {
    repo_path("tests/fixtures/data/mix665k")
}

fn counts(pairs: &[(&str, usize, usize)]) -> BTreeMap<String, SourceCount> {
    pairs
        .iter()
        .map(|&(s, kept, skipped)| (s.to_string(), SourceCount { kept, skipped }))
        .collect()
}

#[test]
fn mix665k_loads_every_source_and_text_only_records() {
    let root = ImageRoot::new(&mix()).unwrap();
    let set = load_instruct(&mix().join("llava_v1_5_mix665k.json"), &root).unwrap();
    assert_eq!(
        set.sources,
        counts(&[
            (TEXT_ONLY, 2, 0),
            ("coco", 1, 1),
            ("gqa", 1, 0),
            ("ocr_vqa", 1, 1),
            ("textvqa", 1, 0),
            ("vg", 3, 0),
        ])
    );
    assert_eq!(set.skips.ids(SkipReason::UnsafePath), ["000000052846"]);
    assert_eq!(set.skips.ids(SkipReason::MissingImage), ["1000059"]);
    let by_id = |id: &str| set.samples.iter().find(|c| c.id == id).unwrap();
    let gqa = by_id("2354786");
    assert!(gqa
        .image
        .as_ref()
        .unwrap()
        .ends_with("gqa/images/2354786.jpg"));
    assert_eq!(gqa.turns.len(), 2);
    assert_eq!(
        gqa.turns[0].question,
        "Is the sky dark?\nAnswer the question using a single word or phrase."
    );
    // `<image>` after the question (OCR-VQA) is removed the same way.
    assert_eq!(by_id("1000058").turns[0].question, "Who wrote this book?");
    let text = by_id("oFyLrSn_0");
    assert_eq!(
        (text.image.as_ref(), text.image_name.as_ref()),
        (None, None)
    );
    assert_eq!(text.turns.len(), 2);
    assert_eq!(text.turns[1].answer, "Avec plaisir.");
}

/// `harness data check` on an experiment reading mix665k through `data.image_folder`:
/// counts and skips per source (decoding finds the corrupt VG image), and the text-only
/// conversations become sequences like the rest.
#[test]
fn data_check_reports_mix665k_by_source() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "mix"
[model]
vision = "builtin:clip-micro"
lm = "builtin:phi-micro"
[data]
coco_root = "{root}"
instruct_json = "{root}/llava_v1_5_mix665k.json"
image_folder = "{root}"
stage2_val = 2
max_len = 512
"#,
        root = mix().display()
    );
    let e = write(tmp.path(), "mix.toml", &text);
    let out = succeed(
        harness(tmp.path(), &tmp.path().join("results"))
            .args([
                "data",
                "check",
                "--json",
                "--image-tokens",
                "4",
                "--tokenizer",
            ])
            .arg(repo_path("tests/fixtures/data/tokenizer.json"))
            .arg("--config")
            .arg(&e),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let splits = v["splits"].as_array().unwrap();
    let train = splits
        .iter()
        .find(|s| s["split"] == "stage2/train")
        .unwrap();
    let val = splits.iter().find(|s| s["split"] == "stage2/val").unwrap();
    let src = &train["sources"];
    let pair = |s: &str| {
        (
            src[s]["kept"].as_u64().unwrap(),
            src[s]["skipped"].as_u64().unwrap(),
        )
    };
    assert_eq!(pair("vg"), (2, 1), "{src}");
    assert_eq!(pair("coco"), (1, 1));
    assert_eq!(pair("ocr_vqa"), (1, 1));
    assert_eq!(pair(TEXT_ONLY), (2, 0));
    assert_eq!(pair("gqa"), (1, 0));
    assert_eq!(pair("textvqa"), (1, 0));
    assert_eq!(train["skips"]["counts"]["undecodable_image"], 1);
    // 8 records kept: the hold-out takes 2 or more (whole images), the rest train.
    let (nt, nv) = (
        train["samples"].as_u64().unwrap(),
        val["samples"].as_u64().unwrap(),
    );
    assert_eq!(nt + nv, 8, "{v}");
    assert!(nv >= 2);
    // The human-readable form names the sources too.
    let out = succeed(
        harness(tmp.path(), &tmp.path().join("results"))
            .args(["data", "check", "--image-tokens", "4", "--tokenizer"])
            .arg(repo_path("tests/fixtures/data/tokenizer.json"))
            .arg("--config")
            .arg(&e),
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("by source (records kept / skipped)") && s.contains("ocr_vqa"),
        "{s}"
    );
}

/// `data.image_folder` is part of stage 2's key only, and only when set; it must exist.
#[test]
fn image_folder_keys_stage2_and_is_checked() {
    use harness::config::{check_paths, parse, stage_keys};
    let base = "name = \"a\"\n[model]\nvision = \"builtin:v\"\nlm = \"builtin:l\"\n";
    let with = |f: &str| format!("{base}[data]\nimage_folder = \"{f}\"\n");
    let k0 = stage_keys(&parse(base, "a.toml").unwrap());
    let k_empty = stage_keys(&parse(&with(""), "a.toml").unwrap());
    let k_set = stage_keys(&parse(&with("data/llava"), "a.toml").unwrap());
    assert_eq!(k0, k_empty, "an empty image_folder is the default");
    assert_eq!(k0.stage1, k_set.stage1);
    assert_ne!(k0.stage2, k_set.stage2);
    let missing = check_paths(&parse(&with("/nonexistent/llava"), "a.toml").unwrap(), &[2]);
    assert!(
        missing
            .contains(&"`data.image_folder` = \"/nonexistent/llava\" does not exist".to_string()),
        "{missing:?}"
    );
}
