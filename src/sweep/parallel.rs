//! Sweeps on several cores: each training process keeps about one core busy (the tiny
//! models' matrices are too small to spread), so `sweep --jobs N` runs up to N child
//! processes side by side: first the missing `builtin:` backbones (`harness pretrain
//! builtin`), then the runs (`harness run FILE --resume`). Processes, not threads, because
//! the backend's random generator is process-wide: two trainings in one process would draw
//! their initial weights in an order that depends on timing. The children's output comes
//! through line by line, prefixed with what it belongs to.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::store::provenance::CodeState;
use crate::store::{self, State, Store};
use crate::sweep::plan::{Outcome, PlannedRun, ReuseMode, RunOutcome, StageAction};
use crate::sweep::worker::{stage1_elsewhere, taken_elsewhere, Seen};

/// Worker processes for `--jobs 0` (auto): one per core, at most one per run to train, and
/// one for GPU experiments (they would share the device).
pub fn auto_jobs(runs: &[PlannedRun]) -> usize {
    let to_train = runs.iter().filter(|p| needs_training(p)).count();
    let on_gpu = |p: &PlannedRun| match p.exp.exp.backend {
        crate::config::BackendChoice::Cpu => false,
        crate::config::BackendChoice::Cuda => true,
        crate::config::BackendChoice::Auto => cfg!(feature = "cuda"),
    };
    if runs.iter().any(on_gpu) {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(to_train).max(1)
}

pub(super) fn needs_training(p: &PlannedRun) -> bool {
    p.stages
        .iter()
        .any(|s| matches!(s, StageAction::Run { .. } | StageAction::Resume))
}

/// A child process whose output is forwarded with a prefix.
pub(super) struct Worker {
    child: Child,
    forward: Vec<std::thread::JoinHandle<()>>,
}

pub(super) fn spawn(
    args: &[String],
    prefix: &str,
    results: &Path,
    code: Option<&Path>,
) -> Result<Worker> {
    let exe = std::env::current_exe().context("finding the harness executable")?;
    let mut cmd = Command::new(&exe);
    if let Some(dir) = code {
        cmd.env(crate::sweep::plan::CODE_STATE_ENV, dir);
    }
    let mut child = cmd
        .args(args)
        // Its own process group: a Ctrl-C reaches the parent alone, which passes it on once
        // (a second interrupt would make a child quit without its checkpoint).
        .process_group(0)
        .env("HARNESS_RESULTS", results)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let mut forward = Vec::new();
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [out, err].into_iter().flatten() {
        let prefix = prefix.to_string();
        forward.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // Progress-bar redraws arrive as carriage returns: keep the last state.
                let line = line.rsplit('\r').next().unwrap_or("").trim_end();
                if !line.is_empty() {
                    eprintln!("[{prefix}] {line}");
                }
            }
        }));
    }
    Ok(Worker { child, forward })
}

fn finish(mut w: Worker) -> bool {
    let ok = w.child.wait().is_ok_and(|s| s.success());
    for f in w.forward.drain(..) {
        let _ = f.join();
    }
    ok
}

/// What [`pool`] does next with the items waiting.
pub(super) enum Pick {
    /// Start the one at this position of the waiting list.
    Start(usize),
    /// Drop the one at this position: someone else does it.
    Skip(usize),
    /// Start none for now; ask again soon (even when nothing of ours runs: another
    /// process may be about to free one).
    Wait,
}

/// How an item of [`pool`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Succeeded,
    Failed,
    /// [`Pick::Skip`]ped, or never started because of an interrupt.
    NotStarted,
}

/// Runs `todo` (ids into some list) on up to `jobs` children made by `start`. `choose`
/// decides, given the items waiting and those running, which to start or skip next;
/// returns how each item ended.
pub(super) fn pool(
    todo: Vec<usize>,
    jobs: usize,
    mut choose: impl FnMut(&[usize], &[usize]) -> Pick,
    mut start: impl FnMut(usize) -> Result<Worker>,
) -> Vec<(usize, Ended)> {
    let mut waiting = todo;
    let mut running: Vec<(usize, Worker)> = Vec::new();
    let mut done = Vec::new();
    let mut forwarded = false;
    loop {
        if store::interrupted() && !forwarded {
            forwarded = true;
            for (_, w) in &running {
                // SAFETY: kill(2) on a child we spawned and have not reaped yet.
                unsafe { libc::kill(w.child.id() as libc::pid_t, libc::SIGINT) };
            }
        }
        while running.len() < jobs && !waiting.is_empty() && !store::interrupted() {
            let active: Vec<usize> = running.iter().map(|(i, _)| *i).collect();
            let pick = match choose(&waiting, &active) {
                Pick::Start(pick) => pick,
                Pick::Skip(pos) => {
                    done.push((waiting.remove(pos), Ended::NotStarted));
                    continue;
                }
                Pick::Wait => break,
            };
            let item = waiting.remove(pick);
            match start(item) {
                Ok(w) => running.push((item, w)),
                Err(e) => {
                    eprintln!("{e:#}");
                    done.push((item, Ended::Failed));
                }
            }
        }
        if running.is_empty() && (waiting.is_empty() || store::interrupted()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            if matches!(running[i].1.child.try_wait(), Ok(Some(_))) {
                let (item, w) = running.remove(i);
                let ended = if finish(w) {
                    Ended::Succeeded
                } else {
                    Ended::Failed
                };
                done.push((item, ended));
            } else {
                i += 1;
            }
        }
    }
    // Interrupted before these started.
    done.extend(waiting.into_iter().map(|i| (i, Ended::NotStarted)));
    done
}

/// Runs the planned runs on up to `jobs` children (`harness run FILE --resume --reuse
/// MODE`). A run whose stage 1 a running child (or another process) is still training
/// waits until that stage completes (then reuses it), and a run without such a conflict
/// goes first: no worker sits waiting for a shared stage, and the run listed first trains
/// it, as in a sequential sweep. A run another live process holds (another sweep on the
/// same results folder) is skipped, as [`crate::sweep::worker`] does. Outcomes are read
/// back from the store.
pub fn sweep(
    store_: &Store,
    runs: &[PlannedRun],
    code: &CodeState,
    jobs: usize,
    results: &Path,
    reuse: ReuseMode,
) -> Result<Vec<Outcome>> {
    // The workers' runs carry this sweep's code state (their ids were planned with it).
    let code_dir = results.join(format!(".sweep-{}", std::process::id()));
    code.save(&code_dir)
        .with_context(|| format!("writing the sweep's code state to {}", code_dir.display()))?;
    let out = sweep_with(store_, runs, jobs, results, &code_dir, reuse);
    let _ = std::fs::remove_dir_all(&code_dir);
    Ok(out)
}

fn sweep_with(
    store_: &Store,
    runs: &[PlannedRun],
    jobs: usize,
    results: &Path,
    code_dir: &Path,
    reuse: ReuseMode,
) -> Vec<Outcome> {
    // Completed runs need no process.
    let completed = |p: &PlannedRun| p.existing == Some(State::Completed);
    let todo: Vec<usize> = (0..runs.len()).filter(|&i| !completed(&runs[i])).collect();
    let seen: Vec<Seen> = runs.iter().map(|p| Seen::now(store_, &p.run_id)).collect();
    let mut done = pool(
        todo,
        jobs,
        |waiting, active| {
            // Stage-1 keys that running children train (not those they reuse).
            let busy: Vec<&str> = active
                .iter()
                .filter(|&&i| {
                    matches!(
                        runs[i].stages[0],
                        StageAction::Run { .. } | StageAction::Resume
                    )
                })
                .map(|&i| runs[i].keys.stage1.as_str())
                .filter(|k| store_.completed_stage(k).is_none())
                .collect();
            for (pos, &i) in waiting.iter().enumerate() {
                let p = &runs[i];
                if taken_elsewhere(store_, p, &seen[i]).is_some() {
                    return Pick::Skip(pos);
                }
                if !busy.contains(&p.keys.stage1.as_str()) && stage1_elsewhere(store_, p).is_none()
                {
                    return Pick::Start(pos);
                }
            }
            Pick::Wait
        },
        |i| {
            let p = &runs[i];
            let mut args = vec![
                "run".into(),
                p.exp.path.display().to_string(),
                "--resume".into(),
                "--reuse".into(),
                reuse.arg().into(),
                "--skip-held".into(),
            ];
            // The devices as planned (the file's, or the sweep's `--devices`).
            let devices: Vec<String> = p.exp.exp.devices.iter().map(|d| d.to_string()).collect();
            args.extend(["--devices".into(), devices.join(",")]);
            // A replica of a seed list: the child runs that one seed.
            if let Some(seed) = p.exp.replica {
                args.extend(["--seed".into(), seed.to_string()]);
            }
            spawn(&args, &p.exp.exp.name, results, Some(code_dir))
        },
    );
    done.extend(
        (0..runs.len())
            .filter(|&i| completed(&runs[i]))
            .map(|i| (i, Ended::Succeeded)),
    );
    let mut out: Vec<(usize, Outcome)> =
        done.into_iter()
            .map(|(i, ended)| {
                let p = &runs[i];
                if completed(p) {
                    return (
                        i,
                        Ok(RunOutcome {
                            run_id: p.run_id.clone(),
                            name: p.exp.exp.name.clone(),
                            state: State::Completed,
                            note: "skipped: already completed".into(),
                        }),
                    );
                }
                // Skipped, or the child lost the race for the claim: what the other worker did
                // with it. (A child's own failure stays a failure.)
                if !store::interrupted() {
                    let elsewhere = match ended {
                        Ended::NotStarted => taken_elsewhere(store_, p, &seen[i]),
                        Ended::Failed => taken_elsewhere(store_, p, &seen[i])
                            .filter(|o| o.state != State::Failed),
                        Ended::Succeeded => None,
                    };
                    if let Some(o) = elsewhere {
                        return (i, Ok(o));
                    }
                }
                let status = store_.read_status(&p.run_id).ok();
                let state = status.as_ref().map(|s| store_.effective_state(s));
                let r = match state {
                    Some(State::Completed) if ended == Ended::Succeeded => Ok(RunOutcome {
                        run_id: p.run_id.clone(),
                        name: p.exp.exp.name.clone(),
                        state: State::Completed,
                        note: "completed".into(),
                    }),
                    s => Err((
                        p.run_id.clone(),
                        match (s, status.and_then(|s| s.error)) {
                            (_, Some(e)) => e,
                            (Some(s), None) => format!("run ended {s}"),
                            (None, None) => "the run did not start".into(),
                        },
                    )),
                };
                (i, r)
            })
            .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
