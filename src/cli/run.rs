//! `harness run` and `harness sweep` (with `--slurm` and `--status`: [`super::cluster`]).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::store::{self, Store};
use crate::sweep::plan::{self, ExecOptions, Outcome, ReuseMode, Seeds};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Experiment file.
    pub file: PathBuf,
    /// Continue an interrupted or failed run from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the plan (which stages run and why, which are reused and from where) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Which completed stages to reuse: `code`, those of the same config and code;
    /// `config`, any of the same config whatever the code (recorded in status.json).
    #[arg(long, value_enum, default_value_t = ReuseMode::Code)]
    pub reuse: ReuseMode,
    /// Run only the replica with this seed (`<name>-s<SEED>`), whether or not the file
    /// lists it in `seeds`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Devices to train on, replacing the files' `devices`: GPU ordinals (`--devices 0,1`
    /// trains data parallel on two GPUs); on the CPU, 0 once per worker (`--devices 0,0`).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub devices: Option<Vec<usize>>,
    /// Skip the run, exiting 0, when another live process holds it (what a sweep's
    /// side-by-side children do: another sweep may claim a run between the parent's check
    /// and the child's claim).
    #[arg(long, hide = true)]
    pub skip_held: bool,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Experiment files; all are validated before anything runs.
    #[arg(required_unless_present = "status")]
    pub files: Vec<PathBuf>,
    /// Print the plan (which stages run and why, which are reused and from where) and stop
    /// (with --slurm: also the batch script).
    #[arg(long)]
    pub dry_run: bool,
    /// Which completed stages to reuse: `code`, those of the same config and code;
    /// `config`, any of the same config whatever the code (recorded in status.json).
    #[arg(long, value_enum, default_value_t = ReuseMode::Code)]
    pub reuse: ReuseMode,
    /// Runs (and backbone builds) side by side, each in its own process: 0 = one per core
    /// on the CPU (each keeps about one core busy), one on a GPU.
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Run every experiment as N replicas, seeds `seed .. seed + N` (`<name>-s<seed>`),
    /// instead of the seeds its file lists. Not with `--slurm`, whose workers read the
    /// files as written: list the seeds in the files (`seeds = [..]`) there.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "slurm")]
    pub seeds: Option<u64>,
    /// Devices to train on, replacing the files' `devices` (not with `--slurm`, whose workers
    /// read the files as written): GPU ordinals (`--devices 0,1`
    /// trains data parallel on two GPUs); on the CPU, 0 once per worker (`--devices 0,0`).
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "slurm")]
    pub devices: Option<Vec<usize>>,
    /// Submit the sweep to Slurm as one array job of `harness worker` tasks instead of
    /// running it here; the plan and the task logs go to results/_sweeps/<sweep id>/.
    #[arg(long, conflicts_with = "jobs")]
    pub slurm: bool,
    #[command(flatten)]
    pub slurm_args: super::cluster::SlurmArgs,
    /// Show a submitted sweep: each run's state, the Slurm task and host of each stage,
    /// failures with their error.
    #[arg(long, value_name = "SWEEP_ID", conflicts_with_all = ["files", "slurm", "dry_run"])]
    pub status: Option<String>,
}

pub fn run(results: &Path, a: RunArgs) -> anyhow::Result<()> {
    let seeds = a.seed.map_or(Seeds::AsWritten, Seeds::Only);
    go(
        results,
        &[a.file],
        a.dry_run,
        a.resume,
        1,
        seeds,
        a.skip_held,
        a.reuse,
        a.devices,
    )
}

/// Sweeps continue interrupted runs: that is what re-running a sweep is for. A sweep
/// shares the results folder with other workers: runs they hold are skipped.
pub fn sweep(results: &Path, a: SweepArgs) -> anyhow::Result<()> {
    if let Some(id) = &a.status {
        return super::cluster::status(results, id);
    }
    if a.slurm {
        return super::cluster::submit(results, &a.files, a.dry_run, a.reuse, &a.slurm_args);
    }
    let seeds = a.seeds.map_or(Seeds::AsWritten, Seeds::Count);
    go(
        results, &a.files, a.dry_run, true, a.jobs, seeds, true, a.reuse, a.devices,
    )
}

#[allow(clippy::too_many_arguments)]
fn go(
    results: &Path,
    files: &[PathBuf],
    dry_run: bool,
    resume: bool,
    jobs: usize,
    seeds: Seeds,
    skip_held: bool,
    reuse: ReuseMode,
    devices: Option<Vec<usize>>,
) -> anyhow::Result<()> {
    let store = Store::new(results);
    let mut exps = plan::load_with(files, seeds)?;
    if let Some(d) = devices {
        for e in &mut exps {
            e.exp.devices = d.clone();
        }
    }
    let code = plan::code_state_here();
    if dry_run {
        let p = plan::plan(&store, &exps, &code, reuse)?;
        print!("{}", plan::describe(&p));
        print!(
            "{}",
            crate::sweep::backbones::describe(exps.iter().map(|e| &e.exp))
        );
        for e in &exps {
            print!(
                "{}:\n{}",
                e.exp.name,
                crate::sweep::estimate::describe(&e.exp)
            );
        }
        for e in &exps {
            let missing = crate::config::check_paths(&e.exp, &[1, 2]);
            if !missing.is_empty() {
                println!(
                    "note: {} needs, before it can run:\n  {}",
                    e.path.display(),
                    missing.join("\n  ")
                );
            }
        }
        return Ok(());
    }
    let runner = crate::sweep::runner::default_runner();
    let missing: Vec<String> = exps
        .iter()
        .flat_map(|e| {
            crate::config::check_paths(&e.exp, &[1, 2])
                .into_iter()
                .map(move |m| format!("{}: {m}", e.path.display()))
        })
        .collect();
    if runner.needs_inputs() && !missing.is_empty() {
        anyhow::bail!(
            "missing inputs; nothing was run:\n  {}",
            missing.join("\n  ")
        );
    }
    store::install_signal_handler();
    let opts = ExecOptions {
        resume,
        skip_held,
        reuse,
        ..Default::default()
    };
    let planned = plan::plan(&store, &exps, &code, reuse)?;
    let jobs = match jobs {
        0 => crate::sweep::parallel::auto_jobs(&planned),
        n => n,
    };
    let side_by_side = jobs > 1 && planned.len() > 1;
    if runner.needs_inputs() {
        // Stages only resolve backbones: the missing builtins are built here, once.
        crate::sweep::backbones::prepare(&planned, if side_by_side { jobs } else { 1 }, results)?;
    }
    let outcomes = if side_by_side {
        crate::sweep::parallel::sweep(&store, &planned, &code, jobs, results, reuse)?
    } else {
        plan::sweep(&store, &exps, &code, runner.as_ref(), &opts)?
    };
    let failed = print_outcomes(results, &outcomes);
    println!("results in {}", results.display());
    // Where to look next: each run's report, and the leaderboard over every run.
    for o in outcomes.iter().flatten() {
        let page = results.join(&o.run_id).join("report.html");
        if page.exists() {
            println!("report: {}", page.display());
        }
    }
    let reports = crate::report::default_reports_dir(results);
    match crate::report::leaderboard::write(&store, &reports, &Default::default()) {
        Ok(p) => println!("leaderboard: {}", p.display()),
        Err(e) => eprintln!("warning: no leaderboard: {e:#}"),
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} runs did not complete", outcomes.len());
    }
    Ok(())
}

/// Prints the table of what became of each run (errors in full on stderr); returns how
/// many did not complete here.
pub fn print_outcomes(results: &Path, outcomes: &[Outcome]) -> usize {
    println!("{:<40} {:<12} NOTE", "RUN", "STATE");
    let mut failed = 0;
    for o in outcomes {
        match o {
            Ok(o) => println!("{:<40} {:<12} {}", o.run_id, o.state.to_string(), o.note),
            Err((id, e)) => {
                failed += 1;
                let state = Store::new(results)
                    .read_status(id)
                    .map(|s| s.state.to_string())
                    .unwrap_or_else(|_| "failed".into());
                println!("{id:<40} {state:<12} {}", e.lines().next().unwrap_or(""));
                eprintln!("{id}: {e}");
            }
        }
    }
    failed
}
