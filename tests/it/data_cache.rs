//! The CLIP feature cache with a counting fake encoder: computed once, reused by later
//! builds (zero encoder calls), shared across paths with the same bytes, resumed after a
//! failure mid-build, keyed by encoder and preprocessing.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use harness::data::cache::{BuildOptions, FeatureCache, FeatureExtractor, Lookup};
use harness::model::preprocess::PreprocessConfig;

use super::data_loaders::fixtures;

const TOKENS: usize = 3;
const DIM: usize = 4;

/// Features that depend on the pixels (so a wrong row would be noticed): the mean of each
/// of `TOKENS x DIM` equal slices, rounded to f16-exact values.
struct Counting {
    name: String,
    calls: Cell<usize>,
    images: Cell<usize>,
    fail_on_call: Option<usize>,
}

impl Counting {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            calls: Cell::new(0),
            images: Cell::new(0),
            fail_on_call: None,
        }
    }
}

fn fake_features(px: &[f32]) -> Vec<f32> {
    let n = TOKENS * DIM;
    let chunk = px.len() / n;
    (0..n)
        .map(|i| {
            let m: f32 = px[i * chunk..(i + 1) * chunk].iter().sum::<f32>() / chunk as f32;
            (m * 64.0).round() / 64.0
        })
        .collect()
}

impl FeatureExtractor for Counting {
    fn id(&self) -> String {
        format!("fake:{}", self.name)
    }
    fn tokens(&self) -> usize {
        TOKENS
    }
    fn dim(&self) -> usize {
        DIM
    }
    fn extract(&self, pixels: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.calls.set(self.calls.get() + 1);
        if Some(self.calls.get()) == self.fail_on_call {
            anyhow::bail!("simulated crash");
        }
        self.images.set(self.images.get() + pixels.len());
        Ok(pixels.iter().map(|p| fake_features(p)).collect())
    }
}

fn preprocess() -> PreprocessConfig {
    PreprocessConfig {
        resize: harness::model::preprocess::Resize::ShortestEdge(16),
        crop: (16, 16),
        ..PreprocessConfig::default()
    }
}

fn images() -> Vec<PathBuf> {
    let d = fixtures().join("coco/train2017");
    ["000000000009.jpg", "000000000025.jpg", "000000000034.jpg"]
        .iter()
        .map(|n| d.join(n))
        .collect()
}

fn opts() -> BuildOptions {
    BuildOptions {
        batch: 1,
        shard_images: 1,
        threads: 1,
        progress: false,
        ..BuildOptions::default()
    }
}

fn expected(p: &Path) -> Vec<f32> {
    let img = harness::data::images::load_rgb(p).unwrap();
    fake_features(&harness::model::preprocess::preprocess(&img, &preprocess()))
}

#[test]
fn second_build_runs_no_encoder_and_reads_the_same_features() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = Counting::new("a");
    let (cache, r) =
        FeatureCache::build(tmp.path(), &enc, &preprocess(), &images(), &opts()).unwrap();
    assert_eq!((r.images, r.extracted, r.cached), (3, 2, 0));
    assert_eq!(r.failed.len(), 1, "the corrupt JPEG");
    assert!(r.failed[0].0.ends_with("000000000034.jpg"));
    assert_eq!(enc.images.get(), 2);
    for p in &images()[..2] {
        assert_eq!(cache.get_f32(p).unwrap(), expected(p));
    }
    assert!(matches!(cache.lookup(&images()[2]), Lookup::Failed(_)));

    // Same encoder, fresh process state: zero encoder calls, same numbers from disk.
    let enc2 = Counting::new("a");
    let (cache2, r2) =
        FeatureCache::build(tmp.path(), &enc2, &preprocess(), &images(), &opts()).unwrap();
    assert_eq!(enc2.calls.get(), 0);
    assert_eq!((r2.cached, r2.extracted, r2.failed.len()), (3, 0, 0));
    for p in &images()[..2] {
        assert_eq!(cache2.get_f32(p).unwrap(), expected(p));
    }
    assert!(matches!(cache2.lookup(&images()[2]), Lookup::Failed(_)));

    // The same bytes under another path (stage 2 reaching train2017 another way): read
    // and hashed, but not encoded again.
    let other = tmp.path().join("copy");
    std::fs::create_dir_all(&other).unwrap();
    let copy = other.join("renamed.jpg");
    std::fs::copy(&images()[0], &copy).unwrap();
    let enc3 = Counting::new("a");
    let (cache3, r3) = FeatureCache::build(
        tmp.path(),
        &enc3,
        &preprocess(),
        std::slice::from_ref(&copy),
        &opts(),
    )
    .unwrap();
    assert_eq!(enc3.calls.get(), 0);
    assert_eq!(r3.aliased, 1);
    assert_eq!(cache3.get_f32(&copy).unwrap(), expected(&images()[0]));

    // Another encoder or preprocessing is another cache.
    let enc4 = Counting::new("b");
    FeatureCache::build(tmp.path(), &enc4, &preprocess(), &images(), &opts()).unwrap();
    assert_eq!(enc4.images.get(), 2);
    let mut p2 = preprocess();
    p2.pad_to_square = true;
    let enc5 = Counting::new("a");
    FeatureCache::build(tmp.path(), &enc5, &p2, &images(), &opts()).unwrap();
    assert_eq!(enc5.images.get(), 2);
}

#[test]
fn a_build_that_dies_midway_resumes_with_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dying = Counting::new("a");
    dying.fail_on_call = Some(2);
    let err = FeatureCache::build(tmp.path(), &dying, &preprocess(), &images(), &opts());
    assert!(err.is_err());
    assert_eq!(dying.images.get(), 1);

    let enc = Counting::new("a");
    let (cache, r) =
        FeatureCache::build(tmp.path(), &enc, &preprocess(), &images(), &opts()).unwrap();
    assert_eq!(
        enc.images.get(),
        1,
        "only the image lost in the crash is encoded again"
    );
    assert_eq!(r.extracted, 1);
    assert_eq!(cache.len(), 2);
    for p in &images()[..2] {
        assert_eq!(cache.get_f32(p).unwrap(), expected(p));
    }
}

#[test]
fn a_changed_file_is_not_served_stale_features() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.jpg");
    std::fs::copy(&images()[0], &p).unwrap();
    let enc = Counting::new("a");
    FeatureCache::build(
        tmp.path(),
        &enc,
        &preprocess(),
        std::slice::from_ref(&p),
        &opts(),
    )
    .unwrap();
    std::fs::copy(&images()[1], &p).unwrap();
    let (cache, r) = FeatureCache::build(
        tmp.path(),
        &enc,
        &preprocess(),
        std::slice::from_ref(&p),
        &opts(),
    )
    .unwrap();
    assert_eq!(r.extracted, 1);
    assert_eq!(cache.get_f32(&p).unwrap(), expected(&images()[1]));
}

#[test]
fn a_cache_of_other_dimensions_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = Counting::new("a");
    FeatureCache::build(tmp.path(), &enc, &preprocess(), &images(), &opts()).unwrap();
    let err = FeatureCache::open(tmp.path(), &enc.id(), &preprocess(), TOKENS + 1, DIM);
    assert!(err.is_err());
}

#[test]
fn sequences_without_cached_features_are_dropped_and_counted() {
    use harness::data::batch::{cached_items, keep_cached};
    use harness::data::sequence::Sequence;
    use harness::data::{SkipReason, SkipReport};
    let tmp = tempfile::tempdir().unwrap();
    let enc = Counting::new("a");
    let imgs = images();
    let (cache, _) =
        FeatureCache::build(tmp.path(), &enc, &preprocess(), &imgs[..], &opts()).unwrap();
    let seq = |id: &str, image: Option<PathBuf>| Sequence {
        id: id.into(),
        input_ids: vec![1, 2],
        labels: vec![-100, 2],
        image_start: image.as_ref().map(|_| 0),
        image_tokens: if image.is_some() { TOKENS } else { 0 },
        truncated: 0,
        image,
    };
    let mut seqs = vec![
        seq("ok", Some(imgs[0].clone())),
        seq("corrupt", Some(imgs[2].clone())),
        seq("gone", Some(tmp.path().join("nope.jpg"))),
        seq("text", None),
    ];
    let mut skips = SkipReport::default();
    keep_cached(&mut seqs, &cache, &mut skips);
    assert_eq!(
        seqs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["ok", "text"]
    );
    assert_eq!(skips.ids(SkipReason::UndecodableImage), ["corrupt"]);
    assert_eq!(skips.ids(SkipReason::MissingImage), ["gone"]);
    let items = cached_items(&seqs, &[0, 1], &cache);
    assert_eq!(items[0].features.as_ref().unwrap(), &expected(&imgs[0]));
    assert!(items[1].features.is_none());
}

/// The child half of [`a_build_killed_with_sigkill_resumes`]: a slow build into the cache
/// root the parent names (does nothing when run on its own).
#[test]
#[ignore]
fn cache_child_build() {
    let (Some(root), Some(imgs)) = (
        std::env::var_os("HARNESS_TEST_CACHE_ROOT"),
        std::env::var_os("HARNESS_TEST_CACHE_IMAGES"),
    ) else {
        return;
    };
    struct Slow(Counting);
    impl FeatureExtractor for Slow {
        fn id(&self) -> String {
            self.0.id()
        }
        fn tokens(&self) -> usize {
            TOKENS
        }
        fn dim(&self) -> usize {
            DIM
        }
        fn extract(&self, pixels: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
            std::thread::sleep(std::time::Duration::from_millis(40));
            self.0.extract(pixels)
        }
    }
    let images: Vec<PathBuf> = std::fs::read_dir(imgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    FeatureCache::build(
        Path::new(&root),
        &Slow(Counting::new("a")),
        &preprocess(),
        &images,
        &opts(),
    )
    .unwrap();
}

#[cfg(unix)]
#[test]
fn a_build_killed_with_sigkill_resumes() {
    use harness::data::synth::{generate, SynthOptions};
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let n = 40;
    generate(
        &world,
        &SynthOptions {
            images: n,
            size: 32,
            val_fraction: 0.0,
            ..SynthOptions::default()
        },
    )
    .unwrap();
    let imgs = world.join("train2017");
    let root = tmp.path().join("cache");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "data_cache::cache_child_build",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("HARNESS_TEST_CACHE_ROOT", &root)
        .env("HARNESS_TEST_CACHE_IMAGES", &imgs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shards = |root: &Path| -> usize {
        walk(root)
            .iter()
            .filter(|p| {
                p.to_string_lossy().ends_with(".json") && p.to_string_lossy().contains("shard-")
            })
            .count()
    };
    let t = std::time::Instant::now();
    while shards(&root) < 5 {
        assert!(
            t.elapsed().as_secs() < 60,
            "the child build made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no flush
    child.wait().unwrap();
    let done = shards(&root);
    assert!(done < n, "killed before the end ({done} shards)");

    let images: Vec<PathBuf> = std::fs::read_dir(&imgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let enc = Counting::new("a");
    let (cache, r) = FeatureCache::build(&root, &enc, &preprocess(), &images, &opts()).unwrap();
    // One image per shard: everything written before the kill is kept, the rest is done now.
    assert_eq!(r.cached, done);
    assert_eq!(enc.images.get(), n - done);
    assert_eq!(cache.len(), n);
    for p in &images {
        assert_eq!(cache.get_f32(p).unwrap(), expected(p));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
