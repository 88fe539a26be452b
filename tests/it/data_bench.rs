//! Data throughput, printed, never asserted (DESIGN.md section 7: measure, don't assert a
//! time). Run:
//! `cargo test --release --test it data_bench -- --ignored --nocapture`
//! Knobs: HARNESS_BENCH_IMAGES (default 2000), HARNESS_BENCH_DIR (keep the files there).

use std::path::PathBuf;
use std::time::Instant;

use harness::data::cache::{BuildOptions, FeatureCache, FeatureExtractor};
use harness::data::images::{load_rgb, num_threads, par_map};
use harness::data::synth::{generate, SynthOptions};
use harness::model::preprocess::{preprocess, PreprocessConfig};

/// B/32-sized output (49 x 768) without running a model: measures the cache, not CLIP.
struct Fake;

impl FeatureExtractor for Fake {
    fn id(&self) -> String {
        "bench-fake-b32".into()
    }
    fn tokens(&self) -> usize {
        49
    }
    fn dim(&self) -> usize {
        768
    }
    fn extract(&self, pixels: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(pixels
            .iter()
            .map(|p| (0..49 * 768).map(|i| p[i % p.len()]).collect())
            .collect())
    }
}

fn images_in(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
#[ignore]
fn data_bench() {
    let n: usize = std::env::var("HARNESS_BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var("HARNESS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    println!("cores: {}", num_threads());

    let world = base.join("synth224");
    let t = Instant::now();
    generate(
        &world,
        &SynthOptions {
            images: n,
            ..SynthOptions::default()
        },
    )
    .unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "synth: {n} images at 224 px in {s:.2}s ({:.0} images/s)",
        n as f64 / s
    );

    let t = Instant::now();
    let root = harness::data::images::ImageRoot::new(&world.join("train2017")).unwrap();
    let caps = harness::data::coco::load_captions(
        &world.join("annotations/captions_train2017.json"),
        &root,
    )
    .unwrap();
    let convs =
        harness::data::instruct::load_instruct(&world.join("llava_instruct_150k.json"), &root)
            .unwrap();
    let s = t.elapsed().as_secs_f64();
    let recs = caps.samples.len() + convs.samples.len();
    println!("loaders: {recs} caption + conversation records (paths resolved) in {s:.3}s ({:.0} records/s)", recs as f64 / s);

    // COCO-sized JPEGs (COCO is ~640x480): 640 px squares from the same generator.
    let big = base.join("synth640");
    let nb = (n / 4).max(50);
    generate(
        &big,
        &SynthOptions {
            images: nb,
            size: 640,
            val_fraction: 0.0,
            ..SynthOptions::default()
        },
    )
    .unwrap();
    let cfg224 = PreprocessConfig::default();
    for (name, dir, count) in [
        ("224 px", world.join("train2017"), n),
        ("640 px", big.join("train2017"), nb),
    ] {
        let files = images_in(&dir);
        let t = Instant::now();
        for f in &files {
            std::hint::black_box(preprocess(&load_rgb(f).unwrap(), &cfg224));
        }
        let one = files.len() as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        par_map(&files, 0, |f| {
            std::hint::black_box(preprocess(&load_rgb(f).unwrap(), &cfg224).len())
        });
        let all = files.len() as f64 / t.elapsed().as_secs_f64();
        println!("decode+preprocess to 224 ({name} JPEG, {count} files): {one:.0} images/s on 1 core, {all:.0} images/s on all cores");
    }

    let files = images_in(&world.join("train2017"));
    let cache_root = base.join("cache");
    let t = Instant::now();
    let opts = BuildOptions {
        progress: false,
        ..BuildOptions::default()
    };
    let (cache, r) = FeatureCache::build(&cache_root, &Fake, &cfg224, &files, &opts).unwrap();
    println!(
        "cache build (fake B/32 encoder, {} images): {:.2}s",
        r.extracted,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let (_, r2) = FeatureCache::build(&cache_root, &Fake, &cfg224, &files, &opts).unwrap();
    println!(
        "cache re-open + check of {} images: {:.3}s ({} cached, {} encoded)",
        r2.images,
        t.elapsed().as_secs_f64(),
        r2.cached,
        r2.extracted
    );
    let t = Instant::now();
    let mut sum = 0f32;
    for f in &files {
        sum += cache.get_f32(f).unwrap()[0];
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(sum);
    let bytes = files.len() as f64 * 49.0 * 768.0 * 2.0;
    println!(
        "cached feature reads (49x768 f16 -> f32, 1 core): {:.0} images/s, {:.2} GB/s of f16",
        files.len() as f64 / s,
        bytes / s / 1e9
    );
}
