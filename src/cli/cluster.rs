//! `harness sweep --slurm`, `harness sweep --status <id>` and `harness worker <id>`: thin
//! layers over [`crate::sweep::cluster`].

use std::path::{Path, PathBuf};

use clap::Args;

use crate::store::{self, Store};
use crate::sweep::cluster::{self, SubmitOptions, Submitted};
use crate::sweep::worker::{exit_code, EXIT_INTERRUPTED};

/// What `sweep --slurm` asks Slurm for (each needs `--slurm`).
#[derive(Args, Debug, Default)]
pub struct SlurmArgs {
    /// Array tasks, one worker each (default: one per experiment to train, at most 64).
    #[arg(long, requires = "slurm")]
    pub tasks: Option<u32>,
    /// Partition, or a comma-separated list (default: the cluster's default).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// GPUs per task.
    #[arg(long, requires = "slurm")]
    pub gpus_per_task: Option<u32>,
    /// CPUs per task.
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<u32>,
    /// Wall-clock limit per task: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
    /// Workers get SIGTERM 120 s before it, checkpoint and stop; submit again to resume.
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// Another sbatch option, one per flag: `--sbatch-arg=--account=proj`.
    #[arg(
        long = "sbatch-arg",
        value_name = "OPTION",
        requires = "slurm",
        allow_hyphen_values = true
    )]
    pub sbatch_args: Vec<String>,
}

/// `harness sweep --slurm FILES`: submits, or with `--dry-run` prints, the array job.
pub fn submit(
    results: &Path,
    files: &[PathBuf],
    dry_run: bool,
    reuse: crate::sweep::plan::ReuseMode,
    a: &SlurmArgs,
) -> anyhow::Result<()> {
    let store = Store::new(results);
    let opts = SubmitOptions {
        tasks: a.tasks,
        partition: a.partition.clone(),
        gpus_per_task: a.gpus_per_task,
        cpus_per_task: a.cpus_per_task,
        time: a.time.clone(),
        sbatch_args: a.sbatch_args.clone(),
        dry_run,
        reuse,
    };
    // Before reading the code state (which may warn): no Slurm is the first thing to say.
    if !dry_run {
        crate::sweep::slurm::check_available()?;
    }
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the harness executable: {e}"))?;
    let code = crate::sweep::plan::code_state_here();
    let needs_inputs = crate::sweep::runner::default_runner().needs_inputs();
    match cluster::submit(&store, files, &code, &opts, &exe, needs_inputs)? {
        Submitted::NothingToDo { id, runs } => {
            println!(
                "sweep {id}: nothing to do, all {runs} runs are completed; nothing was submitted"
            );
            println!("status: harness sweep --status {id}");
        }
        Submitted::DryRun { id, script, plan } => {
            println!("sweep {id} (dry run: nothing written or submitted)\n");
            print!("{plan}");
            println!("\nbatch script:\n{script}");
        }
        Submitted::Job {
            id,
            job,
            tasks,
            to_train,
            runs,
            dir,
            earlier,
        } => {
            println!(
                "sweep {id}: {to_train} of {runs} runs to train, plan in {}",
                dir.display()
            );
            if !earlier.is_empty() {
                let ids: Vec<String> = earlier.iter().map(|s| s.job.to_string()).collect();
                println!(
                    "submitted before as job {}: its interrupted runs resume, completed ones are skipped",
                    ids.join(", ")
                );
            }
            println!("submitted job {job}: {tasks} tasks");
            println!("watch it: squeue -j {}", job.id);
            println!("          harness sweep --status {id}");
            println!(
                "task logs: {}",
                dir.join("logs")
                    .join(format!("{id}-{}_*.log", job.id))
                    .display()
            );
        }
    }
    Ok(())
}

/// `harness sweep --status ID`.
pub fn status(results: &Path, id: &str) -> anyhow::Result<()> {
    print!("{}", cluster::status(&Store::new(results), id)?);
    Ok(())
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The sweep's id, as `harness sweep --slurm` printed it (a folder of results/_sweeps/).
    pub sweep_id: String,
}

/// `harness worker ID`: exits 0 when every run is completed or held elsewhere, 1 when a
/// run of its own failed, 143 when SIGTERM/SIGINT stopped it (its run checkpointed and is
/// marked interrupted; submitting the sweep again resumes it).
pub fn worker(results: &Path, a: WorkerArgs) -> anyhow::Result<()> {
    let outcomes = match cluster::work(results, &a.sweep_id) {
        Ok(o) => o,
        Err(e) if store::interrupted() => {
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_INTERRUPTED);
        }
        Err(e) => return Err(e),
    };
    super::run::print_outcomes(results, &outcomes);
    match exit_code(&outcomes) {
        0 => Ok(()),
        EXIT_INTERRUPTED => {
            eprintln!(
                "interrupted: runs in progress stopped at their last checkpoint; submit the sweep again to resume them"
            );
            std::process::exit(EXIT_INTERRUPTED);
        }
        _ => {
            let failed = outcomes.iter().filter(|o| o.is_err()).count();
            anyhow::bail!("{failed} of {} runs failed in this worker", outcomes.len())
        }
    }
}
