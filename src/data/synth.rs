//! The synthetic world: pictures of 1-3 coloured shapes in a 3x3 grid, with COCO-format
//! captions and LLaVA-format conversations whose answers are facts of the picture, so a
//! small model can learn it on a CPU and evaluation can score answers exactly.
//!
//! Output (COCO layout, so the real loaders read it unchanged):
//! `train2017/`, `val2017/` (JPEG), `annotations/captions_{train,val}2017.json`
//! (5 paraphrases per image), `llava_instruct_150k.json` (train images, names relative to
//! `train2017/`, like the real file), `llava_instruct_val.json` (val images, relative to
//! `val2017/`), `synth.json` (the options), and small benchmark sets in the real formats
//! under `bench/` ([`super::synth_bench`]: POPE-style and GQA-style, on val images).
//! Every human turn carries an extra `"type"` (color, shape, count, count_kind, position,
//! size, exists, background) so evaluation can score per type; the standard fields are
//! untouched.
//!
//! Rules that keep answers exact: shapes in one picture have distinct colours and sit in
//! distinct grid cells (never overlapping, position = the cell), questions that name a
//! shape by kind are asked only when the kind is unique, answers are one short phrase.
//! Everything is a function of (seed, image index): the same seed gives the same bytes.

use std::fs;
use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;
use image::{Rgb, RgbImage};
use serde::Serialize;
use serde_json::json;

use super::images::par_map;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Circle,
    Square,
    Triangle,
    Diamond,
}

pub const KINDS: [Kind; 4] = [Kind::Circle, Kind::Square, Kind::Triangle, Kind::Diamond];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Circle => "circle",
            Kind::Square => "square",
            Kind::Triangle => "triangle",
            Kind::Diamond => "diamond",
        }
    }
}

/// Shape colours (name, RGB): far apart, so JPEG and resizing never blur one into another.
pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 50]),
    ("blue", [30, 70, 230]),
    ("yellow", [245, 215, 30]),
    ("purple", [140, 50, 190]),
    ("orange", [245, 135, 20]),
];

/// Backgrounds, none of them a shape colour.
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("white", [250, 250, 250]),
    ("black", [15, 15, 15]),
    ("gray", [128, 128, 128]),
];

/// Grid cell names, row-major.
pub const POSITIONS: [&str; 9] = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shape {
    pub kind: Kind,
    /// Index into [`COLORS`].
    pub color: usize,
    /// Index into [`POSITIONS`].
    pub cell: usize,
    pub large: bool,
    /// Centre and radius as fractions of the image side.
    pub cx: f32,
    pub cy: f32,
    pub r: f32,
}

impl Shape {
    pub fn color_name(&self) -> &'static str {
        COLORS[self.color].0
    }

    pub fn size_name(&self) -> &'static str {
        if self.large {
            "large"
        } else {
            "small"
        }
    }

    /// "red circle".
    pub fn label(&self) -> String {
        format!("{} {}", self.color_name(), self.kind.name())
    }

    /// Whether the point (x, y), in fractions of the side, is inside the shape.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy, r) = (x - self.cx, y - self.cy, self.r);
        match self.kind {
            Kind::Circle => dx * dx + dy * dy <= r * r,
            // Side 1.6 r: about the circle's area.
            Kind::Square => dx.abs() <= 0.8 * r && dy.abs() <= 0.8 * r,
            Kind::Diamond => dx.abs() + dy.abs() <= r,
            // Apex up at (0, -r), base at y = 0.8 r from -r to r.
            Kind::Triangle => {
                if dy > 0.8 * r || dy < -r {
                    return false;
                }
                let half = r * (dy + r) / (1.8 * r);
                dx.abs() <= half
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scene {
    /// Index into [`BACKGROUNDS`].
    pub background: usize,
    pub shapes: Vec<Shape>,
}

impl Scene {
    pub fn background_name(&self) -> &'static str {
        BACKGROUNDS[self.background].0
    }

    pub fn count_kind(&self, k: Kind) -> usize {
        self.shapes.iter().filter(|s| s.kind == k).count()
    }

    /// Draws the scene on a `size` x `size` canvas, each pixel sampled at its centre.
    pub fn draw(&self, size: u32) -> RgbImage {
        let mut img = RgbImage::from_pixel(size, size, Rgb(BACKGROUNDS[self.background].1));
        let n = size as f32;
        for s in &self.shapes {
            let x0 = ((s.cx - s.r) * n).floor().max(0.0) as u32;
            let x1 = (((s.cx + s.r) * n).ceil() as u32).min(size);
            let y0 = ((s.cy - s.r) * n).floor().max(0.0) as u32;
            let y1 = (((s.cy + s.r) * n).ceil() as u32).min(size);
            for y in y0..y1 {
                for x in x0..x1 {
                    if s.contains((x as f32 + 0.5) / n, (y as f32 + 0.5) / n) {
                        img.put_pixel(x, y, Rgb(COLORS[s.color].1));
                    }
                }
            }
        }
        img
    }
}

/// The scene of image `index` in the world seeded with `seed`.
pub fn scene(seed: u64, index: u64) -> Scene {
    let mut rng = Rng::derive(seed, index);
    let n = 1 + rng.below(3);
    let mut cells: Vec<usize> = (0..9).collect();
    rng.shuffle(&mut cells);
    let mut colors: Vec<usize> = (0..COLORS.len()).collect();
    rng.shuffle(&mut colors);
    let shapes = (0..n)
        .map(|i| {
            let cell = cells[i];
            let large = rng.below(2) == 1;
            let third: f32 = 1.0 / 3.0;
            let r = third * if large { 0.42 } else { 0.24 };
            // Jitter keeps the whole shape inside its cell.
            let slack = (0.5 * third - r).max(0.0) * 0.8;
            let jx = (rng.unit() as f32 * 2.0 - 1.0) * slack;
            let jy = (rng.unit() as f32 * 2.0 - 1.0) * slack;
            Shape {
                kind: *rng.pick(&KINDS),
                color: colors[i],
                cell,
                large,
                cx: ((cell % 3) as f32 + 0.5) * third + jx,
                cy: ((cell / 3) as f32 + 0.5) * third + jy,
                r,
            }
        })
        .collect();
    Scene {
        background: rng.below(BACKGROUNDS.len()),
        shapes,
    }
}

const NUMBER_WORDS: [&str; 4] = ["no", "one", "two", "three"];

fn list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        2 => format!("{} and {}", items[0], items[1]),
        _ => format!(
            "{} and {}",
            items[..items.len() - 1].join(", "),
            items[items.len() - 1]
        ),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Five paraphrases describing the whole scene (COCO has about five captions per image).
pub fn captions(sc: &Scene) -> Vec<String> {
    let n = sc.shapes.len();
    let bg = sc.background_name();
    let plain: Vec<String> = sc.shapes.iter().map(|s| a(&s.label())).collect();
    let sized: Vec<String> = sc
        .shapes
        .iter()
        .map(|s| a(&format!("{} {}", s.size_name(), s.label())))
        .collect();
    let placed: Vec<String> = sc
        .shapes
        .iter()
        .map(|s| format!("{} {}", a(&s.label()), where_phrase(s.cell)))
        .collect();
    let noun = if n == 1 { "shape" } else { "shapes" };
    vec![
        format!("{} on a {bg} background.", capitalize(&list(&sized))),
        format!(
            "{} {noun} on {bg}: {}.",
            capitalize(NUMBER_WORDS[n]),
            list(&plain)
        ),
        format!("An image showing {}.", list(&placed)),
        format!("A {bg} picture with {}.", list(&plain)),
        format!(
            "There {} {} {noun} in this image: {}.",
            if n == 1 { "is" } else { "are" },
            NUMBER_WORDS[n],
            list(&sized)
        ),
    ]
}

/// Where a cell is, in a caption: "in the top left corner", "at the top", "in the center".
fn where_phrase(cell: usize) -> String {
    match cell {
        4 => "in the center".into(),
        1 | 3 | 5 | 7 => format!("at the {}", POSITIONS[cell]),
        _ => format!("in the {} corner", POSITIONS[cell]),
    }
}

/// "a red circle", "an orange square".
fn a(phrase: &str) -> String {
    let article = if phrase.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {phrase}")
}

/// One question: its type, text and exact answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Qa {
    pub qtype: &'static str,
    pub question: String,
    pub answer: String,
}

/// Every question that has an exact answer for this scene.
pub fn questions(sc: &Scene, rng: &mut Rng) -> Vec<Qa> {
    let mut out = Vec::new();
    let qa = |t, q: String, a: String| Qa {
        qtype: t,
        question: q,
        answer: a,
    };
    let n = sc.shapes.len();
    out.push(qa(
        "count",
        rng.pick(&[
            "How many shapes are there in the image?",
            "How many shapes can you see?",
            "Count the shapes in the picture.",
        ])
        .to_string(),
        n.to_string(),
    ));
    out.push(qa(
        "background",
        rng.pick(&[
            "What color is the background?",
            "What is the background color of the image?",
        ])
        .to_string(),
        sc.background_name().to_string(),
    ));
    let k = *rng.pick(&KINDS);
    out.push(qa(
        "count_kind",
        format!("How many {}s are there?", k.name()),
        sc.count_kind(k).to_string(),
    ));
    for s in &sc.shapes {
        if sc.count_kind(s.kind) == 1 {
            out.push(qa(
                "color",
                rng.pick(&["What color is the {k}?", "Which color does the {k} have?"])
                    .replace("{k}", s.kind.name()),
                s.color_name().to_string(),
            ));
        }
        // Colours are distinct within a scene, so the colour always names one shape.
        out.push(qa(
            "shape",
            rng.pick(&[
                "What shape is the {c} object?",
                "What is the shape of the {c} object?",
            ])
            .replace("{c}", s.color_name()),
            s.kind.name().to_string(),
        ));
        out.push(qa(
            "position",
            rng.pick(&[
                "Where is the {s}?",
                "In which part of the image is the {s}?",
            ])
            .replace("{s}", &s.label()),
            POSITIONS[s.cell].to_string(),
        ));
        out.push(qa(
            "size",
            format!("Is the {} large or small?", s.label()),
            s.size_name().to_string(),
        ));
    }
    // A yes and a no, so "yes" is not always right.
    let s = rng.pick(&sc.shapes);
    out.push(qa(
        "exists",
        format!("Is there {} in the image?", a(&s.label())),
        "yes".into(),
    ));
    loop {
        let (c, k) = (rng.below(COLORS.len()), *rng.pick(&KINDS));
        if !sc.shapes.iter().any(|s| s.color == c && s.kind == k) {
            out.push(qa(
                "exists",
                format!(
                    "Is there {} in the image?",
                    a(&format!("{} {}", COLORS[c].0, k.name()))
                ),
                "no".into(),
            ));
            break;
        }
    }
    out
}

/// A conversation of 2-4 questions of distinct types, in LLaVA's format, with `<image>`
/// before or after the first question (both occur in Instruct150K).
pub fn conversation(sc: &Scene, rng: &mut Rng) -> Vec<Turn> {
    let mut all = questions(sc, rng);
    rng.shuffle(&mut all);
    let want = 2 + rng.below(3);
    let mut chosen: Vec<Qa> = Vec::new();
    for q in all {
        if chosen.len() < want && !chosen.iter().any(|c| c.qtype == q.qtype) {
            chosen.push(q);
        }
    }
    let image_first = rng.below(2) == 0;
    let mut turns = Vec::new();
    for (i, q) in chosen.into_iter().enumerate() {
        let value = match (i, image_first) {
            (0, true) => format!("<image>\n{}", q.question),
            (0, false) => format!("{}\n<image>", q.question),
            _ => q.question,
        };
        turns.push(Turn {
            from: "human",
            value,
            qtype: Some(q.qtype),
        });
        turns.push(Turn {
            from: "gpt",
            value: q.answer,
            qtype: None,
        });
    }
    turns
}

/// One turn as written to the instruct JSON, fields in the real file's order plus `type`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Turn {
    pub from: &'static str,
    pub value: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub qtype: Option<&'static str>,
}

#[derive(Serialize)]
struct Record<'a> {
    id: String,
    image: &'a str,
    conversations: &'a [Turn],
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub images: usize,
    pub size: u32,
    pub seed: u64,
    /// Fraction of images in `val2017/` (the last ones by index).
    pub val_fraction: f64,
    /// 0 = all cores.
    pub threads: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            // 1,800 training pictures (the same as the earlier 2,000 at 0.1) and 450 val
            // pictures: ~1,350 val questions, so QA can be scored on 1,000.
            images: 2250,
            size: 224,
            seed: 0,
            val_fraction: 0.2,
            threads: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SynthSummary {
    pub train_images: usize,
    pub val_images: usize,
    pub captions: usize,
    pub conversations: usize,
    pub questions: usize,
    /// The benchmark sets under `bench/` ([`super::synth_bench`]).
    pub bench: super::synth_bench::BenchSummary,
}

/// Writes the world under `out`.
pub fn generate(out: &Path, o: &SynthOptions) -> anyhow::Result<SynthSummary> {
    let n_val = ((o.images as f64 * o.val_fraction).round() as usize).min(o.images);
    let n_train = o.images - n_val;
    for d in ["train2017", "val2017", "annotations"] {
        fs::create_dir_all(out.join(d)).with_context(|| format!("creating {}", out.display()))?;
    }
    let idx: Vec<usize> = (0..o.images).collect();
    let made = par_map(&idx, o.threads, |&i| -> anyhow::Result<_> {
        let sc = scene(o.seed, i as u64);
        // A second stream for text, so changing the wording never moves the pictures.
        let mut rng = Rng::derive(o.seed ^ 0x7E47, i as u64);
        let split = if i < n_train { "train2017" } else { "val2017" };
        let name = format!("{:012}.jpg", i + 1);
        let path = out.join(split).join(&name);
        let f = BufWriter::new(fs::File::create(&path)?);
        image::codecs::jpeg::JpegEncoder::new_with_quality(f, 92)
            .encode_image(&sc.draw(o.size))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok((name, captions(&sc), conversation(&sc, &mut rng)))
    });
    let mut summary = SynthSummary {
        train_images: n_train,
        val_images: n_val,
        ..Default::default()
    };
    let mut ann_id = 1u64;
    for (split, range) in [("train", 0..n_train), ("val", n_train..o.images)] {
        let mut images = Vec::new();
        let mut anns = Vec::new();
        let mut convs = Vec::new();
        for i in range {
            let (name, caps, conv) = made[i].as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let id = (i + 1) as u64;
            images.push(json!({
                "license": 1, "file_name": name, "coco_url": "", "height": o.size,
                "width": o.size, "date_captured": "2026-01-01 00:00:00", "flickr_url": "", "id": id
            }));
            for c in caps {
                anns.push(json!({"image_id": id, "id": ann_id, "caption": c}));
                ann_id += 1;
            }
            summary.captions += caps.len();
            summary.conversations += 1;
            summary.questions += conv.len() / 2;
            convs.push(Record {
                id: format!("{id:012}"),
                image: name,
                conversations: conv,
            });
        }
        let coco = json!({
            "info": {"description": "harness synthetic shapes world", "version": "1.0",
                     "year": 2026, "contributor": "harness synth", "date_created": "2026/01/01"},
            "licenses": [{"url": "", "id": 1, "name": "generated"}],
            "images": images,
            "annotations": anns,
        });
        fs::write(
            out.join("annotations")
                .join(format!("captions_{split}2017.json")),
            serde_json::to_vec(&coco)?,
        )?;
        let instruct = if split == "train" {
            "llava_instruct_150k.json"
        } else {
            "llava_instruct_val.json"
        };
        fs::write(out.join(instruct), serde_json::to_vec_pretty(&convs)?)?;
    }
    if n_val > 0 {
        summary.bench = super::synth_bench::write_bench_sets(out, o, n_train)?;
    }
    fs::write(
        out.join("synth.json"),
        serde_json::to_vec_pretty(&json!({
            "seed": o.seed, "images": o.images, "size": o.size, "val_fraction": o.val_fraction,
        }))?,
    )?;
    Ok(summary)
}
