//! `harness data check` / `data show` library side on the fixtures.

use harness::data::inspect::{check, show};
use harness::data::samples::DataSpec;
use harness::data::sequence::{ChatTemplate, IGNORE};
use harness::data::SkipReason;

use super::data_loaders::fixtures;
use super::data_sequence::tokenizer;

fn spec(pad_id: u32) -> DataSpec {
    DataSpec {
        coco_root: fixtures().join("coco"),
        instruct_json: fixtures().join("coco/llava_instruct_150k.json"),
        image_folder: None,
        stage1_limit: 0,
        stage2_limit: 0,
        stage2_val: 1,
        instruct_val_json: None,
        max_len: 40,
        image_tokens: 4,
        template: ChatTemplate::default(),
        eos: "<|endoftext|>".into(),
        pad_id,
        seed: 0,
    }
}

#[test]
fn check_counts_everything() {
    let tok = tokenizer();
    let pad = tok.token_to_id("<|endoftext|>").unwrap();
    let r = check(&spec(pad), &tok, true).unwrap();
    let names: Vec<&str> = r.splits.iter().map(|s| s.split.as_str()).collect();
    assert_eq!(names, ["stage1/train", "stage2/train", "stage2/val"]);
    let s1 = &r.splits[0];
    assert_eq!((s1.samples, s1.images), (3, 2));
    assert_eq!(s1.skips.count(SkipReason::UndecodableImage), 1);
    assert_eq!(s1.skips.total(), 8);
    assert_eq!(s1.length_histogram.iter().map(|h| h.2).sum::<usize>(), 3);
    let s2 = &r.splits[1];
    let v2 = &r.splits[2];
    // 4 usable conversations (after the corrupt image), at least 1 held out by image.
    assert_eq!(
        s2.samples + v2.samples + s2.skips.count(SkipReason::TruncatedAway),
        4
    );
    assert!(v2.samples >= 1);
    assert_eq!(s2.skips.count(SkipReason::UndecodableImage), 1);
    // max_len 40 cuts the three-turn conversation: counted, not hidden.
    let truncated = s2.truncation.truncated_sequences + v2.truncation.truncated_sequences;
    assert!(truncated >= 1);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["splits"][0]["skips"]["counts"]["unsafe_path"], 2);
}

#[test]
fn show_prints_what_the_model_sees() {
    let tok = tokenizer();
    let pad = tok.token_to_id("<|endoftext|>").unwrap();
    let mut sp = spec(pad);
    sp.max_len = 512;
    let shown = show(&sp, &tok, 2, 10).unwrap();
    assert!(!shown.is_empty());
    for s in &shown {
        assert_eq!(s.input_ids.len(), s.labels.len());
        for &p in &s.image_positions {
            assert_eq!(s.labels[p], IGNORE);
        }
        assert!(s.text.contains("[["), "{}", s.text);
        let v = serde_json::to_value(s).unwrap();
        for k in ["id", "input_ids", "labels", "image_positions"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
    let s1 = show(&sp, &tok, 1, 2).unwrap();
    assert_eq!(s1.len(), 2);
    assert_eq!(s1[0].image_positions, [0, 1, 2, 3]);
    // Same seed, same first samples.
    let again = show(&sp, &tok, 1, 2).unwrap();
    assert_eq!(
        s1.iter().map(|s| &s.id).collect::<Vec<_>>(),
        again.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
}
