//! Data: COCO captions and Instruct150K loaders, LLaVA sequences, the CLIP feature cache,
//! batching, and the synthetic world.
//!
//! The path from files to batches:
//! [`coco::load_captions`] / [`instruct::load_instruct`] (records, with a [`SkipReport`];
//! [`samples`] picks a stage's, [`inspect`] reports on them for `harness data`)
//! -> [`cache::FeatureCache::build`] (CLIP features once per image and encoder)
//! -> [`sequence::SequenceBuilder`] (token ids, labels, image slot)
//! -> [`batch::epoch_batches`] + [`batch::LlavaBatcher`] (padded burn tensors).

pub mod batch;
pub mod cache;
pub mod clip_features;
pub mod coco;
pub mod images;
pub mod inspect;
pub mod instruct;
pub mod lenient;
pub mod samples;
pub mod sequence;
pub mod skips;
pub mod synth;
pub mod synth_bench;

pub use skips::{SkipReason, SkipReport};
