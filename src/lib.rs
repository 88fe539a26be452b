//! `harness`: a research harness for LLaVA-style vision-language models.
//!
//! Folders name the domain: `config` (experiment files and their hashes), `store` (the run
//! store under `results/`), `metrics` (Parquet metrics), `provenance` (git identity),
//! `plan` (sweeps), `model`, `data`, `eval` (caption metrics, generation, QA accuracy), and
//! `cli` (thin commands over the library).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod plan;
pub mod pretrain;
pub mod provenance;
pub mod report;
pub mod runs;
pub mod slurm;
pub mod stage;
pub mod store;
pub mod train;
