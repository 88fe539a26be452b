//! COCO captions and Instruct150K fixtures in the real formats: what parses, what is
//! skipped and why, safe image paths, splits and limits.

use std::path::{Path, PathBuf};

use harness::data::coco::load_captions;
use harness::data::images::{load_rgb, ImageRoot};
use harness::data::instruct::{holdout, load_instruct, strip_image_token};
use harness::data::samples::{drop_undecodable_conversations, limit, undecodable};
use harness::data::{SkipReason, SkipReport};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn train_root() -> ImageRoot {
    ImageRoot::new(&fixtures().join("coco/train2017")).unwrap()
}

fn ids(r: &SkipReport, reason: SkipReason) -> Vec<&str> {
    r.ids(reason).iter().map(|s| s.as_str()).collect()
}

#[test]
fn coco_captions_parse_and_skip_exactly() {
    let json = fixtures().join("coco/annotations/captions_train2017.json");
    let mut set = load_captions(&json, &train_root()).unwrap();
    let got: Vec<(&str, &str)> = set
        .samples
        .iter()
        .map(|s| (s.id.as_str(), s.caption.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("48", "A man riding a wave on top of a surfboard."),
            // Surrounding whitespace and the newline are trimmed, not learned.
            ("67", "A surfer rides a big blue wave."),
            (
                "126",
                "Ein Hund fängt einen Frisbee im Park — 犬がフリスビーを取る。"
            ),
            ("188", "Two dogs playing with a frisbee in the park."),
        ]
    );
    assert_eq!(set.samples[0].image_id, 9);
    assert!(set.samples[0].image.ends_with("train2017/000000000009.jpg"));
    let s = &set.skips;
    assert_eq!(ids(s, SkipReason::EmptyCaption), ["148"]);
    assert_eq!(ids(s, SkipReason::MissingImage), ["173"]);
    assert_eq!(ids(s, SkipReason::UnsafePath), ["201", "202"]);
    assert_eq!(ids(s, SkipReason::UnknownImageId), ["219"]);
    assert_eq!(ids(s, SkipReason::Malformed), ["image:forty-nine", "230"]);
    assert_eq!(s.total(), 7);

    // The corrupt JPEG is found by decoding, and its caption counted as undecodable.
    let bad = undecodable(set.samples.iter().map(|s| s.image.clone()));
    assert_eq!(bad.len(), 1);
    assert!(bad.iter().next().unwrap().ends_with("000000000034.jpg"));
    assert_eq!(harness::data::coco::drop_undecodable(&mut set, &bad), 1);
    assert_eq!(ids(&set.skips, SkipReason::UndecodableImage), ["188"]);
    assert_eq!(set.samples.len(), 3);

    // Metrics carry every reason, zeros included.
    let m = set.skips.metrics();
    assert_eq!(m.len(), SkipReason::ALL.len());
    assert!(m.contains(&("skipped/unsafe_path".to_string(), 2.0)));
    assert!(m.contains(&("skipped/no_answer".to_string(), 0.0)));
}

#[test]
fn greyscale_jpeg_decodes_to_rgb() {
    let img = load_rgb(&fixtures().join("coco/train2017/000000000025.jpg")).unwrap();
    assert_eq!(img.dimensions(), (24, 36));
    let p = img.get_pixel(0, 0).0;
    assert!(p[0] == p[1] && p[1] == p[2], "grey stays grey: {p:?}");
}

#[test]
fn instruct_parses_and_skips_exactly() {
    let json = fixtures().join("coco/llava_instruct_150k.json");
    let mut set = load_instruct(&json, &train_root()).unwrap();
    let got: Vec<&str> = set.samples.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        got,
        [
            "000000000009",
            "000000000025",
            "000000000034",
            "12345",
            "text-only"
        ]
    );
    let first = &set.samples[0];
    assert_eq!(first.turns.len(), 1);
    assert_eq!(
        first.turns[0].question,
        "What is the person in the image doing?"
    );
    // `<image>` after the question: removed the same way.
    let multi = &set.samples[1];
    assert_eq!(multi.image_name.as_deref(), Some("000000000025.jpg"));
    let qa: Vec<(&str, &str)> = multi
        .turns
        .iter()
        .map(|t| (t.question.as_str(), t.answer.as_str()))
        .collect();
    assert_eq!(
        qa,
        [
            ("What is the dog doing?", "The dog is catching a frisbee."),
            (
                "Where does this take place?",
                "In a park — 公園で、晴れた日に。"
            ),
            ("Is it sunny?", "Yes, it appears to be a sunny day."),
        ]
    );
    // A numeric id is read as text; the trailing unanswered question is dropped.
    assert_eq!(set.samples[3].turns.len(), 1);
    assert!(set.samples[4].image.is_none());

    let s = &set.skips;
    assert_eq!(ids(s, SkipReason::MissingImage), ["000000000030"]);
    assert_eq!(ids(s, SkipReason::UnsafePath), ["escape-1"]);
    assert_eq!(ids(s, SkipReason::NoAnswer), ["no-answer", "empty-answer"]);
    assert_eq!(ids(s, SkipReason::UnknownRole), ["system-role"]);
    assert_eq!(ids(s, SkipReason::BadTurnOrder), ["bad-order"]);
    assert_eq!(ids(s, SkipReason::Malformed), ["malformed-1"]);
    assert_eq!(s.total(), 7);

    let bad = undecodable(set.samples.iter().filter_map(|c| c.image.clone()));
    drop_undecodable_conversations(&mut set.samples, &mut set.skips, &bad);
    assert_eq!(
        ids(&set.skips, SkipReason::UndecodableImage),
        ["000000000034"]
    );
    assert_eq!(set.samples.len(), 4);
}

#[test]
fn image_token_before_or_after_gives_the_same_question() {
    assert_eq!(strip_image_token("<image>\nWhat is it?"), "What is it?");
    assert_eq!(strip_image_token("What is it?\n<image>"), "What is it?");
}

#[cfg(unix)]
#[test]
fn paths_never_escape_the_image_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.jpg"), b"x").unwrap();
    std::fs::write(root.join("a.jpg"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.jpg"), root.join("link-out.jpg")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dir-out")).unwrap();
    std::os::unix::fs::symlink(root.join("a.jpg"), root.join("sub/link-in.jpg")).unwrap();
    std::os::unix::fs::symlink(root.join("nowhere.jpg"), root.join("dangling.jpg")).unwrap();
    let r = ImageRoot::new(&root).unwrap();
    let unsafe_names = [
        "../outside/secret.jpg",
        "sub/../../outside/secret.jpg",
        "/etc/passwd",
        "link-out.jpg",
        "dir-out/secret.jpg",
        "..\\outside\\secret.jpg",
    ];
    for n in unsafe_names {
        assert_eq!(r.resolve(n), Err(SkipReason::UnsafePath), "{n}");
    }
    assert_eq!(r.resolve("missing.jpg"), Err(SkipReason::MissingImage));
    assert_eq!(r.resolve("dangling.jpg"), Err(SkipReason::MissingImage));
    assert_eq!(r.resolve("sub"), Err(SkipReason::MissingImage));
    assert_eq!(r.resolve(""), Err(SkipReason::MissingImage));
    let a = r.resolve("a.jpg").unwrap();
    assert_eq!(r.resolve("./a.jpg").unwrap(), a);
    // A symlink that stays inside the root is fine.
    assert_eq!(r.resolve("sub/link-in.jpg").unwrap(), a);
}

#[test]
fn holdout_is_by_image_and_deterministic() {
    let json = fixtures().join("coco/llava_instruct_150k.json");
    let set = load_instruct(&json, &train_root()).unwrap();
    let mut many = Vec::new();
    for k in 0..50 {
        for c in &set.samples {
            let mut c = c.clone();
            c.id = format!("{}-{k}", c.id);
            c.image_name = c.image_name.map(|n| format!("{k}-{n}"));
            many.push(c);
        }
    }
    let (train, val) = holdout(many.clone(), 30);
    assert!(val.len() >= 30 && val.len() < 30 + 5, "{}", val.len());
    assert_eq!(train.len() + val.len(), many.len());
    let val_images: std::collections::HashSet<_> =
        val.iter().filter_map(|c| c.image_name.clone()).collect();
    assert!(train.iter().all(|c| c
        .image_name
        .as_ref()
        .is_none_or(|n| !val_images.contains(n))));
    let (train2, val2) = holdout(many, 30);
    assert_eq!((train, val), (train2, val2));
}

#[test]
fn limit_is_a_seeded_subset_in_file_order() {
    let v: Vec<u32> = (0..100).collect();
    let a = limit(v.clone(), 10, 1);
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a, limit(v.clone(), 10, 1));
    assert_ne!(a, limit(v.clone(), 10, 2));
    assert_eq!(limit(v.clone(), 0, 1), v);
}
