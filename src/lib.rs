//! `harness`: a research harness for LLaVA-style vision-language models.
//!
//! The folders read as the architecture, dependencies pointing one way (a module names only
//! those listed after it; `tests/it/layers.rs` keeps it so):
//!
//! - `cli`: the commands, thin layers over the library.
//! - `sweep`: plans experiments into stages, reuses completed ones, runs the rest (locally
//!   side by side), and builds the `builtin:` backbones they need first.
//! - `pretrain`: trains the demo's own backbones (tiny CLIP and Phi) on a synthetic world.
//! - `report`: run reports, `compare`, the leaderboard (HTML, charts).
//! - `train`: the training loop of both stages, checkpoints, in-run evaluation, `bench`.
//! - `eval`: caption metrics, generation, QA accuracy, a run loaded for inference, export.
//! - `store`: the run store under `results/`, Parquet metrics, provenance (git identity).
//! - `data`: loaders, samples, sequences, the CLIP feature cache, batches, the synthetic world.
//! - `model`: CLIP, the projector, Phi, NF4 and LoRA, PEFT files, the assembled VLM.
//! - `backend`: burn's CPU and CUDA backends, devices, dtypes.
//! - `config`: experiment files, validation, defaults, stage keys.
//! - `backbones`: what a `builtin:` backbone is, its key and where it lives.
//! - `fsutil`: crash-safe files and the cache folder.
//! - `rng`: the fixed seeded generator behind shuffles, splits and synthetic weights.

pub mod backbones;
pub mod backend;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod fsutil;
pub mod model;
pub mod pretrain;
pub mod report;
pub mod rng;
pub mod store;
pub mod sweep;
pub mod train;
