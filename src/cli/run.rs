//! `harness run` and `harness sweep`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::store::{self, Store};
use crate::sweep::plan::{self, ExecOptions, ReuseMode};

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
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Experiment files; all are validated before anything runs.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print the plan (which stages run and why, which are reused and from where) and stop.
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
}

pub fn run(results: &Path, a: RunArgs) -> anyhow::Result<()> {
    go(results, &[a.file], a.dry_run, a.resume, 1, a.reuse)
}

/// Sweeps continue interrupted runs: that is what re-running a sweep is for.
pub fn sweep(results: &Path, a: SweepArgs) -> anyhow::Result<()> {
    go(results, &a.files, a.dry_run, true, a.jobs, a.reuse)
}

fn go(
    results: &Path,
    files: &[PathBuf],
    dry_run: bool,
    resume: bool,
    jobs: usize,
    reuse: ReuseMode,
) -> anyhow::Result<()> {
    let store = Store::new(results);
    let exps = plan::load_all(files)?;
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
        plan::sweep(&store, files, &code, runner.as_ref(), &opts)?
    };
    println!("{:<40} {:<12} NOTE", "RUN", "STATE");
    let mut failed = 0;
    for o in &outcomes {
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
