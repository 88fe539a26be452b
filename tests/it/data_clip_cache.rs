//! The real CLIP tower (tiny random checkpoint) behind the feature cache: cached rows equal
//! a direct forward pass (to f16 precision), and a second build runs no forward pass.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use harness::backend::Compute;
use harness::data::cache::{BuildOptions, FeatureCache, FeatureExtractor};
use harness::data::clip_features::ClipExtractor;
use harness::data::images::load_rgb;
use harness::model::clip::FeatureSelect;
use harness::model::preprocess::{preprocess, PreprocessConfig};

use burn::tensor::{Tensor, TensorData};

struct Counted<'a> {
    inner: &'a ClipExtractor<Compute>,
    calls: Cell<usize>,
}

impl FeatureExtractor for Counted<'_> {
    fn id(&self) -> String {
        self.inner.id()
    }
    fn tokens(&self) -> usize {
        self.inner.tokens()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn extract(&self, pixels: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.calls.set(self.calls.get() + 1);
        self.inner.extract(pixels)
    }
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

#[test]
fn cached_clip_features_equal_a_direct_forward_pass() {
    let dir = models().join("clip_vision");
    let device = Default::default();
    let select = FeatureSelect {
        layer: -2,
        with_cls: false,
    };
    let clip = ClipExtractor::<Compute>::from_dir(&dir, select, &device).unwrap();
    assert_eq!((clip.tokens(), clip.dim()), (16, 32));
    let pre = PreprocessConfig::load(&dir).unwrap();
    let mut images: Vec<PathBuf> = std::fs::read_dir(models().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let tmp = tempfile::tempdir().unwrap();
    let opts = BuildOptions {
        batch: 2,
        progress: false,
        ..BuildOptions::default()
    };
    let enc = Counted {
        inner: &clip,
        calls: Cell::new(0),
    };
    let (cache, r) = FeatureCache::build(tmp.path(), &enc, &pre, &images, &opts).unwrap();
    assert_eq!(r.extracted, images.len());
    assert!(enc.calls.get() >= images.len() / 2);

    for p in &images {
        let px = preprocess(&load_rgb(p).unwrap(), &pre);
        let x = Tensor::<Compute, 4>::from_data(TensorData::new(px, [1, 3, 32, 32]), &device);
        let want: Vec<f32> = clip
            .model
            .features(x, &select)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let got = cache.get_f32(p).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            // f16 storage: 11 significant bits.
            assert!((g - w).abs() <= 1e-3 * w.abs() + 1e-4, "{g} vs {w}");
        }
    }

    let again = Counted {
        inner: &clip,
        calls: Cell::new(0),
    };
    let (_, r2) = FeatureCache::build(tmp.path(), &again, &pre, &images, &opts).unwrap();
    assert_eq!((again.calls.get(), r2.cached), (0, images.len()));
}
