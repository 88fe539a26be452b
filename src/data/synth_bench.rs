//! The synthetic world's benchmark sets, in the real benchmarks' formats and LLaVA's eval
//! layout, so `harness eval bench` and `[[eval.bench]]` run on them as on the real ones
//! (`bench/pope/`, `bench/gqa/` beside the world). They are drawn on the first
//! [`BENCH_IMAGES`] val images (no stage trains on them), copied (hard-linked where the
//! file system allows) into each set's image folder.
//!
//! POPE (`bench/pope/`: `llava_pope_test.jsonl`, `coco/coco_pope_<category>.json`,
//! `val2014/`), POPE's construction over the world's shape kinds: per image, `k` kinds
//! that are in it ("yes") and `k` that are not ("no"), `k` = min(kinds present, kinds
//! absent), interleaved yes, no, yes, no; the same positives in every category, the
//! negatives by category: `random` any absent kinds (seeded), `popular` the absent kinds
//! in the most images of the set, `adversarial` the absent kinds that co-occur most with
//! the present ones (summed over them; ties by popularity, then kind order). The question
//! is "Is there a {kind} in the image?", as POPE asks it (LLaVA-1.5's question file adds
//! its short-answer instruction; here the plain question, the form the world trains on).
//!
//! GQA (`bench/gqa/`: `llava_gqa_testdev_balanced.jsonl`,
//! `data/testdev_balanced_questions.json`, `data/images/`): every question with an exact
//! answer that [`super::synth::questions`] asks about each image (colour, shape, count,
//! count of a kind, position, size, background, existence), with GQA's fields
//! (`imageId`, `question`, `answer`, `fullAnswer`, `isBalanced`, `types`; structural type
//! `verify` for existence, `choose` for large-or-small, `query` otherwise).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use super::synth::{questions, scene, Kind, Scene, SynthOptions, KINDS};
use crate::rng::Rng;

/// Val images the benchmark sets are drawn on (at most).
pub const BENCH_IMAGES: usize = 100;
/// POPE's categories, in the order LLaVA's question file lists them.
pub const POPE_CATEGORIES: [&str; 3] = ["adversarial", "popular", "random"];

/// Questions written per set.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchSummary {
    pub images: usize,
    pub pope_questions: usize,
    pub gqa_questions: usize,
}

/// Streams of the benchmark draws, apart from the pictures' and the conversations'.
const POPE_SALT: u64 = 0x9097_BE9C;
const GQA_SALT: u64 = 0x69A0_BE9C;

/// Writes `out/bench/{pope,gqa}` for the world `o` whose val images are indices
/// `first_val..o.images` (written to `out/val2017/` already).
pub fn write_bench_sets(
    out: &Path,
    o: &SynthOptions,
    first_val: usize,
) -> anyhow::Result<BenchSummary> {
    let images: Vec<usize> = (first_val..o.images).take(BENCH_IMAGES).collect();
    let scenes: Vec<Scene> = images.iter().map(|&i| scene(o.seed, i as u64)).collect();
    let names: Vec<String> = images
        .iter()
        .map(|&i| format!("{:012}.jpg", i + 1))
        .collect();
    let src = out.join("val2017");
    let bench = out.join("bench");
    let pope = bench.join("pope");
    let gqa = bench.join("gqa");
    for d in [
        pope.join("coco"),
        pope.join("val2014"),
        gqa.join("data/images"),
    ] {
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for n in &names {
        for dst in [
            pope.join("val2014").join(n),
            gqa.join("data/images").join(n),
        ] {
            link_or_copy(&src.join(n), &dst)?;
        }
    }
    let pope_questions = write_pope(&pope, o.seed, &scenes, &names)?;
    let gqa_questions = write_gqa(&gqa, o.seed, &images, &scenes, &names)?;
    Ok(BenchSummary {
        images: images.len(),
        pope_questions,
        gqa_questions,
    })
}

fn link_or_copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(dst);
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn kinds_of(sc: &Scene) -> Vec<Kind> {
    KINDS
        .iter()
        .copied()
        .filter(|k| sc.shapes.iter().any(|s| s.kind == *k))
        .collect()
}

fn kind_index(k: Kind) -> usize {
    KINDS.iter().position(|&x| x == k).expect("a kind")
}

/// The POPE question about `kind`.
pub fn pope_question(kind: Kind) -> String {
    format!("Is there a {} in the image?", kind.name())
}

/// Per image, the kinds POPE asks about in `category`: `(kind, present)` pairs,
/// interleaved yes/no. `present[i]`: the kinds of image `i` (in [`KINDS`] order).
pub fn pope_pairs(
    category: &str,
    present: &[Vec<Kind>],
    seed: u64,
) -> anyhow::Result<Vec<Vec<(Kind, bool)>>> {
    // Statistics of the set, as POPE takes them from its images' annotations.
    let mut freq = [0usize; KINDS.len()];
    let mut cooc = [[0usize; KINDS.len()]; KINDS.len()];
    for p in present {
        for &a in p {
            freq[kind_index(a)] += 1;
            for &b in p {
                if a != b {
                    cooc[kind_index(a)][kind_index(b)] += 1;
                }
            }
        }
    }
    let cat_stream = POPE_CATEGORIES
        .iter()
        .position(|c| *c == category)
        .with_context(|| format!("unknown POPE category {category:?}"))?
        as u64;
    let mut out = Vec::with_capacity(present.len());
    for (i, p) in present.iter().enumerate() {
        let mut absent: Vec<Kind> = KINDS.iter().copied().filter(|k| !p.contains(k)).collect();
        let k = p.len().min(absent.len());
        // The positives: the same draw in every category.
        let mut pos = p.clone();
        Rng::derive(seed ^ POPE_SALT, i as u64).shuffle(&mut pos);
        pos.truncate(k);
        pos.sort_by_key(|&x| kind_index(x));
        let popularity = |x: &Kind| std::cmp::Reverse(freq[kind_index(*x)]);
        match category {
            "random" => {
                Rng::derive(seed ^ POPE_SALT ^ (cat_stream << 40), i as u64).shuffle(&mut absent)
            }
            "popular" => absent.sort_by_key(|x| (popularity(x), kind_index(*x))),
            _ => absent.sort_by_key(|x| {
                let with: usize = p.iter().map(|&q| cooc[kind_index(q)][kind_index(*x)]).sum();
                (std::cmp::Reverse(with), popularity(x), kind_index(*x))
            }),
        }
        absent.truncate(k);
        out.push(
            pos.into_iter()
                .zip(absent)
                .flat_map(|(y, n)| [(y, true), (n, false)])
                .collect(),
        );
    }
    Ok(out)
}

fn jsonl(path: &Path, lines: &[Value]) -> anyhow::Result<()> {
    let mut s = String::new();
    for l in lines {
        s.push_str(&serde_json::to_string(l)?);
        s.push('\n');
    }
    fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn write_pope(dir: &Path, seed: u64, scenes: &[Scene], names: &[String]) -> anyhow::Result<usize> {
    let present: Vec<Vec<Kind>> = scenes.iter().map(kinds_of).collect();
    let mut llava = Vec::new();
    for cat in POPE_CATEGORIES {
        let pairs = pope_pairs(cat, &present, seed)?;
        let mut labels = Vec::new();
        for (name, qs) in names.iter().zip(&pairs) {
            for &(kind, yes) in qs {
                let text = pope_question(kind);
                labels.push(json!({
                    "question_id": labels.len() + 1, "image": name, "text": text,
                    "label": if yes { "yes" } else { "no" },
                }));
                llava.push(json!({
                    "question_id": llava.len() + 1, "image": name, "text": text, "category": cat,
                }));
            }
        }
        jsonl(
            &dir.join("coco").join(format!("coco_pope_{cat}.json")),
            &labels,
        )?;
    }
    jsonl(&dir.join("llava_pope_test.jsonl"), &llava)?;
    Ok(llava.len())
}

/// GQA's structural and semantic types of a world question type.
fn gqa_types(qtype: &str) -> (&'static str, &'static str) {
    match qtype {
        "exists" => ("verify", "obj"),
        "size" => ("choose", "attr"),
        "position" => ("query", "rel"),
        "count" | "count_kind" => ("query", "obj"),
        _ => ("query", "attr"),
    }
}

fn write_gqa(
    dir: &Path,
    seed: u64,
    images: &[usize],
    scenes: &[Scene],
    names: &[String],
) -> anyhow::Result<usize> {
    let mut gt = BTreeMap::new();
    let mut llava = Vec::new();
    for ((&i, sc), name) in images.iter().zip(scenes).zip(names) {
        let mut rng = Rng::derive(seed ^ GQA_SALT, i as u64);
        let image_id = name.trim_end_matches(".jpg");
        for (j, q) in questions(sc, &mut rng).into_iter().enumerate() {
            // Numeric ids like GQA's, unique per (image, question).
            let id = format!("{}{j:02}", i + 1);
            let (structural, semantic) = gqa_types(q.qtype);
            gt.insert(
                id.clone(),
                json!({
                    "imageId": image_id, "question": q.question, "answer": q.answer,
                    "fullAnswer": q.answer, "isBalanced": true,
                    "types": {"structural": structural, "semantic": semantic, "detailed": q.qtype},
                }),
            );
            llava.push(json!({
                "question_id": id, "image": name, "text": q.question, "category": q.qtype,
            }));
        }
    }
    let path = dir.join("data/testdev_balanced_questions.json");
    fs::write(&path, serde_json::to_vec(&gt)?)
        .with_context(|| format!("writing {}", path.display()))?;
    jsonl(&dir.join("llava_gqa_testdev_balanced.jsonl"), &llava)?;
    Ok(llava.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::*;

    #[test]
    fn pope_negatives_follow_popes_three_rules() {
        // Circles in every image, squares in two, triangles in one, diamonds in none;
        // squares always come with circles.
        let present = vec![
            vec![Circle],
            vec![Circle, Square],
            vec![Circle, Square, Triangle],
            vec![Triangle],
        ];
        let pop = pope_pairs("popular", &present, 1).unwrap();
        // Image 0 (circle): the most frequent absent kind is the square (2 images).
        assert_eq!(pop[0], vec![(Circle, true), (Square, false)]);
        // Image 3 (triangle): circle (3 images) before square (2).
        assert_eq!(pop[3], vec![(Triangle, true), (Circle, false)]);
        // Image 2 has three kinds and one absent: one yes, one no (the diamond).
        assert_eq!(pop[2].len(), 2);
        assert_eq!(pop[2][1], (Diamond, false));
        assert!(pop[2][0].1);
        let adv = pope_pairs("adversarial", &present, 1).unwrap();
        // Image 3 (triangle): triangles co-occur with circles once and squares once; the tie
        // goes to the more popular circle.
        assert_eq!(adv[3], vec![(Triangle, true), (Circle, false)]);
        // Image 0 (circle): squares co-occur with circles twice, triangles once.
        assert_eq!(adv[0], vec![(Circle, true), (Square, false)]);
        // Image 1 (circle, square): two yes, two no, the triangle first (co-occurs 2x).
        assert_eq!(
            adv[1],
            vec![
                (Circle, true),
                (Triangle, false),
                (Square, true),
                (Diamond, false)
            ]
        );
        let rnd = pope_pairs("random", &present, 1).unwrap();
        for (r, p) in rnd.iter().zip(&present) {
            // Positives are the same in every category; negatives are absent kinds.
            let yes: Vec<Kind> = r.iter().filter(|x| x.1).map(|x| x.0).collect();
            let no: Vec<Kind> = r.iter().filter(|x| !x.1).map(|x| x.0).collect();
            assert_eq!(yes.len(), no.len());
            assert!(yes.iter().all(|k| p.contains(k)));
            assert!(no.iter().all(|k| !p.contains(k)));
        }
        assert_eq!(
            rnd.iter()
                .map(|r| r.iter().filter(|x| x.1).map(|x| x.0).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            pop.iter()
                .map(|r| r.iter().filter(|x| x.1).map(|x| x.0).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert!(pope_pairs("nope", &present, 1).is_err());
    }
}
