//! Sweeps: experiments planned into stages keyed by their hashes, completed stages reused,
//! the rest run under claims so that any number of workers on one results folder train
//! each stage once.
//!
//! - [`plan`]: load and validate experiment files, decide per stage (run, resume, reuse),
//!   and execute a planned run in the store.
//! - [`backbones`]: the `builtin:` backbones a sweep needs, built before any run starts.
//! - [`worker`]: takes a plan's runs one at a time beside other workers on the same
//!   results folder (skipping what others hold, waiting for a stage 1 another trains).
//! - [`estimate`]: the feature cache and model memory a run will need (`--dry-run`).
//! - [`parallel`]: `--jobs N` worker processes side by side.
//! - [`slurm`]: the batch script, its submission and the checks before it.
//! - [`cluster`]: a sweep on Slurm: its saved plan, `sweep --slurm`, `worker`, `--status`.
//! - [`runner`]: which stage runner trains (the real trainer, or the tests' stand-in).

pub mod backbones;
pub mod cluster;
pub mod estimate;
pub mod parallel;
pub mod plan;
pub mod runner;
pub mod slurm;
pub mod worker;
