//! A sweep on a Slurm cluster. `harness sweep --slurm` plans the experiments as a local
//! sweep does, saves the plan in the sweep's folder and submits one array job whose tasks
//! each run `harness worker <id>`; a worker loads the saved plan and takes its runs as
//! [`super::worker`] does, claiming them through the lock files of the shared results
//! folder; `harness sweep --status <id>` reads back what became of each run.
//!
//! The sweep's folder, `results/_sweeps/<id>/`:
//! - `plan.json`: each run (name, file, run id, stage keys, the resolved experiment) and the
//!   working folder the experiments' relative paths are read from;
//! - `code/`: the code state the run ids were planned with (the workers' runs carry it);
//! - `sweep.sbatch`: the batch script of the latest submission;
//! - `jobs.json`: every submission (array job id, tasks, time);
//! - `logs/<id>-<array job>_<task>.log`: each task's output.
//!
//! The id hashes the run ids (which hash the configs and the code): the same experiment
//! files and code plan the same sweep, so submitting it again finds its folder, and its
//! workers resume what an earlier job left interrupted and skip what is done.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::parallel::needs_training;
use super::plan::{self, ExecOptions, Outcome, PlannedRun, ReuseMode};
use super::slurm::{self, JobId, SbatchOptions};
use crate::config::{self, LoadedExperiment};
use crate::fsutil::{now_rfc3339, read_json, write_json};
use crate::store::provenance::CodeState;
use crate::store::worker::WorkerInfo;
use crate::store::{self, StageStatus, State, Store};

/// What `harness sweep --slurm` asks of Slurm, beyond the plan.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Array tasks; `None`: one per run to train, at most [`MAX_AUTO_TASKS`].
    pub tasks: Option<u32>,
    pub partition: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// Wall-clock limit per task, in a Slurm time format.
    pub time: Option<String>,
    /// More sbatch options, one `#SBATCH` line each.
    pub sbatch_args: Vec<String>,
    /// Print the script and the plan; write and submit nothing.
    pub dry_run: bool,
    /// Which completed stages the workers reuse (`--reuse`).
    pub reuse: ReuseMode,
}

/// The most array tasks chosen by default (ask for more with `--tasks`).
pub const MAX_AUTO_TASKS: u32 = 64;

/// Where sweeps keep their folders inside the results folder.
pub const SWEEPS_DIR: &str = "_sweeps";

/// `plan.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub id: String,
    pub planned: String,
    /// The submission's working folder: workers run there, as relative paths in the
    /// experiments (data, `cache/`) mean it.
    pub cwd: PathBuf,
    pub runs: Vec<SavedRun>,
    /// Which completed stages the workers reuse (`--reuse` of the latest submission).
    #[serde(default)]
    pub reuse: ReuseMode,
}

/// One run of a saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    pub name: String,
    /// The experiment file it was planned from (for messages; workers read `experiment`).
    pub file: PathBuf,
    pub run_id: String,
    /// The stage keys this code gives the experiment (whatever `--reuse` then reused).
    pub stage1: String,
    pub stage2: String,
    /// The resolved experiment (every default filled in), as TOML.
    pub experiment: String,
    /// The seed when the run is one replica of its file's experiment (`seeds = [..]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u64>,
}

/// One submission, as `jobs.json` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job: JobId,
    pub tasks: u32,
    pub submitted: String,
}

/// `sweep-` and 12 hex digits of the sha256 of the sorted run ids.
pub fn sweep_id(runs: &[PlannedRun]) -> String {
    let mut ids: Vec<&str> = runs.iter().map(|p| p.run_id.as_str()).collect();
    ids.sort();
    let digest = hex::encode(Sha256::digest(ids.join("\n").as_bytes()));
    format!("sweep-{}", &digest[..12])
}

/// The folder of sweep `id`.
pub fn sweep_dir(results: &Path, id: &str) -> PathBuf {
    results.join(SWEEPS_DIR).join(id)
}

/// Writes `plan.json` and `code/` of the sweep `runs` make into its folder; returns the
/// plan. `cwd` is the folder workers run in (the experiments' relative paths mean it).
pub fn save(
    results: &Path,
    runs: &[PlannedRun],
    code: &CodeState,
    cwd: &Path,
    reuse: ReuseMode,
) -> Result<SavedPlan> {
    let id = sweep_id(runs);
    let dir = sweep_dir(results, &id);
    let saved = SavedPlan {
        id,
        planned: now_rfc3339(),
        cwd: cwd.to_path_buf(),
        runs: runs
            .iter()
            .map(|p| {
                // Not `p.keys`: a stage 1 reused across a code change gives stage 2 a key
                // of its own there, and workers check what this code makes.
                let keys = config::stage_keys(&p.exp.exp);
                SavedRun {
                    name: p.exp.exp.name.clone(),
                    file: p.exp.path.clone(),
                    run_id: p.run_id.clone(),
                    stage1: keys.stage1,
                    stage2: keys.stage2,
                    experiment: config::to_toml(&p.exp.exp),
                    replica: p.exp.replica,
                }
            })
            .collect(),
        reuse,
    };
    code.save(&dir.join("code"))
        .with_context(|| format!("writing the sweep's code state to {}", dir.display()))?;
    write_json(&dir.join("plan.json"), &saved)?;
    Ok(saved)
}

/// The saved plan of sweep `id` and its code state. A missing sweep is a one-line error
/// listing the sweeps there are.
pub fn load(results: &Path, id: &str) -> Result<(SavedPlan, CodeState)> {
    let dir = sweep_dir(results, id);
    let plan_file = dir.join("plan.json");
    if !plan_file.exists() {
        let known = known_sweeps(results);
        bail!(
            "no sweep `{id}` in {} ({}); `harness sweep --slurm FILES` prints the id of the sweep it submits",
            results.join(SWEEPS_DIR).display(),
            if known.is_empty() {
                "there are none".to_string()
            } else {
                format!("sweeps there: {}", known.join(", "))
            }
        );
    }
    let saved: SavedPlan = read_json(&plan_file)?;
    let code = CodeState::load(&dir.join("code"))
        .with_context(|| format!("reading the code state of sweep {id} in {}", dir.display()))?;
    Ok((saved, code))
}

fn known_sweeps(results: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(results.join(SWEEPS_DIR))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("plan.json").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl SavedPlan {
    /// The experiments, parsed back; each must still hash to the run id and stage keys it
    /// was planned with (a rebuilt harness may hash differently: then the sweep must be
    /// planned again, or its runs would not be the ones submitted).
    pub fn experiments(&self, code: &CodeState) -> Result<Vec<LoadedExperiment>> {
        self.runs
            .iter()
            .map(|r| {
                let origin = format!("sweep {} (run {})", self.id, r.name);
                let exp = config::parse(&r.experiment, &origin)?;
                let keys = config::stage_keys(&exp);
                let id = plan::run_id(&exp.name, &keys, code);
                if id != r.run_id || keys.stage1 != r.stage1 || keys.stage2 != r.stage2 {
                    bail!(
                        "{origin}: planned as {} but this harness makes it {id}: it is not the \
                         build that planned the sweep; submit the sweep again with this build",
                        r.run_id
                    );
                }
                Ok(LoadedExperiment {
                    path: r.file.clone(),
                    exp,
                    replica: r.replica,
                })
            })
            .collect()
    }
}

fn read_submissions(dir: &Path) -> Vec<Submission> {
    read_json(&dir.join("jobs.json")).unwrap_or_default()
}

/// What [`submit`] did.
#[derive(Debug)]
pub enum Submitted {
    /// Every run is completed: nothing was submitted.
    NothingToDo { id: String, runs: usize },
    /// `--dry-run`: the script and the plan, nothing written or submitted.
    DryRun {
        id: String,
        script: String,
        plan: String,
    },
    /// One array job was submitted.
    Job {
        id: String,
        job: JobId,
        tasks: u32,
        /// Runs with a stage to train, of all runs.
        to_train: usize,
        runs: usize,
        dir: PathBuf,
        /// Earlier submissions of the same sweep.
        earlier: Vec<Submission>,
    },
}

/// `harness sweep --slurm`: checks that a Slurm client is there (unless `--dry-run`), loads
/// and plans `files` against `store`, and submits one array job of workers for the runs
/// left to train, each task running `harness_exe --results <results> worker <id>`.
/// Nothing is written before every check passed.
pub fn submit(
    store: &Store,
    files: &[PathBuf],
    code: &CodeState,
    opts: &SubmitOptions,
    harness_exe: &Path,
    needs_inputs: bool,
) -> Result<Submitted> {
    let sbatch = if opts.dry_run {
        None
    } else {
        Some(slurm::check_available()?)
    };
    let exps = plan::load_all(files)?;
    if needs_inputs && !opts.dry_run {
        let missing: Vec<String> = exps
            .iter()
            .flat_map(|e| {
                config::check_paths(&e.exp, &[1, 2])
                    .into_iter()
                    .map(move |m| format!("{}: {m}", e.path.display()))
            })
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing inputs; nothing was submitted:\n  {}",
                missing.join("\n  ")
            );
        }
    }
    let planned = plan::plan(store, &exps, code, opts.reuse)?;
    let id = sweep_id(&planned);
    let results = std::path::absolute(&store.root)
        .with_context(|| format!("cannot resolve {}", store.root.display()))?;
    let dir = sweep_dir(&results, &id);
    let to_train = planned.iter().filter(|p| needs_training(p)).count();
    if to_train == 0 && !opts.dry_run {
        return Ok(Submitted::NothingToDo {
            id,
            runs: planned.len(),
        });
    }
    let tasks = opts
        .tasks
        .unwrap_or_else(|| (to_train as u32).clamp(1, MAX_AUTO_TASKS));
    let sopts = SbatchOptions {
        partition: opts.partition.clone(),
        gpus_per_task: opts.gpus_per_task,
        cpus_per_task: opts.cpus_per_task,
        time: opts.time.clone(),
        job_name: id.clone(),
        extra_args: opts.sbatch_args.clone(),
        ..SbatchOptions::new(tasks, dir.join("logs"))
    };
    let script = slurm::sbatch_script(&sopts, harness_exe, &results, &id)?;
    if opts.dry_run {
        let mut text = plan::describe(&planned);
        text.push_str(&super::backbones::describe(exps.iter().map(|e| &e.exp)));
        return Ok(Submitted::DryRun {
            id,
            script,
            plan: text,
        });
    }
    let partitions = slurm::partitions()?;
    if let Some(p) = &opts.partition {
        slurm::check_partition_in(p, &partitions)
            .map_err(|e| anyhow!("{e}: pass one of them to --partition"))?;
    }
    slurm::check_submission(&sopts, &partitions)?;

    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    save(&results, &planned, code, &cwd, opts.reuse)?;
    let script_path = dir.join("sweep.sbatch");
    slurm::write_script(&script_path, &script, &sopts)?;
    let earlier = read_submissions(&dir);
    let job = slurm::submit(&script_path, sbatch.as_deref().expect("checked above"))?;
    let mut all = earlier.clone();
    all.push(Submission {
        job: job.clone(),
        tasks,
        submitted: now_rfc3339(),
    });
    write_json(&dir.join("jobs.json"), &all)?;
    Ok(Submitted::Job {
        id,
        job,
        tasks,
        to_train,
        runs: planned.len(),
        dir,
        earlier,
    })
}

/// `harness worker <id>`: loads sweep `id` from `results`, moves to its working folder,
/// builds the builtin backbones its runs need (one worker each, the others waiting) and
/// takes runs until none is left that it could run. SIGTERM (Slurm's warning before the
/// time limit) stops the run in progress at a checkpoint, marked interrupted.
pub fn work(results: &Path, id: &str) -> Result<Vec<Outcome>> {
    let results = std::path::absolute(results)
        .with_context(|| format!("cannot resolve {}", results.display()))?;
    let (saved, code) = load(&results, id)?;
    if std::env::current_dir().ok().as_deref() != Some(saved.cwd.as_path()) {
        std::env::set_current_dir(&saved.cwd).with_context(|| {
            format!(
                "sweep {id} was planned in {}, which this node cannot enter",
                saved.cwd.display()
            )
        })?;
    }
    let exps = saved.experiments(&code)?;
    let store = Store::new(&results);
    store::install_signal_handler();
    eprintln!(
        "harness worker: sweep {id}, {} runs, {}",
        exps.len(),
        WorkerInfo::current()
    );
    let runner = super::runner::default_runner();
    let planned = plan::plan(&store, &exps, &code, saved.reuse)?;
    if runner.needs_inputs() {
        super::backbones::prepare_shared(&planned)?;
    }
    let opts = ExecOptions {
        resume: true,
        skip_held: true,
        reuse: saved.reuse,
        ..Default::default()
    };
    super::worker::work(&store, &planned, &code, runner.as_ref(), &opts)
}

/// One run of [`SweepStatus`].
#[derive(Debug, Clone)]
pub struct RunRow {
    pub name: String,
    pub run_id: String,
    /// As `harness ls` shows it (`pending` before it started).
    pub state: String,
    /// Each stage: its state and who trained it, or where it was reused from.
    pub stages: [String; 2],
    /// The first line of a failed or interrupted run's error.
    pub error: Option<String>,
}

/// What became of a submitted sweep.
#[derive(Debug, Clone)]
pub struct SweepStatus {
    pub id: String,
    pub dir: PathBuf,
    pub runs: Vec<RunRow>,
    pub jobs: Vec<Submission>,
    /// `squeue` lines of the sweep's jobs still queued (empty without Slurm).
    pub queue: Vec<String>,
}

/// The state and the worker of a stage of this run, or where it was reused from (and who
/// trained it there).
fn stage_text(store: &Store, name: &str, st: Option<&StageStatus>) -> String {
    let Some(st) = st else {
        return "-".into();
    };
    let who = |s: &StageStatus| {
        s.worker
            .as_ref()
            .map_or_else(|| "?".to_string(), WorkerInfo::short)
    };
    if st.state == State::Reused {
        let source = store
            .read_status(&st.run_id)
            .ok()
            .and_then(|s| s.stages.get(name).cloned());
        return match source {
            Some(src) => format!("reused from {} ({})", st.run_id, who(&src)),
            None => format!("reused from {}", st.run_id),
        };
    }
    format!("{} {}", st.state, who(st))
}

/// `harness sweep --status <id>`.
pub fn status(store: &Store, id: &str) -> Result<SweepStatus> {
    let (saved, _) = load(&store.root, id)?;
    let dir = sweep_dir(&store.root, id);
    let runs = saved
        .runs
        .iter()
        .map(|r| {
            let status = store.read_status(&r.run_id).ok();
            let stage =
                |n: &str| stage_text(store, n, status.as_ref().and_then(|s| s.stages.get(n)));
            let state = status.as_ref().map_or("pending".to_string(), |s| {
                store.effective_state(s).to_string()
            });
            RunRow {
                name: r.name.clone(),
                run_id: r.run_id.clone(),
                error: status
                    .as_ref()
                    .filter(|s| matches!(s.state, State::Failed | State::Interrupted))
                    .and_then(|s| s.error.as_deref())
                    .map(|e| e.lines().next().unwrap_or("").to_string()),
                stages: [stage("stage1"), stage("stage2")],
                state,
            }
        })
        .collect();
    let jobs = read_submissions(&dir);
    Ok(SweepStatus {
        id: id.into(),
        dir,
        runs,
        queue: queued(&jobs),
        jobs,
    })
}

/// `squeue` lines (`task state node-or-reason`) of the jobs still queued; none when
/// there is no `squeue` or it cannot answer.
fn queued(jobs: &[Submission]) -> Vec<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if jobs.is_empty() || slurm::find_on_path("squeue", &path).is_none() {
        return vec![];
    }
    let ids: Vec<String> = jobs.iter().map(|j| j.job.id.to_string()).collect();
    // One job at a time: squeue refuses the whole list when one id is no longer known.
    ids.iter()
        .filter_map(|id| {
            Command::new("squeue")
                .args(["-h", "-j", id, "-o", "%i %T %R"])
                .output()
                .ok()
                .filter(|o| o.status.success())
        })
        .flat_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

impl std::fmt::Display for SweepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sweep {}: {} runs ({})",
            self.id,
            self.runs.len(),
            self.dir.display()
        )?;
        for j in &self.jobs {
            writeln!(
                f,
                "job {}: {} tasks, submitted {}",
                j.job, j.tasks, j.submitted
            )?;
        }
        if self.jobs.is_empty() {
            writeln!(f, "no job submitted")?;
        } else if self.queue.is_empty() {
            writeln!(f, "queue: none of its jobs is queued or running")?;
        } else {
            writeln!(f, "queue: {}", self.queue.join(", "))?;
        }
        let name_w = self
            .runs
            .iter()
            .map(|r| r.run_id.len())
            .max()
            .unwrap_or(3)
            .max(3);
        let s1_w = self
            .runs
            .iter()
            .map(|r| r.stages[0].len())
            .max()
            .unwrap_or(7)
            .max(7);
        writeln!(
            f,
            "{:<name_w$}  {:<11}  {:<s1_w$}  STAGE 2",
            "RUN", "STATE", "STAGE 1"
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "{:<name_w$}  {:<11}  {:<s1_w$}  {}",
                r.run_id, r.state, r.stages[0], r.stages[1]
            )?;
        }
        for r in self.runs.iter().filter(|r| r.error.is_some()) {
            writeln!(
                f,
                "{} {}: {}",
                r.run_id,
                r.state,
                r.error.as_deref().unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(commit: &str) -> CodeState {
        CodeState {
            commit: commit.into(),
            branch: None,
            dirty: false,
            diff_hash: None,
            diff_bytes: 0,
            changed_files: vec![],
            diff: vec![],
        }
    }

    fn exp(dir: &Path, name: &str, rank: u32) -> LoadedExperiment {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\nseed = 1\n[model]\nvision = \"builtin:v\"\nlm = \"builtin:l\"\n\
                 [stage2]\nlora_rank = {rank}\n"
            ),
        )
        .unwrap();
        config::load(&p).unwrap()
    }

    #[test]
    fn sweep_id_names_the_set_of_runs() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(&d.path().join("results"));
        let (a, b) = (exp(d.path(), "a", 4), exp(d.path(), "b", 8));
        let c = code("0123456789abcdef");
        let id = |exps: &[LoadedExperiment]| {
            sweep_id(&plan::plan(&store, exps, &c, ReuseMode::Code).unwrap())
        };
        let ab = id(&[a.clone(), b.clone()]);
        assert_eq!(ab, id(&[b.clone(), a.clone()]), "order does not matter");
        assert_ne!(ab, id(std::slice::from_ref(&a)));
        assert!(
            ab.len() == 18
                && ab.starts_with("sweep-")
                && ab[6..].bytes().all(|x| x.is_ascii_hexdigit()),
            "{ab}"
        );
        // Another commit makes other run ids, so another sweep.
        let other = sweep_id(
            &plan::plan(&store, &[a, b], &code("fedcba9876543210"), ReuseMode::Code).unwrap(),
        );
        assert_ne!(ab, other);
    }

    #[test]
    fn saved_plan_round_trips_and_refuses_another_build() {
        let d = tempfile::tempdir().unwrap();
        let results = d.path().join("results");
        let store = Store::new(&results);
        let exps = [exp(d.path(), "a", 4), exp(d.path(), "b", 8)];
        let c = code("0123456789abcdef");
        let planned = plan::plan(&store, &exps, &c, ReuseMode::Code).unwrap();
        let saved = save(&results, &planned, &c, d.path(), ReuseMode::Config).unwrap();
        assert_eq!(saved.reuse, ReuseMode::Config);
        assert_eq!(saved.id, sweep_id(&planned));
        assert_eq!(saved.cwd, d.path());
        let (back, back_code) = load(&results, &saved.id).unwrap();
        assert_eq!(back, saved);
        assert_eq!(back_code, c);
        let loaded = back.experiments(&back_code).unwrap();
        assert_eq!(loaded.len(), 2);
        for (l, e) in loaded.iter().zip(&exps) {
            assert_eq!(l.exp, e.exp, "the resolved experiment parses back equal");
            assert_eq!(l.path, e.path);
        }
        // Under another code state the runs would get other ids: refused, naming the run.
        let e = back
            .experiments(&code("fedcba9876543210"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("sweep {} (run a): planned as a-", saved.id))
                && e.contains("-0123456")
                && e.contains("-fedcba9")
                && e.ends_with("submit the sweep again with this build"),
            "{e}"
        );
        let e = load(&results, "sweep-nope").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "no sweep `sweep-nope` in {} (sweeps there: {}); `harness sweep --slurm FILES` \
                 prints the id of the sweep it submits",
                results.join(SWEEPS_DIR).display(),
                saved.id
            )
        );
        let e = load(&d.path().join("empty"), "x").unwrap_err().to_string();
        assert!(e.contains("(there are none)"), "{e}");
    }
}
