//! `harness sweep --slurm` against a real Slurm (`scripts/slurm/cluster.sh start`, as root;
//! `scripts/slurm/ci.sh` does it all), only with `HARNESS_SLURM_TEST=1`: a micro sweep of
//! four experiments (two sharing a stage 1) on the orchestration test stage, as an array of
//! three tasks that overlap (the cluster declares more CPUs than the machine has). Checks:
//! every stage trained exactly once and every task exits 0, a second submission finds
//! nothing to do, a task signalled mid-stage (`scancel --batch --signal=TERM`, what the
//! time-limit warning does) leaves an interrupted run, and submitting again resumes it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::store::{State, Store};
use harness::sweep::cluster::{self, Submission};
use harness::sweep::slurm::SbatchOptions;

use crate::common::{harness, wait_for};
use crate::sweep_workers::{exp, four, loss_steps, trained_exactly_once};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn queued(job: u64) -> bool {
    !run("squeue", &["-h", "-j", &job.to_string(), "-o", "%i"])
        .trim()
        .is_empty()
}

/// Waits for job `id` to leave the queue; cancels it and fails the test after `limit`.
fn wait_gone(job: u64, limit: Duration) {
    if !wait_for(limit, || !queued(job)) {
        let q = run("squeue", &["-j", &job.to_string()]);
        let _ = Command::new("scancel").arg(job.to_string()).status();
        panic!("job {job} still queued after {limit:?}:\n{q}");
    }
}

/// `(task, JobState, ExitCode)` of every task of array `job`, from `scontrol -o show job`.
fn task_states(job: u64) -> Vec<(u32, String, String)> {
    let mut v: Vec<(u32, String, String)> =
        run("scontrol", &["-o", "show", "job", &job.to_string()])
            .lines()
            .map(|l| {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix(&format!("{k}=")))
                        .unwrap_or("?")
                        .to_string()
                };
                (
                    field("ArrayTaskId").parse().unwrap_or(u32::MAX),
                    field("JobState"),
                    field("ExitCode"),
                )
            })
            .collect();
    v.sort();
    v
}

/// Submits; returns the job id from "submitted job N: T tasks" and the whole stdout.
fn submit(
    dir: &Path,
    results: &Path,
    step_ms: &str,
    args: &[&str],
    files: &[std::path::PathBuf],
) -> (Option<u64>, String) {
    let out = harness(dir, results)
        .env("HARNESS_TEST_STEP_MS", step_ms)
        .args(["sweep", "--slurm"])
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = text
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .map(|rest| rest.split(':').next().unwrap().parse().unwrap());
    (job, text)
}

fn sweep_id(text: &str) -> String {
    text.split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string()
}

#[test]
fn slurm_sweep_trains_once_skips_when_done_and_resumes_after_term() {
    if std::env::var("HARNESS_SLURM_TEST").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set HARNESS_SLURM_TEST=1 with a cluster up (scripts/slurm/cluster.sh start)"
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let files = four(d.path(), 10, 4);
    let node = run("hostname", &["-s"]).trim().to_string();

    // An unknown partition: one line saying what to do, nothing written.
    let out = harness(d.path(), &results)
        .args(["sweep", "--slurm", "--partition", "nope"])
        .args(&files)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    // (A warning that the temporary folder is no git repository may come before it.)
    let errors: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(
        errors,
        [
            "error: Slurm partition `nope` does not exist (partitions: main (default), short): \
          pass one of them to --partition"
        ],
        "{err}"
    );
    assert!(!results.join("_sweeps").exists());

    // 1. Three overlapping tasks for four runs.
    let t0 = std::time::Instant::now();
    let (job, text) = submit(
        d.path(),
        &results,
        "150",
        &["--tasks", "3", "--cpus-per-task", "1", "--time", "10"],
        &files,
    );
    let job = job.unwrap_or_else(|| panic!("no job id in: {text}"));
    let id = sweep_id(&text);
    assert!(
        text.contains(&format!("submitted job {job}: 3 tasks")),
        "{text}"
    );
    wait_gone(job, Duration::from_secs(120));
    eprintln!(
        "array of 3 tasks, 4 runs: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let states = task_states(job);
    assert_eq!(
        states,
        (0..3)
            .map(|t| (t, "COMPLETED".to_string(), "0:0".to_string()))
            .collect::<Vec<_>>(),
        "every task exits 0, also those that met runs held by the others"
    );
    let store = Store::new(&results);
    let ids: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| store.resolve(n).unwrap())
        .collect();
    let trainers = trained_exactly_once(&store, &ids, &|_| [10, 4], &ids);
    let opts = SbatchOptions {
        job_name: id.clone(),
        ..SbatchOptions::new(
            3,
            cluster::sweep_dir(&std::path::absolute(&results).unwrap(), &id).join("logs"),
        )
    };
    let mut tasks_used = std::collections::BTreeSet::new();
    for (run_id, stages) in &trainers {
        let s = store.read_status(run_id).unwrap();
        for stage in stages {
            let w = s.stages[stage].worker.clone().unwrap();
            let t = w
                .slurm
                .clone()
                .unwrap_or_else(|| panic!("{run_id} {stage}: no Slurm task"));
            assert_eq!(t.array_job_id, Some(job));
            assert_eq!(t.node.as_deref(), Some(node.as_str()));
            let task = t.array_task_id.unwrap();
            tasks_used.insert(task);
            let task_log = opts.task_log(job, task);
            assert_eq!(
                w.log.as_deref(),
                Some(task_log.as_path()),
                "{run_id} {stage}"
            );
            let log = std::fs::read_to_string(&task_log).unwrap();
            assert!(
                log.contains(&format!("harness worker: sweep {id}, 4 runs")),
                "{log}"
            );
            let run_log = std::fs::read_to_string(store.run_dir(run_id).join("log.txt")).unwrap();
            assert!(
                run_log.contains(&format!("log {}", task_log.display())),
                "{run_log}"
            );
        }
    }
    assert!(
        tasks_used.len() >= 2,
        "the tasks shared the work: {tasks_used:?}"
    );

    // Status and leaderboard show the task and node of each stage.
    let out = harness(d.path(), &results)
        .args(["sweep", "--status", &id])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        status.contains(&format!("job {job}: 3 tasks, submitted ")),
        "{status}"
    );
    assert!(
        status.contains("queue: none of its jobs is queued or running"),
        "{status}"
    );
    for r in &ids {
        let line = status.lines().find(|l| l.starts_with(r.as_str())).unwrap();
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("completed"),
            "{status}"
        );
        assert!(
            line.contains(&format!("{job}_")) && line.contains(&format!(" on {node}")),
            "{status}"
        );
    }
    let out = harness(d.path(), &results)
        .args(["report", "--format", "csv"])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        csv.lines().next().unwrap().contains("ran on (Slurm)"),
        "{csv}"
    );
    let a_row = csv.lines().find(|l| l.contains(&ids[0])).unwrap();
    assert!(
        a_row.contains(&format!("stage1 {job}_")) && a_row.contains(&format!(" on {node}")),
        "{a_row}"
    );

    // 2. The same sweep again: nothing to do, nothing submitted.
    let (again, text) = submit(d.path(), &results, "150", &["--tasks", "3"], &files);
    assert_eq!(again, None, "{text}");
    assert!(
        text.starts_with(&format!(
            "sweep {id}: nothing to do, all 4 runs are completed"
        )),
        "{text}"
    );
    let jobs: Vec<Submission> =
        harness::fsutil::read_json(&cluster::sweep_dir(&results, &id).join("jobs.json")).unwrap();
    assert_eq!(jobs.len(), 1);

    // 3. A fifth experiment, its task signalled mid-stage, then submitted again.
    let steps = 150;
    let mut files5 = files.clone();
    files5.push(exp(d.path(), "e", 3, 4, steps, 2));
    let (first, text) = submit(d.path(), &results, "40", &[], &files5);
    let first = first.unwrap_or_else(|| panic!("{text}"));
    let id5 = sweep_id(&text);
    assert_ne!(id5, id);
    assert!(
        text.contains(&format!("submitted job {first}: 1 tasks")),
        "{text}"
    );
    let checkpoints = || {
        let Ok(e) = store.resolve("e") else { return 0 };
        std::fs::read_dir(store.run_dir(&e).join("checkpoints").join("stage1"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(60), || checkpoints() >= 2),
        "run e never reached a checkpoint"
    );
    run("scancel", &["--batch", "--signal=TERM", &first.to_string()]);
    wait_gone(first, Duration::from_secs(60));
    let e = store.resolve("e").unwrap();
    let s = store.read_status(&e).unwrap();
    assert_eq!(s.state, State::Interrupted);
    assert_eq!(s.stages["stage1"].state, State::Interrupted);
    let stopped_at = *loss_steps(&store, &e, "stage1").last().unwrap();
    assert!(stopped_at < steps, "signalled mid-stage, at {stopped_at}");
    assert_eq!(
        task_states(first),
        [(0, "FAILED".to_string(), "143:0".to_string())]
    );
    let task_log = std::fs::read_to_string(
        SbatchOptions {
            job_name: id5.clone(),
            ..SbatchOptions::new(
                1,
                cluster::sweep_dir(&std::path::absolute(&results).unwrap(), &id5).join("logs"),
            )
        }
        .task_log(first, 0),
    )
    .unwrap();
    assert!(
        task_log.contains("submit the sweep again to resume"),
        "{task_log}"
    );

    let (second, text) = submit(d.path(), &results, "20", &[], &files5);
    let second = second.unwrap_or_else(|| panic!("{text}"));
    assert_eq!(sweep_id(&text), id5, "the same files make the same sweep");
    assert!(
        text.contains(&format!("submitted before as job {first}")),
        "{text}"
    );
    wait_gone(second, Duration::from_secs(120));
    assert_eq!(
        task_states(second),
        [(0, "COMPLETED".to_string(), "0:0".to_string())]
    );
    let s = store.read_status(&e).unwrap();
    assert_eq!(s.state, State::Completed, "{:?}", s.error);
    let got = loss_steps(&store, &e, "stage1");
    assert_eq!(
        got.iter().filter(|&&x| x == 1).count(),
        1,
        "resumed, not restarted"
    );
    let w = s.stages["stage1"].worker.clone().unwrap().slurm.unwrap();
    assert_eq!(w.array_job_id, Some(second), "the resubmission finished it");
    let run_log = std::fs::read_to_string(store.run_dir(&e).join("log.txt")).unwrap();
    assert_eq!(run_log.matches(" resume run ").count(), 1, "{run_log}");
    let mut all = ids.clone();
    all.push(e.clone());
    let steps_of = |r: &str| if r == e { [steps, 2] } else { [10, 4] };
    trained_exactly_once(&store, &all, &steps_of, &ids);
}
