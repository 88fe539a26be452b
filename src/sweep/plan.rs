//! Plans and runs experiments: each experiment is two stages keyed by their config and the
//! code fingerprint; a stage whose key some run already completed is reused (with
//! `--reuse config`, any result of the same config, whatever the code), the rest run under
//! claims so that two sweep workers on one results folder never run the same stage twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{self, LoadedExperiment, StageKeys};
use crate::fsutil::{now_rfc3339, write_atomic, write_json};
use crate::store::metrics::{self, MetricsWriter};
use crate::store::provenance::{CodeState, Provenance};
use crate::store::worker::WorkerInfo;
use crate::store::{self, CodeChange, LiveRun, StageStatus, State, Store};
use crate::train::stage::{Interrupted, RunContext, StageContext, StageRunner};

/// Which completed stages a run may reuse (`--reuse`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ReuseMode {
    /// Results of this code only: the same config and the same code fingerprint.
    #[default]
    Code,
    /// Any result with the same config, whatever code trained it (for a code change you
    /// know does not matter); recorded in `status.json` and shown in the reports.
    Config,
}

impl ReuseMode {
    /// The command-line value.
    pub fn arg(self) -> &'static str {
        match self {
            ReuseMode::Code => "code",
            ReuseMode::Config => "config",
        }
    }
}

/// What will happen to one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageAction {
    /// Train it in this run, and why.
    Run { why: RunReason },
    /// Continue this run's interrupted attempt from its latest checkpoint.
    Resume,
    /// Use the completed result of another run (or one planned earlier in the sweep);
    /// `across_code` when other code trained it (`--reuse config`).
    Reuse {
        from_run: String,
        planned: bool,
        across_code: Option<CodeChange>,
    },
    /// Already completed in this very run.
    Done,
}

/// Why a stage trains.
#[derive(Debug, Clone, PartialEq)]
pub enum RunReason {
    /// No run completed this key, nor (in any mode) this config.
    NoResult,
    /// A run completed this config, but with other code.
    CodeDiffers {
        from_run: String,
        change: CodeChange,
    },
}

#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub exp: LoadedExperiment,
    pub keys: StageKeys,
    pub run_id: String,
    /// The run's state in the store if it exists (with dead heartbeats shown as interrupted).
    pub existing: Option<State>,
    pub stages: [StageAction; 2],
}

/// `name-<config hash 8>-<commit 7>[-d<diff hash 8>]`.
pub fn run_id(name: &str, keys: &StageKeys, code: &CodeState) -> String {
    format!("{name}-{}-{}", &keys.config[..8], code.id_suffix())
}

/// Which seeds the experiments run with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Seeds {
    /// As the files say: `seed`, or one replica per seed of `seeds = [..]`.
    #[default]
    AsWritten,
    /// `sweep --seeds N`: every experiment as N replicas, seeds `seed .. seed + N`.
    Count(u64),
    /// `run --seed S`: the replica with seed S only.
    Only(u64),
}

/// The experiments one loaded file stands for under `seeds`: itself, or its replicas
/// (`<name>-s<seed>`, [`config::replica`]).
pub fn expand(e: LoadedExperiment, seeds: Seeds) -> Vec<LoadedExperiment> {
    let list: Vec<u64> = match seeds {
        Seeds::AsWritten => e.exp.seeds.clone(),
        Seeds::Count(n) => (0..n).map(|k| e.exp.seed + k).collect(),
        Seeds::Only(s) => vec![s],
    };
    if list.is_empty() {
        return vec![e];
    }
    list.into_iter()
        .map(|s| LoadedExperiment {
            path: e.path.clone(),
            exp: config::replica(&e.exp, s),
            replica: Some(s),
        })
        .collect()
}

/// Loads and validates every file before anything runs; all problems are reported together.
pub fn load_all(files: &[PathBuf]) -> Result<Vec<LoadedExperiment>> {
    load_with(files, Seeds::AsWritten)
}

/// [`load_all`], each file expanded into its replicas under `seeds`.
pub fn load_with(files: &[PathBuf], seeds: Seeds) -> Result<Vec<LoadedExperiment>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match config::load(f) {
            Ok(e) => out.extend(expand(e, seeds)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} of {} experiment files are invalid; nothing was run:\n{}",
            errors.len(),
            files.len(),
            errors.join("\n")
        );
    }
    let mut names = std::collections::BTreeMap::new();
    for e in &out {
        if let Some(prev) = names.insert(e.exp.name.clone(), e.path.clone()) {
            bail!(
                "experiment name {:?} is used by both {} and {}",
                e.exp.name,
                prev.display(),
                e.path.display()
            );
        }
    }
    Ok(out)
}

/// Decides, for each experiment in order, which stages run and which are reused.
pub fn plan(
    store: &Store,
    exps: &[LoadedExperiment],
    code: &CodeState,
    reuse: ReuseMode,
) -> Result<Vec<PlannedRun>> {
    let mut planned: Vec<PlannedRun> = Vec::new();
    for e in exps {
        let mut keys = config::stage_keys(&e.exp);
        let id = run_id(&e.exp.name, &keys, code);
        let status = store.read_status(&id).ok();
        let existing = status.as_ref().map(|s| store.effective_state(s));
        let mut stages = [StageAction::Resume, StageAction::Resume];
        for (i, n) in [1u8, 2].into_iter().enumerate() {
            let (key, config_key) = keys.of(n);
            let (key, config_key) = (key.to_string(), config_key.to_string());
            let name = format!("stage{n}");
            let own = status.as_ref().and_then(|s| s.stages.get(&name));
            // The key of the result this stage ends up using (stage 2's key chains it).
            let mut result_key = key.clone();
            stages[i] = if let Some(own) =
                own.filter(|o| matches!(o.state, State::Completed | State::Reused))
            {
                result_key = own.key.clone();
                if own.state == State::Completed {
                    StageAction::Done
                } else {
                    StageAction::Reuse {
                        from_run: own.run_id.clone(),
                        planned: false,
                        across_code: own.reused_across_code.clone(),
                    }
                }
            } else if let Some(rec) = store.completed_stage(&key) {
                StageAction::Reuse {
                    from_run: rec.run_id,
                    planned: false,
                    across_code: None,
                }
            } else if let Some(rec) = (reuse == ReuseMode::Config)
                .then(|| store.completed_stage_by_config(&config_key))
                .flatten()
            {
                result_key = rec.key;
                StageAction::Reuse {
                    across_code: Some(store.code_change_from(&rec.run_id)),
                    from_run: rec.run_id,
                    planned: false,
                }
            } else if let Some(p) = planned.iter().find(|p| {
                p.keys.of(n).0 == key
                    && matches!(p.stages[i], StageAction::Run { .. } | StageAction::Resume)
            }) {
                StageAction::Reuse {
                    from_run: p.run_id.clone(),
                    planned: true,
                    across_code: None,
                }
            } else if own.is_some() {
                StageAction::Resume
            } else {
                let why = match store.completed_stage_by_config(&config_key) {
                    Some(rec) => RunReason::CodeDiffers {
                        change: store.code_change_from(&rec.run_id),
                        from_run: rec.run_id,
                    },
                    None => RunReason::NoResult,
                };
                StageAction::Run { why }
            };
            if n == 1 {
                keys.stage2 =
                    config::stage_code_key(&keys.stage2_config, &keys.code, Some(&result_key));
            }
        }
        planned.push(PlannedRun {
            exp: e.clone(),
            keys,
            run_id: id,
            existing,
            stages,
        });
    }
    Ok(planned)
}

/// The plan as a table for `--dry-run`.
pub fn describe(plan: &[PlannedRun]) -> String {
    let mut s = String::new();
    for p in plan {
        s.push_str(&format!(
            "{}  ({})  run {}{}\n",
            p.exp.exp.name,
            p.exp.path.display(),
            p.run_id,
            p.existing.map(|st| format!(" [{st}]")).unwrap_or_default()
        ));
        for (i, a) in p.stages.iter().enumerate() {
            let key = if i == 0 {
                &p.keys.stage1
            } else {
                &p.keys.stage2
            };
            let what = match a {
                StageAction::Run {
                    why: RunReason::NoResult,
                } => "run: no result for this key".to_string(),
                StageAction::Run {
                    why: RunReason::CodeDiffers { from_run, change },
                } => format!(
                    "run: results exist for this config (run {from_run}, {}) but {}",
                    change.commit(),
                    change.files_summary()
                ),
                StageAction::Resume => "resume from its latest checkpoint".to_string(),
                StageAction::Done => "done (completed in this run)".to_string(),
                StageAction::Reuse {
                    from_run,
                    planned: true,
                    ..
                } => format!("reuse from {from_run} (runs earlier in this sweep)"),
                StageAction::Reuse {
                    from_run,
                    across_code: Some(change),
                    ..
                } => format!(
                    "reuse from {from_run} across a code change from {} ({})",
                    change.commit(),
                    change.files_summary()
                ),
                StageAction::Reuse { from_run, .. } => format!("reuse from {from_run}"),
            };
            s.push_str(&format!("  stage {} @ {}: {what}\n", i + 1, &key[..12]));
        }
    }
    s
}

/// Options for executing runs.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Continue interrupted or failed runs (sweeps always do).
    pub resume: bool,
    /// Seconds between metric flushes.
    pub flush_every: Duration,
    /// How long to wait for another worker's claim on a stage before giving up.
    pub stage_wait: Duration,
    /// Skip a run another live process holds (sweep workers sharing a results folder)
    /// instead of failing on it (`harness run`, which was asked for that run).
    pub skip_held: bool,
    /// Which completed stages may be reused.
    pub reuse: ReuseMode,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            resume: false,
            flush_every: Duration::from_secs(2),
            stage_wait: Duration::from_secs(24 * 3600),
            skip_held: false,
            reuse: ReuseMode::Code,
        }
    }
}

/// Outcome of one planned run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: String,
    pub name: String,
    pub state: State,
    /// `skipped` when already completed, otherwise what this invocation did.
    pub note: String,
}

/// What became of one run of a sweep: its outcome, or its id and the error.
pub type Outcome = std::result::Result<RunOutcome, (String, String)>;

/// Runs one planned experiment to completion (or failure / interruption).
pub fn execute(
    store: &Store,
    p: &PlannedRun,
    code: &CodeState,
    runner: &dyn StageRunner,
    opts: &ExecOptions,
) -> Result<RunOutcome> {
    let outcome = |state, note: &str| RunOutcome {
        run_id: p.run_id.clone(),
        name: p.exp.exp.name.clone(),
        state,
        note: note.into(),
    };
    let previous = store.read_status(&p.run_id).ok();
    if let Some(prev) = &previous {
        match store.effective_state(prev) {
            State::Completed => return Ok(outcome(State::Completed, "skipped: already completed")),
            State::Running | State::Pending => {}
            s if !opts.resume => bail!(
                "run {} is {s}; pass --resume to continue it from its latest checkpoint",
                p.run_id
            ),
            _ => {}
        }
    }
    let claim = store.claim_run(&p.run_id)?;
    let dir = store.run_dir(&p.run_id);
    // Another worker may have completed it between planning and claiming.
    if let Ok(s) = store.read_status(&p.run_id) {
        if s.state == State::Completed {
            return Ok(outcome(
                State::Completed,
                "skipped: completed by another worker",
            ));
        }
    }
    write_atomic(
        &dir.join("run.toml"),
        config::to_toml(&p.exp.exp).as_bytes(),
    )?;
    let mut prov = Provenance::new(code.clone());
    if let Ok(old) = store.read_provenance(&p.run_id) {
        prov.started = old.started;
    }
    write_json(&dir.join("provenance.json"), &prov)?;
    if code.dirty {
        write_atomic(&dir.join("diff.patch"), &code.diff)?;
    }
    let resumed = previous.is_some();
    let live = LiveRun::start(&dir, claim, runner.name(), previous)?;
    // Which process, Slurm task and task log ran this attempt: the way from a run to the
    // output of the worker that ran it.
    store::log_line(
        &dir,
        &format!(
            "{} run {} ({}) in {}",
            if resumed { "resume" } else { "start" },
            p.run_id,
            p.exp.path.display(),
            WorkerInfo::current()
        ),
    );
    let mut writer = MetricsWriter::new(&dir.join("metrics"), &p.run_id, opts.flush_every)?;

    let result = run_stages(store, p, runner, opts, &live, &mut writer);
    writer.flush()?;
    drop(writer);
    let (state, error) = match &result {
        Ok(()) => (State::Completed, None),
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            (State::Interrupted, Some(format!("{e:#}")))
        }
        Err(e) => (State::Failed, Some(format!("{e:#}"))),
    };
    if state == State::Completed {
        metrics::compact(&dir.join("metrics"))?;
    }
    prov.ended = Some(now_rfc3339());
    write_json(&dir.join("provenance.json"), &prov)?;
    store::log_line(
        &dir,
        &format!(
            "{state}{}",
            error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    );
    live.finish(state, error.clone())?;
    // Every finished run (completed, failed or interrupted) gets its report; a report that
    // cannot be drawn never changes the run's outcome.
    if let Err(e) = crate::report::write_run_report(store, &p.run_id) {
        store::log_line(&dir, &format!("report not written: {e:#}"));
    }
    match result {
        Ok(()) => Ok(outcome(
            State::Completed,
            if resumed {
                "resumed and completed"
            } else {
                "completed"
            },
        )),
        Err(e) => Err(e.context(format!("run {} {state}", p.run_id))),
    }
}

fn run_stages(
    store: &Store,
    p: &PlannedRun,
    runner: &dyn StageRunner,
    opts: &ExecOptions,
    live: &LiveRun,
    writer: &mut MetricsWriter,
) -> Result<()> {
    let dir = store.run_dir(&p.run_id);
    let mut stage1_dir: Option<PathBuf> = None;
    // The key of the stage-1 result stage 2 starts from: stage 2's key chains it.
    let mut stage1_result: Option<String> = None;
    for n in [1u8, 2] {
        let name = format!("stage{n}");
        let config_key = p.keys.of(n).1.to_string();
        let key = match &stage1_result {
            Some(k1) => config::stage_code_key(&config_key, &p.keys.code, Some(k1)),
            None => p.keys.stage1.clone(),
        };
        let own = live.status().stages.get(&name).cloned();
        let (result_run, result_key) = match own {
            Some(s) if matches!(s.state, State::Completed | State::Reused) => (s.run_id, s.key),
            _ => match acquire_stage(store, &key, &config_key, n, &p.run_id, opts, live, &name)? {
                Acquired::Reuse { run, key } => (run, key),
                Acquired::Train(claim) => {
                    let started = now_rfc3339();
                    let worker = WorkerInfo::current();
                    store::log_line(&dir, &format!("stage {n}: training in {worker}"));
                    let status = |state, ended| StageStatus {
                        key: key.clone(),
                        state,
                        run_id: p.run_id.clone(),
                        started: Some(started.clone()),
                        ended,
                        worker: Some(worker.clone()),
                        reused_across_code: None,
                    };
                    live.set_stage(&name, status(State::Running, None))?;
                    let mut ctx = StageContext {
                        stage: n,
                        exp: &p.exp.exp,
                        run_id: &p.run_id,
                        run_dir: dir.clone(),
                        checkpoint_dir: dir.join("checkpoints").join(&name),
                        stage1_dir: stage1_dir.clone(),
                        metrics: writer,
                        resume: true,
                    };
                    let r = runner.run(&mut ctx);
                    let state = match &r {
                        Ok(()) => State::Completed,
                        Err(e) if e.downcast_ref::<Interrupted>().is_some() => State::Interrupted,
                        Err(_) => State::Failed,
                    };
                    live.set_stage(&name, status(state, Some(now_rfc3339())))?;
                    r?;
                    store.record_stage(&key, &config_key, &p.keys.code, n, &p.run_id)?;
                    drop(claim);
                    (p.run_id.clone(), key.clone())
                }
            },
        };
        if n == 1 {
            stage1_result = Some(result_key);
        }
        stage1_dir = Some(
            store
                .run_dir(&result_run)
                .join("checkpoints")
                .join("stage1"),
        );
    }
    // After stage 2 and its own evaluation: the experiment's `[[eval.bench]]`.
    runner.after_stages(&mut RunContext {
        store,
        run_id: &p.run_id,
        exp: &p.exp.exp,
        metrics: writer,
    })
}

enum Acquired {
    /// A completed result to use: the run that trained it and the key it is recorded under.
    Reuse { run: String, key: String },
    /// This run holds the stage's claim and must train it.
    Train(store::Claim),
}

/// Reuses a completed stage (of this code; with `--reuse config`, of any code if this
/// code's is missing), or claims it for training; waits while another live worker trains
/// it.
#[allow(clippy::too_many_arguments)]
fn acquire_stage(
    store: &Store,
    key: &str,
    config_key: &str,
    n: u8,
    run_id: &str,
    opts: &ExecOptions,
    live: &LiveRun,
    name: &str,
) -> Result<Acquired> {
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let found = match store.completed_stage(key) {
            Some(rec) => Some((rec, None)),
            None if opts.reuse == ReuseMode::Config => {
                store.completed_stage_by_config(config_key).map(|rec| {
                    let change = store.code_change_from(&rec.run_id);
                    (rec, Some(change))
                })
            }
            None => None,
        };
        if let Some((rec, across_code)) = found {
            if rec.run_id != run_id {
                let how = match &across_code {
                    Some(c) => format!(
                        " across a code change from {} ({})",
                        c.commit(),
                        c.files_summary()
                    ),
                    None => String::new(),
                };
                live.set_stage(
                    name,
                    StageStatus {
                        key: rec.key.clone(),
                        state: State::Reused,
                        run_id: rec.run_id.clone(),
                        started: None,
                        ended: Some(now_rfc3339()),
                        worker: None,
                        reused_across_code: across_code,
                    },
                )?;
                store::log_line(
                    &live.dir,
                    &format!("stage {n}: reusing {} from {}{how}", rec.key, rec.run_id),
                );
            }
            return Ok(Acquired::Reuse {
                run: rec.run_id,
                key: rec.key,
            });
        }
        if let Some(c) = store.claim_stage(key, run_id)? {
            // Completed between the check and the claim: reuse rather than retrain.
            if store.completed_stage(key).is_some() {
                drop(c);
                continue;
            }
            return Ok(Acquired::Train(c));
        }
        if store::interrupted() {
            return Err(Interrupted.into());
        }
        if start.elapsed() > opts.stage_wait {
            bail!("stage {n} ({key}) is still being trained by another worker");
        }
        if !said {
            eprintln!(
                "stage {n} ({}) is being trained by another worker; waiting for it",
                &key[..12]
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
/// Plans and runs loaded experiments in order; one failure does not stop the others. Runs
/// are taken as a worker takes them ([`crate::sweep::worker::work`]): with
/// `opts.skip_held`, a run another live process holds is skipped, and a run whose stage 1
/// another process is training waits until the runs free to start now are done.
pub fn sweep(
    store: &Store,
    exps: &[LoadedExperiment],
    code: &CodeState,
    runner: &dyn StageRunner,
    opts: &ExecOptions,
) -> Result<Vec<Outcome>> {
    let planned = plan(store, exps, code, opts.reuse)?;
    crate::sweep::worker::work(store, &planned, code, runner, opts)
}

/// The working folder a run's code state is read from.
pub fn code_dir() -> Result<PathBuf> {
    std::env::current_dir().context("cannot read the current folder")
}

/// Where a parallel sweep's workers find the code state their parent read
/// ([`crate::sweep::parallel`]): all its runs carry the state of the sweep's start, as in a
/// sequential sweep, even when the tree changes while they run.
pub const CODE_STATE_ENV: &str = "HARNESS_SWEEP_CODE_STATE";

/// The code state of the current folder (or the one a parallel sweep passed down).
pub fn code_state_here() -> CodeState {
    if let Some(dir) = std::env::var_os(CODE_STATE_ENV) {
        match CodeState::load(Path::new(&dir)) {
            Ok(s) => return s,
            Err(e) => eprintln!(
                "warning: {CODE_STATE_ENV}={}: {e:#}; reading the code state here",
                Path::new(&dir).display()
            ),
        }
    }
    crate::store::provenance::code_state(&code_dir().unwrap_or_else(|_| Path::new(".").into()))
}
