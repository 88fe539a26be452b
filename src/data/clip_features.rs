//! The real CLIP tower as the feature cache's [`FeatureExtractor`].

use std::path::Path;

use anyhow::{ensure, Context};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use sha2::{Digest, Sha256};

use super::cache::FeatureExtractor;
use crate::model::clip::{ClipVision, ClipVisionConfig, FeatureSelect};

pub struct ClipExtractor<B: Backend> {
    pub model: ClipVision<B>,
    pub config: ClipVisionConfig,
    pub select: FeatureSelect,
    pub device: B::Device,
    /// Identity of the weights (see [`weights_id`]).
    pub weights: String,
}

impl<B: Backend> ClipExtractor<B> {
    /// Loads an HF CLIP checkpoint folder; the identity hashes its files' contents.
    pub fn from_dir(dir: &Path, select: FeatureSelect, device: &B::Device) -> anyhow::Result<Self> {
        let (model, config) = ClipVision::from_dir(dir, device)?;
        Ok(Self {
            model,
            config,
            select,
            device: device.clone(),
            weights: weights_id(dir)?,
        })
    }
}

/// sha256 over `config.json` and every `*.safetensors` in `dir` (names and bytes, in name
/// order): a re-downloaded identical checkpoint keeps its cache, any changed weight gets a
/// new one. About a second per GB, once per run.
pub fn weights_id(dir: &Path) -> anyhow::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json" || n.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    ensure!(
        !files.is_empty(),
        "no config.json or safetensors in {}",
        dir.display()
    );
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        let mut r = std::fs::File::open(&f)?;
        std::io::copy(&mut r, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

impl<B: crate::model::lora::QLoraBackend> FeatureExtractor for ClipExtractor<B> {
    fn id(&self) -> String {
        format!(
            "clip weights={} layer={} with_cls={}",
            self.weights, self.select.layer, self.select.with_cls
        )
    }

    fn tokens(&self) -> usize {
        self.config.num_patches() + usize::from(self.select.with_cls)
    }

    fn dim(&self) -> usize {
        self.config.hidden_size
    }

    fn extract(&self, pixels: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let n = pixels.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let side = self.config.image_size;
        let each = 3 * side * side;
        let mut flat = Vec::with_capacity(n * each);
        for p in pixels {
            ensure!(
                p.len() == each,
                "pixel values of {} floats, the tower wants 3 x {side} x {side}",
                p.len()
            );
            flat.extend_from_slice(p);
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [n, 3, side, side]), &self.device);
        let f = self.model.features(x, &self.select);
        let row = self.tokens() * self.dim();
        let data: Vec<f32> = f
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("reading features: {e:?}"))?;
        ensure!(
            data.len() == n * row,
            "tower returned {} values",
            data.len()
        );
        Ok(data.chunks(row).map(|c| c.to_vec()).collect())
    }
}
