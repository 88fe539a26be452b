//! The `harness` command line: each command is a thin layer over a library function.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod caption;
pub mod chat;
pub mod cluster;
pub mod compare;
pub mod data;
pub mod eval;
pub mod export;
pub mod ls;
pub mod pretrain;
pub mod probe;
pub mod report;
pub mod run;
pub mod show;
pub mod synth;

#[derive(Parser, Debug)]
#[command(
    name = "harness",
    version,
    about = "Train and compare LLaVA-style vision-language models"
)]
pub struct Cli {
    /// Results directory (run store).
    #[arg(
        long,
        global = true,
        env = "HARNESS_RESULTS",
        default_value = "results"
    )]
    pub results: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run both stages of one experiment.
    Run(run::RunArgs),
    /// Run many experiments, reusing every stage already completed (here, or on Slurm
    /// with --slurm).
    Sweep(run::SweepArgs),
    /// Take the runs of a submitted sweep until none is left (what each Slurm array task
    /// of `sweep --slurm` runs).
    Worker(cluster::WorkerArgs),
    /// List the runs in the store.
    Ls(ls::LsArgs),
    /// Show one run: config, provenance, status, last metrics.
    Show(show::ShowArgs),
    /// Compare a checkpoint's outputs with another implementation.
    #[command(subcommand)]
    Probe(probe::ProbeCommand),
    /// Train a backbone of the CPU demo (`pretrain clip`), saved in the HF layout.
    #[command(subcommand)]
    Pretrain(pretrain::PretrainCommand),
    /// Generate the synthetic world (images, COCO captions, instruct conversations).
    Synth(synth::SynthArgs),
    /// Time training steps on a named size.
    Bench(bench::BenchArgs),
    /// Inspect the data an experiment will train on.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Write a run's HTML report, or with no run the leaderboard of all runs.
    Report(report::ReportArgs),
    /// Compare runs on one HTML page: config diff, overlaid curves, metric deltas.
    Compare(compare::CompareArgs),
    /// Score model outputs against references (COCO captions, benchmarks), or run a
    /// benchmark on a run's model.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Caption images with a run's model (`path<TAB>caption` per image).
    Caption(caption::CaptionArgs),
    /// Ask a run's model about an image: one question, or a conversation from stdin.
    Chat(chat::ChatArgs),
    /// Export a run's LoRA adapters (PEFT layout), projector and a model card.
    Export(export::ExportArgs),
}

/// Parses the process arguments and runs the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let results = cli.results;
    match cli.command {
        Command::Run(a) => run::run(&results, a),
        Command::Sweep(a) => run::sweep(&results, a),
        Command::Worker(a) => cluster::worker(&results, a),
        Command::Ls(a) => ls::ls(&results, a),
        Command::Show(a) => show::show(&results, a),
        Command::Probe(c) => probe::probe(c),
        Command::Synth(a) => synth::synth(a),
        Command::Pretrain(c) => pretrain::pretrain(c),
        Command::Data(c) => data::data(c),
        Command::Bench(a) => bench::bench(a),
        Command::Report(a) => report::report(&results, a),
        Command::Compare(a) => compare::compare(&results, a),
        Command::Eval(c) => eval::eval(&results, c),
        Command::Caption(a) => caption::caption(&results, a),
        Command::Chat(a) => chat::chat(&results, a),
        Command::Export(a) => export::export(&results, a),
    }
}
