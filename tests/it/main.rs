//! One integration-test binary (one link of burn + polars instead of one per file).
//! Each area adds its module here.

mod bench_cli;
mod builtin;
mod code_keys;
mod common;
mod config_hash;
mod data_batch;
mod data_bench;
mod data_cache;
mod data_clip_cache;
mod data_inspect;
mod data_loaders;
mod data_sequence;
mod data_synth;
mod eval_bench;
mod eval_captions;
mod eval_generate;
mod infer_cli;
mod layers;
mod model_errors;
mod model_parity;
mod model_vlm;
mod pretrain;
mod pretrain_lm;
mod qlora;
mod report_charts;
mod report_cost;
mod report_pages;
mod slurm_cluster;
mod store_runs;
mod synth_backbone;
mod train_e2e;
mod train_step;
