//! Workers sharing one results folder: two local sweeps at once, `harness worker` processes
//! on a saved sweep (what Slurm array tasks run), SIGTERM and kill -9 of a worker, and the
//! `--slurm` command's checks that need no cluster. Every stage must be trained exactly
//! once, and a worker that meets runs held by another must still succeed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use harness::store::{metrics, State, Store};
use harness::sweep::{cluster, plan};

use crate::common::{harness, succeed, wait_for, write};

/// An experiment on the test stage runner; experiments with the same `depth` share stage 1.
pub fn exp(dir: &Path, name: &str, depth: u32, rank: u32, s1: u64, s2: u64) -> PathBuf {
    write(
        dir,
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\nseed = 1\n\n[model]\nvision = \"builtin:v\"\nlm = \"builtin:l\"\n\
             projector_depth = {depth}\n\n[stage1]\nmax_steps = {s1}\ncheckpoint_every = 2\n\n\
             [stage2]\nmax_steps = {s2}\ncheckpoint_every = 2\nlora_rank = {rank}\n"
        ),
    )
}

/// Four experiments: `a` and `b` share a stage 1, `c` and `d` have their own.
pub fn four(dir: &Path, s1: u64, s2: u64) -> Vec<PathBuf> {
    vec![
        exp(dir, "a", 2, 4, s1, s2),
        exp(dir, "b", 2, 8, s1, s2),
        exp(dir, "c", 1, 4, s1, s2),
        exp(dir, "d", 0, 4, s1, s2),
    ]
}

/// Stage-1 loss steps a run logged, sorted, duplicates kept.
pub fn loss_steps(store: &Store, id: &str, stage: &str) -> Vec<u64> {
    let rows = metrics::read_rows(&store.run_dir(id).join("metrics")).unwrap_or_default();
    let mut v: Vec<u64> = rows
        .iter()
        .filter(|r| r.stage == stage && r.metric == "loss")
        .map(|r| r.step)
        .collect();
    v.sort();
    v
}

/// Checks from the store that every run completed and every stage key was trained by
/// exactly one run: one run has it `completed` as its own, every other run with that key
/// `reused` it from that run, only the trainer has its metrics, each of its `steps(id)`
/// logged (exactly once when `uninterrupted`), and `_stages/` records each key once. Returns, per run id, the
/// stage names it trained.
pub fn trained_exactly_once(
    store: &Store,
    ids: &[String],
    steps: &dyn Fn(&str) -> [u64; 2],
    uninterrupted: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut trainers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    let mut trained = BTreeMap::new();
    for id in ids {
        let s = store.read_status(id).unwrap();
        assert_eq!(s.state, State::Completed, "{id}: {:?}", s.error);
        let steps = steps(id);
        for (n, stage) in ["stage1", "stage2"].iter().enumerate() {
            let st = &s.stages[*stage];
            keys.insert(st.key.clone());
            let rows = loss_steps(store, id, stage);
            if st.run_id == *id {
                assert_eq!(st.state, State::Completed, "{id} {stage}");
                assert!(
                    trained.insert(st.key.clone(), id.clone()).is_none(),
                    "{stage} {} trained twice",
                    &st.key[..12]
                );
                trainers
                    .entry(id.clone())
                    .or_default()
                    .push(stage.to_string());
                let distinct: Vec<u64> = rows
                    .iter()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                assert_eq!(distinct, (1..=steps[n]).collect::<Vec<_>>(), "{id} {stage}");
                if uninterrupted.contains(id) {
                    assert_eq!(rows.len() as u64, steps[n], "{id} {stage}: once per step");
                }
            } else {
                assert_eq!(st.state, State::Reused, "{id} {stage}");
                assert!(rows.is_empty(), "{id} has no rows of the {stage} it reused");
            }
        }
    }
    for id in ids {
        let s = store.read_status(id).unwrap();
        for stage in ["stage1", "stage2"] {
            let st = &s.stages[stage];
            assert_eq!(
                trained[&st.key], st.run_id,
                "{id} {stage} points at its trainer"
            );
        }
    }
    let records = std::fs::read_dir(store.root.join("_stages"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(records, keys.len(), "one record per stage key");
    trainers
}

fn ids(store: &Store, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| store.resolve(n).unwrap()).collect()
}

/// What the issue measured: two `harness sweep` processes on one results folder. The one
/// that meets a run the other holds skips it, and both exit 0.
#[test]
fn two_sweeps_on_one_results_folder_both_succeed_and_train_each_stage_once() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let files = four(d.path(), 20, 5);
    let spawn = |jobs: &str| {
        harness(d.path(), &results)
            .env("HARNESS_TEST_STEP_MS", "60")
            .args(["sweep", "--jobs", jobs])
            .args(&files)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // One sweep side by side (children), one sequential (in process): both paths skip.
    let (p1, p2) = (spawn("2"), spawn("1"));
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    let text = |o: &std::process::Output| {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(o1.status.success(), "sweep --jobs 2:\n{}", text(&o1));
    assert!(o2.status.success(), "sweep --jobs 1:\n{}", text(&o2));
    let both = format!("{}{}", text(&o1), text(&o2));
    assert!(both.contains("skipped: held by pid"), "{both}");
    assert!(!both.contains("did not complete"), "{both}");
    let store = Store::new(&results);
    let ids = ids(&store, &["a", "b", "c", "d"]);
    trained_exactly_once(&store, &ids, &|_| [20, 5], &ids);
}

fn spawn_worker(dir: &Path, results: &Path, id: &str, out: &Path, step_ms: &str) -> Child {
    harness(dir, results)
        .env("HARNESS_TEST_STEP_MS", step_ms)
        .args(["worker", id])
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap()
}

/// Plans `files` against `results` and saves the sweep, as `sweep --slurm` does before
/// submitting; its workers run in `dir`.
fn saved_sweep(dir: &Path, results: &Path, files: &[PathBuf]) -> cluster::SavedPlan {
    let store = Store::new(results);
    let exps = plan::load_all(files).unwrap();
    let code = harness::store::provenance::code_state(dir);
    let planned = plan::plan(&store, &exps, &code, Default::default()).unwrap();
    cluster::save(results, &planned, &code, dir, Default::default()).unwrap()
}

#[test]
fn workers_of_a_saved_sweep_share_it_and_exit_0() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let files = four(d.path(), 20, 5);
    let saved = saved_sweep(d.path(), &results, &files);
    let outs: Vec<PathBuf> = (0..3).map(|i| d.path().join(format!("w{i}.out"))).collect();
    let workers: Vec<Child> = outs
        .iter()
        .map(|o| spawn_worker(d.path(), &results, &saved.id, o, "60"))
        .collect();
    let pids: Vec<u32> = workers.iter().map(|w| w.id()).collect();
    for (mut w, out) in workers.into_iter().zip(&outs) {
        let status = w.wait().unwrap();
        let err = std::fs::read_to_string(out.with_extension("err")).unwrap();
        assert!(status.success(), "{status}: {err}");
    }
    let store = Store::new(&results);
    let ids = ids(&store, &["a", "b", "c", "d"]);
    let trainers = trained_exactly_once(&store, &ids, &|_| [20, 5], &ids);
    let mut by = BTreeSet::new();
    for (id, stages) in &trainers {
        let s = store.read_status(id).unwrap();
        for stage in stages {
            let w = s.stages[stage].worker.clone().unwrap();
            let k = pids
                .iter()
                .position(|&p| p == w.pid)
                .expect("one of the workers");
            by.insert(k);
            assert_eq!(w.slurm, None);
            // The worker's own output file, found from its stdout.
            assert_eq!(w.log.as_deref(), Some(outs[k].as_path()), "{id} {stage}");
            let log = std::fs::read_to_string(store.run_dir(id).join("log.txt")).unwrap();
            assert!(
                log.contains(&format!("log {}", outs[k].display())),
                "the run's log points to the worker's: {log}"
            );
        }
    }
    assert!(by.len() >= 2, "the work was shared: {by:?}");
    let table: String = outs
        .iter()
        .map(|o| std::fs::read_to_string(o).unwrap())
        .collect();
    assert!(table.contains("skipped: held by pid"), "{table}");

    // A worker after the end finds everything done.
    let late = d.path().join("late.out");
    let mut w = spawn_worker(d.path(), &results, &saved.id, &late, "0");
    assert!(w.wait().unwrap().success());
    let text = std::fs::read_to_string(&late).unwrap();
    assert_eq!(
        text.matches("skipped: already completed").count(),
        4,
        "{text}"
    );

    let out = succeed(harness(d.path(), &results).args(["sweep", "--status", &saved.id]));
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(
        status.starts_with(&format!("sweep {}: 4 runs (", saved.id)),
        "{status}"
    );
    assert!(status.contains("no job submitted"), "{status}");
    let host = harness::fsutil::hostname();
    let row = |id: &str| -> Vec<String> {
        let line = status.lines().find(|l| l.starts_with(id)).unwrap();
        line.split_whitespace().map(String::from).collect()
    };
    // a and b share stage 1: whichever worker got there first trained it (exactly once,
    // checked above), the other run reused it.
    let (a, b) = if trainers
        .get(&ids[0])
        .is_some_and(|v| v.iter().any(|s| s == "stage1"))
    {
        (&ids[0], &ids[1])
    } else {
        (&ids[1], &ids[0])
    };
    let paren = format!("({host})");
    assert_eq!(
        row(a),
        [
            a.as_str(),
            "completed",
            "completed",
            &host,
            "completed",
            &host
        ],
        "{status}"
    );
    assert_eq!(
        row(b),
        [
            b.as_str(),
            "completed",
            "reused",
            "from",
            a.as_str(),
            &paren,
            "completed",
            &host
        ],
        "{status}"
    );

    for args in [vec!["worker", "nope"], vec!["sweep", "--status", "nope"]] {
        let out = harness(d.path(), &results).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: no sweep `nope` in {} (sweeps there: {}); `harness sweep --slurm FILES`",
                results.join("_sweeps").display(),
                saved.id
            )),
            "{err}"
        );
    }
}

/// SIGTERM (what Slurm's `--signal=B:TERM@120` sends before the time limit) stops a worker
/// at a checkpoint with its run marked interrupted; a worker killed with SIGKILL leaves a
/// stale claim; the next worker takes it over and resumes from the latest checkpoint.
#[test]
fn term_and_kill_leave_a_run_the_next_worker_resumes() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let steps = 300;
    let f = exp(d.path(), "long", 2, 4, steps, 2);
    let saved = saved_sweep(d.path(), &results, &[f]);
    let store = Store::new(&results);
    let id = saved.runs[0].run_id.clone();
    let checkpoints = || {
        std::fs::read_dir(store.run_dir(&id).join("checkpoints").join("stage1"))
            .map(|r| r.count())
            .unwrap_or(0)
    };

    let mut w = spawn_worker(d.path(), &results, &saved.id, &d.path().join("1.out"), "20");
    assert!(wait_for(Duration::from_secs(30), || checkpoints() >= 3));
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let code = w.wait().unwrap();
    assert_eq!(code.code(), Some(143), "interrupted, not failed");
    let s = store.read_status(&id).unwrap();
    assert_eq!(s.state, State::Interrupted);
    assert_eq!(s.stages["stage1"].state, State::Interrupted);
    let err = std::fs::read_to_string(d.path().join("1.err")).unwrap();
    assert!(err.contains("submit the sweep again to resume"), "{err}");
    let first = *loss_steps(&store, &id, "stage1").last().unwrap();

    let mut w = spawn_worker(d.path(), &results, &saved.id, &d.path().join("2.out"), "20");
    assert!(wait_for(Duration::from_secs(30), || {
        loss_steps(&store, &id, "stage1")
            .last()
            .copied()
            .unwrap_or(0)
            > first + 20
    }));
    unsafe { libc::kill(w.id() as i32, libc::SIGKILL) };
    w.wait().unwrap();
    assert!(
        store.run_dir(&id).join("lock").exists(),
        "a stale claim is left"
    );

    let mut w = spawn_worker(d.path(), &results, &saved.id, &d.path().join("3.out"), "5");
    let code = w.wait().unwrap();
    let err = std::fs::read_to_string(d.path().join("3.err")).unwrap();
    assert!(code.success(), "{err}");
    let s = store.read_status(&id).unwrap();
    assert_eq!(s.state, State::Completed);
    let got = loss_steps(&store, &id, "stage1");
    let distinct: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(distinct, (1..=steps).collect::<BTreeSet<_>>());
    assert_eq!(
        got.iter().filter(|&&s| s == 1).count(),
        1,
        "resumed from checkpoints, never restarted"
    );
    let log = std::fs::read_to_string(store.run_dir(&id).join("log.txt")).unwrap();
    assert_eq!(log.matches(" resume run ").count(), 2, "{log}");
    assert_eq!(log.matches(" start run ").count(), 1, "{log}");
}

/// Rewrites the `host` of a claim or status file: what a file written by a worker on
/// another node looks like, whose pid this host cannot check.
fn from_other_node(file: &Path, host: &str) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    v["host"] = serde_json::Value::String(host.into());
    std::fs::write(file, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// A worker on another node killed without a signal (node failure): only its heartbeat
/// can tell it is gone. Until the heartbeat timeout the next worker leaves the run to it
/// (skips it and exits 0); after the timeout a worker takes the run and its stage over and
/// resumes from the last checkpoint, keeping every metric already written.
#[test]
fn a_dead_nodes_claim_is_taken_over_after_the_heartbeat_timeout() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let steps = 200;
    let f = exp(d.path(), "long", 2, 4, steps, 2);
    let saved = saved_sweep(d.path(), &results, &[f]);
    let store = Store::new(&results);
    let id = saved.runs[0].run_id.clone();
    let run_lock = store.run_dir(&id).join("lock");
    let stage_lock = results
        .join("_stages")
        .join(format!("{}.lock", saved.runs[0].stage1));
    let timeout = "12";
    let worker = |out: &str| {
        let mut c = harness(d.path(), &results);
        c.env("HARNESS_TEST_STEP_MS", "20")
            .env("HARNESS_HEARTBEAT_TIMEOUT", timeout)
            .args(["worker", &saved.id])
            .stdout(std::fs::File::create(d.path().join(out)).unwrap())
            .stderr(std::fs::File::create(d.path().join(out).with_extension("err")).unwrap());
        c
    };

    let mut w = worker("1.out").spawn().unwrap();
    assert!(wait_for(Duration::from_secs(30), || {
        loss_steps(&store, &id, "stage1").len() >= 30
    }));
    unsafe { libc::kill(w.id() as i32, libc::SIGKILL) };
    w.wait().unwrap();
    for file in [
        &run_lock,
        &stage_lock,
        &store.run_dir(&id).join("status.json"),
    ] {
        from_other_node(file, "node-that-died");
    }
    let before = loss_steps(&store, &id, "stage1");
    let beat = store.read_status(&id).unwrap().heartbeat_s;

    // Within the timeout: held elsewhere, skipped, no failure.
    let out = worker("2.out").output().unwrap();
    let text = std::fs::read_to_string(d.path().join("2.out")).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("skipped: held by pid") && text.contains("on node-that-died"),
        "{text}"
    );
    assert_eq!(store.read_status(&id).unwrap().state, State::Running);
    assert_eq!(loss_steps(&store, &id, "stage1"), before, "nothing ran");

    // After it: taken over and resumed.
    let limit: f64 = timeout.parse().unwrap();
    assert!(wait_for(Duration::from_secs(30), || {
        harness::fsutil::now_s() - beat > limit + 0.5
    }));
    let out = worker("3.out").output().unwrap();
    let err = std::fs::read_to_string(d.path().join("3.err")).unwrap();
    assert!(out.status.success(), "{err}");
    let s = store.read_status(&id).unwrap();
    assert_eq!(s.state, State::Completed);
    assert_eq!(s.host, harness::fsutil::hostname(), "claimed here now");
    let got = loss_steps(&store, &id, "stage1");
    let distinct: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(distinct, (1..=steps).collect::<BTreeSet<_>>());
    assert_eq!(
        got.iter().filter(|&&s| s == 1).count(),
        1,
        "resumed, not restarted"
    );
    for step in &before {
        assert!(
            got.contains(step),
            "step {step} written before the kill is kept"
        );
    }
    let log = std::fs::read_to_string(store.run_dir(&id).join("log.txt")).unwrap();
    assert_eq!(log.matches(" resume run ").count(), 1, "{log}");
    assert!(
        !run_lock.exists() && !stage_lock.exists(),
        "claims released"
    );
}

#[test]
fn slurm_submission_checks_that_need_no_cluster() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let files = four(d.path(), 2, 2);
    let empty = d.path().join("bin");
    std::fs::create_dir_all(&empty).unwrap();

    // No sbatch on PATH: one line, before anything is written.
    let out = harness(d.path(), &results)
        .env("PATH", &empty)
        .args(["sweep", "--slurm"])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: sbatch not found on PATH: --slurm needs a Slurm client (or run without --slurm)\n"
    );
    assert!(!results.exists());

    // A dry run needs no Slurm: the plan and the script, nothing written.
    let out = succeed(
        harness(d.path(), &results)
            .env("PATH", &empty)
            .args([
                "sweep",
                "--slurm",
                "--dry-run",
                "--time",
                "30",
                "--cpus-per-task",
                "2",
            ])
            .args(["--sbatch-arg", "--account=proj"])
            .args(&files),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let store = Store::new(&results);
    let exps = plan::load_all(&files).unwrap();
    let code = harness::store::provenance::code_state(d.path());
    let id = cluster::sweep_id(&plan::plan(&store, &exps, &code, Default::default()).unwrap());
    assert!(
        text.starts_with(&format!(
            "sweep {id} (dry run: nothing written or submitted)"
        )),
        "{text}"
    );
    let abs = std::path::absolute(&results).unwrap();
    for line in [
        format!("#SBATCH --job-name={id}"),
        "#SBATCH --array=0-3".to_string(),
        format!(
            "#SBATCH --output={}/_sweeps/{id}/logs/{id}-%A_%a.log",
            abs.display()
        ),
        "#SBATCH --signal=B:TERM@120".into(),
        "#SBATCH --requeue".into(),
        "#SBATCH --time=30".into(),
        "#SBATCH --cpus-per-task=2".into(),
        "#SBATCH --account=proj".into(),
        format!(
            "exec '{}' --results '{}' worker '{id}'",
            env!("CARGO_BIN_EXE_harness"),
            abs.display()
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(text.contains("stage 1 @") && text.contains("runs earlier in this sweep"));
    assert!(!results.exists(), "a dry run writes nothing");

    // Slurm options need --slurm; --status takes no files.
    let out = harness(d.path(), &results)
        .args(["sweep", "--tasks", "2"])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--slurm"));
    let out = harness(d.path(), &results)
        .args(["sweep", "--status", "x"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
