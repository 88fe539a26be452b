//! Padded batches for burn: token ids, labels, attention mask, and per-sample image
//! features, plus the batch order (shuffled, optionally grouped by length).
//!
//! [`LlavaBatcher::batch`] has the signature of burn's `Batcher::batch`; the trait itself
//! lives behind burn's `dataset` feature, which this crate does not enable (it pulls in
//! burn-dataset's dependencies for nothing the training loop needs).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::cache::{FeatureCache, Lookup};
use super::sequence::{Sequence, IGNORE};
use super::skips::{SkipReason, SkipReport};
use crate::rng::{epoch_order, Rng};

/// One sample on its way into a batch: its sequence and (when it has an image) the image's
/// features, `image_tokens x dim` row-major.
#[derive(Clone, Debug)]
pub struct BatchItem {
    pub seq: Sequence,
    pub features: Option<Vec<f32>>,
}

/// A right-padded batch. `L` is the longest sequence (rounded up to `pad_to_multiple`).
#[derive(Clone, Debug)]
pub struct LlavaBatch<B: Backend> {
    /// `[b, L]`; padding and image slots hold `pad_id`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[b, L]`; -100 for ignored positions, padding included.
    pub labels: Tensor<B, 2, Int>,
    /// `[b, L]`; 1 for real tokens (image slots included), 0 for padding (HF convention).
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[b, image_tokens, dim]`; zeros for a sample without an image.
    pub image_features: Tensor<B, 3>,
    /// Per sample, where its image slot starts (`None`: text only).
    pub image_start: Vec<Option<usize>>,
    /// Source record ids, for logging samples.
    pub ids: Vec<String>,
    /// Unpadded lengths.
    pub lengths: Vec<usize>,
    /// Where the loss is, from the host labels: the step reads nothing back to find it.
    pub targets: Targets,
}

impl<B: Backend> LlavaBatch<B> {
    /// Target tokens the loss counts (labels at positions 1.. not ignored).
    pub fn target_tokens(&self) -> usize {
        self.targets.ids.len()
    }
}

/// Where a batch's loss is: for each target, the flattened index `row * L + t` of the
/// position `t` that predicts it (label at `t + 1`), and the label, in row-major order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub positions: Vec<i64>,
    pub ids: Vec<i64>,
}

impl Targets {
    /// Of `[b, l]` labels, row-major, on the host.
    pub fn from_labels(labels: &[i64], b: usize, l: usize) -> Self {
        assert_eq!(labels.len(), b * l, "labels of a [{b}, {l}] batch");
        let (mut positions, mut ids) = (Vec::new(), Vec::new());
        for r in 0..b {
            for t in 0..l.saturating_sub(1) {
                let y = labels[r * l + t + 1];
                if y != IGNORE {
                    positions.push((r * l + t) as i64);
                    ids.push(y);
                }
            }
        }
        Targets { positions, ids }
    }

    /// Of labels on a device: read back first (a sync on a GPU; batches carry theirs).
    pub fn of<B: Backend>(labels: &Tensor<B, 2, Int>) -> Self {
        let [b, l] = labels.dims();
        let host = labels
            .to_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("integer labels");
        Self::from_labels(&host, b, l)
    }
}

#[derive(Clone, Debug)]
pub struct LlavaBatcher {
    pub pad_id: u32,
    pub image_tokens: usize,
    pub feature_dim: usize,
    /// Pad `L` up to a multiple of this (1 = no rounding); fewer distinct shapes helps
    /// backends that compile per shape.
    pub pad_to_multiple: usize,
}

impl LlavaBatcher {
    pub fn batch<B: Backend>(&self, items: Vec<BatchItem>, device: &B::Device) -> LlavaBatch<B> {
        let b = items.len();
        let m = self.pad_to_multiple.max(1);
        let longest = items.iter().map(|i| i.seq.len()).max().unwrap_or(0).max(1);
        let l = longest.div_ceil(m) * m;
        let mut ids = vec![self.pad_id as i64; b * l];
        let mut labels = vec![IGNORE; b * l];
        let mut mask = vec![0i64; b * l];
        let feat_len = self.image_tokens * self.feature_dim;
        let mut feats = vec![0f32; b * feat_len];
        for (r, item) in items.iter().enumerate() {
            let s = &item.seq;
            for (c, (&t, &lab)) in s.input_ids.iter().zip(&s.labels).enumerate() {
                ids[r * l + c] = t as i64;
                labels[r * l + c] = lab;
                mask[r * l + c] = 1;
            }
            if let Some(f) = &item.features {
                assert_eq!(
                    f.len(),
                    feat_len,
                    "features of {} have {} values, expected {} x {}",
                    s.id,
                    f.len(),
                    self.image_tokens,
                    self.feature_dim
                );
                feats[r * feat_len..(r + 1) * feat_len].copy_from_slice(f);
            }
        }
        let targets = Targets::from_labels(&labels, b, l);
        LlavaBatch {
            input_ids: Tensor::from_data(TensorData::new(ids, [b, l]), device),
            labels: Tensor::from_data(TensorData::new(labels, [b, l]), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, [b, l]), device),
            image_features: Tensor::from_data(
                TensorData::new(feats, [b, self.image_tokens, self.feature_dim]),
                device,
            ),
            image_start: items.iter().map(|i| i.seq.image_start).collect(),
            ids: items.iter().map(|i| i.seq.id.clone()).collect(),
            lengths: items.iter().map(|i| i.seq.len()).collect(),
            targets,
        }
    }
}

/// How many batches a length-grouped megabatch spans (HF's `LengthGroupedSampler` uses 50).
pub const MEGABATCH: usize = 50;

/// The batches of one epoch, as sample indices. Plain: a seeded permutation cut into
/// batches. Grouped by length (HF/LLaVA `group_by_length`): the permutation is cut into
/// megabatches of `MEGABATCH x batch_size`, each sorted by length (longest first) and cut
/// into batches, and the batches are shuffled; similar lengths share a batch, so less
/// padding, while the order stays random. Deterministic in (seed, epoch). The last,
/// smaller batch is kept unless `drop_last`.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    group_by_length: bool,
    drop_last: bool,
) -> Vec<Vec<usize>> {
    assert!(batch_size > 0, "batch_size must be positive");
    let order = epoch_order(lengths.len(), seed, epoch);
    let mut batches: Vec<Vec<usize>> = if group_by_length {
        let mut out = Vec::new();
        for mega in order.chunks(MEGABATCH * batch_size) {
            let mut mega = mega.to_vec();
            // Stable sort: ties keep the shuffled order, so the result is deterministic.
            mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            out.extend(mega.chunks(batch_size).map(|c| c.to_vec()));
        }
        Rng::derive(seed, 0xBA7C_0000 + epoch).shuffle(&mut out);
        out
    } else {
        order.chunks(batch_size).map(|c| c.to_vec()).collect()
    };
    if drop_last {
        batches.retain(|b| b.len() == batch_size);
    }
    batches
}

/// Drops sequences whose image has no features in `cache` (undecodable, or gone since the
/// build), counting them, so an epoch never meets a hole.
pub fn keep_cached(seqs: &mut Vec<Sequence>, cache: &FeatureCache, skips: &mut SkipReport) {
    seqs.retain(|s| {
        let Some(img) = &s.image else { return true };
        match cache.lookup(img) {
            Lookup::Features(_) => true,
            Lookup::Failed(_) => {
                skips.add(SkipReason::UndecodableImage, s.id.clone());
                false
            }
            Lookup::Missing => {
                skips.add(SkipReason::MissingImage, s.id.clone());
                false
            }
        }
    });
}

/// The batch items for `idx`, features read from the cache (memory-mapped, f16 to f32).
/// A sequence whose features are missing gets none (zeros in the batch); run
/// [`keep_cached`] once before the epoch so that never happens.
pub fn cached_items(seqs: &[Sequence], idx: &[usize], cache: &FeatureCache) -> Vec<BatchItem> {
    idx.iter()
        .map(|&i| {
            let seq = seqs[i].clone();
            let features = seq.image.as_ref().and_then(|p| cache.get_f32(p));
            BatchItem { seq, features }
        })
        .collect()
}
