//! A worker: takes the runs of a plan one at a time, as any number of workers on one
//! results folder may do at once (`harness sweep` processes, `harness worker` in Slurm
//! array tasks). Each takes, in plan order, the next run that no other live process holds
//! and whose stage 1 no other process is training; a run held elsewhere is skipped (its
//! holder finishes it), and a run waiting for another process's stage 1 is taken once
//! that stage completes, after the runs free now. A worker fails only on its own runs'
//! failures: runs done, held or failed elsewhere are reported, not counted against it.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::store::provenance::CodeState;
use crate::store::{self, ClaimHeld, ClaimInfo, State, Status, Store};
use crate::sweep::plan::{self, ExecOptions, Outcome, PlannedRun, RunOutcome, StageAction};
use crate::train::stage::StageRunner;

/// How often a waiting worker looks at the store again.
const POLL: Duration = Duration::from_millis(500);

/// A run's `state` and `ended` when a worker started: a run that fails after that was
/// failed by another worker, and is not retried by this one.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen(Option<(State, Option<String>)>);

impl Seen {
    /// The run as the store shows it now.
    pub fn now(store: &Store, run_id: &str) -> Seen {
        Seen(
            store
                .read_status(run_id)
                .ok()
                .map(|s| (store.effective_state(&s), s.ended.clone())),
        )
    }
}

/// "skipped: held by pid N on H (another worker)".
pub fn held_note(owner: &ClaimInfo) -> String {
    format!(
        "skipped: held by pid {} on {} (another worker)",
        owner.pid, owner.host
    )
}

fn outcome(p: &PlannedRun, state: State, note: String) -> RunOutcome {
    RunOutcome {
        run_id: p.run_id.clone(),
        name: p.exp.exp.name.clone(),
        state,
        note,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// What became of `p` elsewhere, when this worker should not take it: completed (before
/// this worker started, or by another worker since), held by another live process, or
/// failed by another worker since this one started (`seen`).
pub fn taken_elsewhere(store: &Store, p: &PlannedRun, seen: &Seen) -> Option<RunOutcome> {
    let status: Option<Status> = store.read_status(&p.run_id).ok();
    let state = status.as_ref().map(|s| store.effective_state(s));
    match state {
        Some(State::Completed) => {
            let before = seen.0.as_ref().is_some_and(|(s, _)| *s == State::Completed);
            let note = if before {
                "skipped: already completed"
            } else {
                "skipped: completed by another worker"
            };
            return Some(outcome(p, State::Completed, note.into()));
        }
        Some(State::Failed) => {
            let s = status.as_ref().expect("a state comes from a status");
            if Seen(Some((State::Failed, s.ended.clone()))) != *seen {
                let error = s
                    .error
                    .as_deref()
                    .map(first_line)
                    .unwrap_or("no error text");
                return Some(outcome(
                    p,
                    State::Failed,
                    format!(
                        "skipped: failed in another worker (pid {} on {}): {error}",
                        s.pid, s.host
                    ),
                ));
            }
        }
        _ => {}
    }
    store
        .run_holder(&p.run_id)
        .map(|owner| outcome(p, State::Running, held_note(&owner)))
}

/// Whether `p` must wait because another live process is training its stage 1 (a run of
/// its own, sharing the key); `None` when it can start now.
pub fn stage1_elsewhere(store: &Store, p: &PlannedRun) -> Option<ClaimInfo> {
    // Reused from a completed result (of this code, or with `--reuse config` of other code):
    // nothing to wait for.
    let reused = matches!(p.stages[0], StageAction::Reuse { planned: false, .. });
    if reused || store.completed_stage(&p.keys.stage1).is_some() {
        return None;
    }
    store
        .stage_holder(&p.keys.stage1)
        .filter(|h| h.run_id != p.run_id)
}

/// Takes the runs of `runs` one at a time until none is left that this worker could run
/// (see the module doc), and returns what became of each, in plan order. With
/// `opts.skip_held` unset, a held run is an error instead of a skip (`harness run`). An
/// interrupt (SIGINT/SIGTERM) stops the run in progress at its checkpoint and takes no
/// more; runs not started then are reported as such.
pub fn work(
    store: &Store,
    runs: &[PlannedRun],
    code: &CodeState,
    runner: &dyn StageRunner,
    opts: &ExecOptions,
) -> Result<Vec<Outcome>> {
    let seen: Vec<Seen> = runs.iter().map(|p| Seen::now(store, &p.run_id)).collect();
    let mut out: Vec<Option<Outcome>> = vec![None; runs.len()];
    let mut waiting_since: Option<Instant> = None;
    let mut said_waiting = vec![false; runs.len()];
    while !store::interrupted() {
        let mut pick = None;
        let mut wait_for = Vec::new();
        for (i, p) in runs.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if opts.skip_held {
                if let Some(o) = taken_elsewhere(store, p, &seen[i]) {
                    out[i] = Some(Ok(o));
                    continue;
                }
                if let Some(h) = stage1_elsewhere(store, p) {
                    wait_for.push((i, h));
                    continue;
                }
            }
            pick = Some(i);
            break;
        }
        if let Some(i) = pick {
            waiting_since = None;
            let p = &runs[i];
            // Re-planned just before it starts, so stages completed earlier in this sweep
            // (or by another worker) are reused.
            let fresh =
                plan::plan(store, std::slice::from_ref(&p.exp), code, opts.reuse)?.remove(0);
            out[i] = Some(match plan::execute(store, &fresh, code, runner, opts) {
                Ok(o) => Ok(o),
                Err(e) => match e.downcast_ref::<ClaimHeld>() {
                    // Another worker claimed it between the look and the claim.
                    Some(held) if opts.skip_held => {
                        Ok(outcome(p, State::Running, held_note(&held.owner)))
                    }
                    _ => Err((p.run_id.clone(), format!("{e:#}"))),
                },
            });
            continue;
        }
        if wait_for.is_empty() {
            break;
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() > opts.stage_wait {
            for (i, h) in wait_for {
                out[i] = Some(Err((
                    runs[i].run_id.clone(),
                    format!(
                        "stage 1 is still being trained by {} (pid {} on {}) after {} s",
                        h.run_id,
                        h.pid,
                        h.host,
                        opts.stage_wait.as_secs()
                    ),
                )));
            }
            continue;
        }
        for (i, h) in &wait_for {
            if !said_waiting[*i] {
                said_waiting[*i] = true;
                eprintln!(
                    "{}: stage 1 is being trained by {} (pid {} on {}); waiting for it",
                    runs[*i].exp.exp.name, h.run_id, h.pid, h.host
                );
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(out
        .into_iter()
        .zip(runs)
        .map(|(o, p)| {
            o.unwrap_or_else(|| Err((p.run_id.clone(), "not started: interrupted".into())))
        })
        .collect())
}

/// How a worker process should exit after [`work`]: 0 when every run is completed or
/// held (or failed) elsewhere, [`EXIT_INTERRUPTED`] when a signal stopped it, 1 when one
/// of its own runs failed.
pub fn exit_code(outcomes: &[Outcome]) -> i32 {
    if store::interrupted() {
        EXIT_INTERRUPTED
    } else if outcomes.iter().any(|o| o.is_err()) {
        1
    } else {
        0
    }
}

/// The exit status of a worker stopped by SIGTERM or SIGINT (128 + SIGTERM, as a shell
/// reports a process the signal ended): its runs checkpointed and are marked interrupted;
/// a resubmission resumes them.
pub const EXIT_INTERRUPTED: i32 = 143;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::fsutil::{hostname, now_s, write_json};
    use crate::sweep::runner::TestRunner;

    fn exp(dir: &std::path::Path, name: &str, depth: u32, rank: u32) -> config::LoadedExperiment {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\nseed = 1\n[model]\nvision = \"builtin:v\"\nlm = \"builtin:l\"\n\
                 projector_depth = {depth}\n[stage1]\nmax_steps = 3\n[stage2]\nmax_steps = 2\n\
                 lora_rank = {rank}\n"
            ),
        )
        .unwrap();
        config::load(&p).unwrap()
    }

    fn code() -> CodeState {
        CodeState {
            commit: "0123456789abcdef".into(),
            branch: None,
            dirty: false,
            diff_hash: None,
            diff_bytes: 0,
            changed_files: vec![],
            diff: vec![],
        }
    }

    /// A claim file as another live process on this host would hold it.
    fn held_by(lock: &std::path::Path, run_id: &str, pid: u32) {
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        let info = ClaimInfo {
            run_id: run_id.into(),
            pid,
            host: hostname(),
            created_s: now_s(),
            token: format!("other-{pid}"),
        };
        write_json(lock, &info).unwrap();
    }

    /// `a` is held by another live process, which also trains its stage 1; `b` shares that
    /// stage 1; `c` is free. The worker skips `a`, runs `c` at once, waits for the stage
    /// 1 of `a` and then runs `b` on it.
    #[test]
    fn skips_held_runs_and_waits_only_for_a_needed_stage() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(&d.path().join("results"));
        let exps = [
            exp(d.path(), "a", 2, 4),
            exp(d.path(), "b", 2, 8),
            exp(d.path(), "c", 1, 4),
        ];
        let planned = plan::plan(&store, &exps, &code(), Default::default()).unwrap();
        let (a, b, c) = (&planned[0], &planned[1], &planned[2]);
        assert_eq!(a.keys.stage1, b.keys.stage1);
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = other.id();
        held_by(&store.run_dir(&a.run_id).join("lock"), &a.run_id, pid);
        let stage_lock = store
            .root
            .join("_stages")
            .join(format!("{}.lock", a.keys.stage1));
        held_by(&stage_lock, &a.run_id, pid);

        // The other process completes a's stage 1 a little later.
        let (store2, a_id, k1) = (store.clone(), a.run_id.clone(), a.keys.stage1.clone());
        let (k1_config, code_fp) = (a.keys.stage1_config.clone(), a.keys.code.clone());
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let ck = store2.run_dir(&a_id).join("checkpoints").join("stage1");
            std::fs::create_dir_all(&ck).unwrap();
            write_json(&ck.join("final.json"), &serde_json::json!({"steps": 3})).unwrap();
            store2
                .record_stage(&k1, &k1_config, &code_fp, 1, &a_id)
                .unwrap();
            std::fs::remove_file(stage_lock).unwrap();
            now_s()
        });
        let opts = ExecOptions {
            resume: true,
            skip_held: true,
            ..Default::default()
        };
        let out = work(
            &store,
            &planned,
            &code(),
            &TestRunner { step_ms: 10 },
            &opts,
        )
        .unwrap();
        let stage1_done_s = finisher.join().unwrap();
        let _ = other.kill();
        let _ = other.wait();

        let oa = out[0].as_ref().unwrap();
        assert_eq!(oa.state, State::Running);
        assert_eq!(
            oa.note,
            format!(
                "skipped: held by pid {pid} on {} (another worker)",
                hostname()
            )
        );
        for (o, p) in [(&out[1], b), (&out[2], c)] {
            let o = o.as_ref().unwrap();
            assert_eq!(
                (o.state, o.run_id.as_str()),
                (State::Completed, p.run_id.as_str())
            );
        }
        let sb = store.read_status(&b.run_id).unwrap();
        let sc = store.read_status(&c.run_id).unwrap();
        assert_eq!(sb.stages["stage1"].state, State::Reused);
        assert_eq!(sb.stages["stage1"].run_id, a.run_id);
        // c did not wait for the other process; b started only after the stage it needs.
        let t = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis() as f64
                / 1e3
        };
        assert!(
            t(sc.ended.as_deref().unwrap()) < stage1_done_s,
            "c ended {:?}, the stage came at {stage1_done_s}",
            sc.ended
        );
        assert!(t(&sb.started) >= stage1_done_s - 0.001);
        // Each trained stage names the process that trained it.
        let w = sc.stages["stage1"].worker.as_ref().unwrap();
        assert_eq!(
            (w.pid, w.host.as_str()),
            (std::process::id(), hostname().as_str())
        );
        assert!(
            sb.stages["stage1"].worker.is_none(),
            "reused: trained elsewhere"
        );
        assert_eq!(exit_code(&out), 0);
    }

    /// Without `skip_held` (`harness run`), a held run is an error naming its holder.
    #[test]
    fn held_run_is_an_error_without_skip_held() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(&d.path().join("results"));
        let planned = plan::plan(
            &store,
            &[exp(d.path(), "a", 2, 4)],
            &code(),
            Default::default(),
        )
        .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let lock = store.run_dir(&planned[0].run_id).join("lock");
        held_by(&lock, &planned[0].run_id, other.id());
        let out = work(
            &store,
            &planned,
            &code(),
            &TestRunner { step_ms: 0 },
            &ExecOptions::default(),
        )
        .unwrap();
        let pid = other.id();
        let _ = other.kill();
        let _ = other.wait();
        let (id, e) = out[0].as_ref().unwrap_err();
        assert_eq!(id, &planned[0].run_id);
        assert_eq!(
            e,
            &format!(
                "run {id} is claimed by pid {pid} on {} (lock {}); it is still alive",
                hostname(),
                lock.display()
            )
        );
        assert_eq!(exit_code(&out), 1);
    }
}
