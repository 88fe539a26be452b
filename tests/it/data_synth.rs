//! The synthetic world: deterministic from the seed, read by the real loaders with no
//! skips, pictures that show what the scene says, answers that are facts of the picture.

use std::path::Path;

use harness::data::coco::load_captions;
use harness::data::images::{load_rgb, ImageRoot};
use harness::data::instruct::load_instruct;
use harness::data::synth::{
    generate, questions, scene, Kind, Scene, SynthOptions, BACKGROUNDS, COLORS, KINDS, POSITIONS,
};

const SEED: u64 = 7;
const N: usize = 40;

fn make(dir: &Path, seed: u64) {
    generate(
        dir,
        &SynthOptions {
            images: N,
            size: 224,
            seed,
            val_fraction: 0.1,
            threads: 2,
        },
    )
    .unwrap();
}

fn nearest(rgb: [u8; 3], table: &[(&'static str, [u8; 3])]) -> &'static str {
    let d = |c: [u8; 3]| -> i32 { (0..3).map(|i| (rgb[i] as i32 - c[i] as i32).pow(2)).sum() };
    table.iter().min_by_key(|(_, c)| d(*c)).unwrap().0
}

/// The kind of the shape centred at (cx, cy) with radius r, from the exact drawing: three
/// probe points whose inside/outside pattern differs for every kind.
fn kind_in_picture(img: &image::RgbImage, sc: &Scene, cx: f32, cy: f32, r: f32) -> Kind {
    let n = img.width() as f32;
    let bg = BACKGROUNDS[sc.background].1;
    let inside = |dx: f32, dy: f32| {
        let p = img
            .get_pixel(((cx + dx * r) * n) as u32, ((cy + dy * r) * n) as u32)
            .0;
        p != bg
    };
    // Margins of at least 0.1 r (about 2 px for a small shape) around every edge.
    match (inside(0.0, -0.9), inside(0.6, -0.6), inside(0.6, 0.6)) {
        (true, true, true) => Kind::Circle,
        (false, true, true) => Kind::Square,
        (true, false, true) => Kind::Triangle,
        (true, false, false) => Kind::Diamond,
        other => panic!("no kind has the pattern {other:?}"),
    }
}

#[test]
fn same_seed_same_world_other_seed_other_world() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    make(a.path(), SEED);
    make(b.path(), SEED);
    make(c.path(), SEED + 1);
    for f in [
        "annotations/captions_train2017.json",
        "annotations/captions_val2017.json",
        "llava_instruct_150k.json",
        "llava_instruct_val.json",
        "train2017/000000000001.jpg",
        "val2017/000000000040.jpg",
    ] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap();
        assert_eq!(read(a.path()), read(b.path()), "{f}");
        assert_ne!(read(a.path()), read(c.path()), "{f}");
    }
}

#[test]
fn the_world_loads_cleanly_and_every_answer_is_a_fact_of_the_picture() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    make(out, SEED);
    let root = ImageRoot::new(&out.join("train2017")).unwrap();
    let caps = load_captions(&out.join("annotations/captions_train2017.json"), &root).unwrap();
    assert_eq!(caps.skips.total(), 0);
    assert_eq!(caps.samples.len(), 36 * 5);
    let vroot = ImageRoot::new(&out.join("val2017")).unwrap();
    let vcaps = load_captions(&out.join("annotations/captions_val2017.json"), &vroot).unwrap();
    assert_eq!((vcaps.samples.len(), vcaps.skips.total()), (4 * 5, 0));
    let conv = load_instruct(&out.join("llava_instruct_150k.json"), &root).unwrap();
    assert_eq!((conv.samples.len(), conv.skips.total()), (36, 0));
    let vconv = load_instruct(&out.join("llava_instruct_val.json"), &vroot).unwrap();
    assert_eq!((vconv.samples.len(), vconv.skips.total()), (4, 0));

    let mut types = std::collections::BTreeSet::new();
    let mut answers_checked = 0;
    for c in &conv.samples {
        let index: u64 = c.id.parse::<u64>().unwrap() - 1;
        let sc = scene(SEED, index);
        // The file is the drawing (up to JPEG error), and the drawing shows the scene.
        let file = load_rgb(c.image.as_ref().unwrap()).unwrap();
        let exact = sc.draw(224);
        let err: f64 = file
            .as_raw()
            .iter()
            .zip(exact.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / exact.as_raw().len() as f64;
        assert!(err < 3.0, "mean JPEG error {err}");
        for s in &sc.shapes {
            let px = file
                .get_pixel((s.cx * 224.0) as u32, (s.cy * 224.0) as u32)
                .0;
            assert_eq!(nearest(px, &COLORS), s.color_name());
            assert_eq!(kind_in_picture(&exact, &sc, s.cx, s.cy, s.r), s.kind);
            let cell = (s.cy * 3.0) as usize * 3 + (s.cx * 3.0) as usize;
            assert_eq!(cell, s.cell);
        }
        assert_eq!(
            nearest(file.get_pixel(1, 1).0, &BACKGROUNDS),
            sc.background_name()
        );
        assert!((2..=4).contains(&c.turns.len()));

        for t in &c.turns {
            let q = &t.question;
            let qt = t
                .qtype
                .as_deref()
                .expect("every synthetic question is typed");
            types.insert(qt.to_string());
            let color = COLORS
                .iter()
                .position(|(n, _)| q.contains(&format!(" {n} ")));
            let kind = KINDS.iter().copied().find(|k| q.contains(k.name()));
            let the = |c: Option<usize>, k: Option<Kind>| {
                sc.shapes
                    .iter()
                    .filter(|s| c.is_none_or(|c| s.color == c) && k.is_none_or(|k| s.kind == k))
                    .collect::<Vec<_>>()
            };
            let want = match qt {
                "count" => sc.shapes.len().to_string(),
                "background" => sc.background_name().to_string(),
                "count_kind" => the(None, kind).len().to_string(),
                "color" => {
                    let m = the(None, kind);
                    assert_eq!(m.len(), 1, "asked about a unique kind: {q}");
                    m[0].color_name().to_string()
                }
                "shape" => the(color, None)[0].kind.name().to_string(),
                "position" => POSITIONS[the(color, kind)[0].cell].to_string(),
                "size" => the(color, kind)[0].size_name().to_string(),
                "exists" => if the(color, kind).is_empty() {
                    "no"
                } else {
                    "yes"
                }
                .to_string(),
                other => panic!("unknown question type {other}"),
            };
            assert_eq!(t.answer, want, "{q}");
            answers_checked += 1;
        }
    }
    assert!(answers_checked > 36 * 2);
    assert!(types.len() >= 7, "{types:?}");
}

#[test]
fn every_question_kind_has_an_exact_answer_in_every_scene() {
    for i in 0..200 {
        let sc = scene(1, i);
        assert!((1..=3).contains(&sc.shapes.len()));
        let colors: std::collections::HashSet<_> = sc.shapes.iter().map(|s| s.color).collect();
        let cells: std::collections::HashSet<_> = sc.shapes.iter().map(|s| s.cell).collect();
        assert_eq!(colors.len(), sc.shapes.len());
        assert_eq!(cells.len(), sc.shapes.len());
        let mut r = harness::rng::Rng::new(i);
        let qs = questions(&sc, &mut r);
        assert!(qs.iter().any(|q| q.qtype == "exists" && q.answer == "yes"));
        assert!(qs.iter().any(|q| q.qtype == "exists" && q.answer == "no"));
    }
}
