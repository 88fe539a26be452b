//! Against a real Slurm (`scripts/slurm/cluster.sh start`, as root), only with
//! `HARNESS_SLURM_TEST=1`: submits a script made by `slurm::sbatch_script` whose "harness"
//! is a stand-in shell script recording its arguments and environment and trapping TERM,
//! then checks the array's per-task logs, each task's identity, and that
//! `scancel --batch --signal=TERM` (what `--signal=B:TERM@120` does at the deadline)
//! reaches the worker itself.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::sweep::slurm::{self, SbatchOptions, SlurmTask};

use crate::common::wait_for;

const TASKS: u32 = 3;

/// The stand-in for `harness --results DIR worker SWEEP`: writes its argv, pid and
/// environment into DIR (renamed into place, so the test never reads half a file), logs a
/// line, and waits for TERM, which it records before exiting 0 like a worker that
/// checkpointed.
const STAND_IN: &str = r#"#!/bin/bash
results="$2"
task="$SLURM_ARRAY_TASK_ID"
trap 'echo "TERM" >"$results/term-$task"; echo "stand-in task $task got TERM"; exit 0' TERM
printf '%s\n' "$@" >"$results/.args-$task" && mv "$results/.args-$task" "$results/args-$task"
echo "$$" >"$results/.pid-$task" && mv "$results/.pid-$task" "$results/pid-$task"
env >"$results/.env-$task" && mv "$results/.env-$task" "$results/env-$task"
echo "stand-in task $task started"
while :; do sleep 0.1; done
"#;

fn slurm_cmd(program: &str, args: &[&str]) -> String {
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
    !slurm_cmd("squeue", &["-h", "-j", &job.to_string(), "-o", "%i"])
        .trim()
        .is_empty()
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn array_workers_get_identity_logs_and_term() {
    if std::env::var("HARNESS_SLURM_TEST").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set HARNESS_SLURM_TEST=1 with a cluster up (scripts/slurm/cluster.sh start)"
        );
        return;
    }
    slurm::check_available().expect("HARNESS_SLURM_TEST=1 but no sbatch on PATH");
    let partitions = slurm::partitions()
        .expect("no answer from sinfo: start the cluster with scripts/slurm/cluster.sh start");
    slurm::check_partition("main").unwrap();
    let e = slurm::check_partition("no-such").unwrap_err().to_string();
    assert_eq!(
        e,
        "Slurm partition `no-such` does not exist (partitions: main (default), short)"
    );

    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let exe = dir.path().join("fake-harness");
    std::fs::write(&exe, STAND_IN).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let opts = SbatchOptions {
        partition: Some("main".into()),
        time: Some("10".into()),
        cpus_per_task: Some(1),
        job_name: "harness-it".into(),
        ..SbatchOptions::new(TASKS, dir.path().join("logs"))
    };
    slurm::check_submission(&opts, &partitions).unwrap();
    // The short partition allows 30 minutes: sbatch would take 60 and leave it pending.
    let too_long = SbatchOptions {
        partition: Some("short".into()),
        time: Some("60".into()),
        ..opts.clone()
    };
    let e = slurm::check_submission(&too_long, &partitions).unwrap_err();
    assert!(e.to_string().contains("MaxTime: short 00:30:00"), "{e}");

    let script = slurm::sbatch_script(&opts, &exe, &results, "sweep-it").unwrap();
    let script_path = dir.path().join("sweep.sbatch");
    slurm::write_script(&script_path, &script, &opts).unwrap();

    // sbatch's own refusal of an unknown partition comes through submit's error.
    let bad_opts = SbatchOptions {
        partition: Some("no-such".into()),
        ..opts.clone()
    };
    let bad_path = dir.path().join("bad.sbatch");
    let bad = slurm::sbatch_script(&bad_opts, &exe, &results, "sweep-it").unwrap();
    slurm::write_script(&bad_path, &bad, &bad_opts).unwrap();
    let e = slurm::submit(&bad_path, Path::new("sbatch"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sbatch: error: invalid partition specified: no-such"),
        "{e}"
    );

    let job = slurm::submit(&script_path, Path::new("sbatch")).unwrap();
    let id = job.id;
    let started = wait_for(Duration::from_secs(60), || {
        (0..TASKS).all(|t| results.join(format!("env-{t}")).exists())
    });
    if !started {
        let _ = Command::new("scancel").arg(id.to_string()).status();
        panic!(
            "array job {id}: not all {TASKS} tasks started within 60 s:\n{}",
            slurm_cmd("squeue", &["-j", &id.to_string()])
        );
    }

    let node = slurm_cmd("hostname", &["-s"]).trim().to_string();
    let mut job_ids = BTreeSet::new();
    for t in 0..TASKS {
        let env = read_env(&results.join(format!("env-{t}")));
        let who: SlurmTask = slurm::task_identity_from(|k| env.get(k).cloned())
            .unwrap()
            .expect("a task without SLURM_JOB_ID");
        assert_eq!(who.array_job_id, Some(id), "task {t}");
        assert_eq!(who.array_task_id, Some(t), "task {t}");
        assert_eq!(who.node.as_deref(), Some(node.as_str()), "task {t}");
        assert_eq!(who.restart_count, 0, "task {t}");
        job_ids.insert(who.job_id);
        // exec: the worker is the batch script's own process, the one B: signals.
        let pid = std::fs::read_to_string(results.join(format!("pid-{t}"))).unwrap();
        assert_eq!(
            Some(pid.trim()),
            env.get("SLURM_TASK_PID").map(String::as_str)
        );
        let args = std::fs::read_to_string(results.join(format!("args-{t}"))).unwrap();
        assert_eq!(
            args,
            format!("--results\n{}\nworker\nsweep-it\n", results.display())
        );
        assert_eq!(
            env.get("SLURM_JOB_PARTITION").map(String::as_str),
            Some("main")
        );
        assert_eq!(
            env.get("SLURM_CPUS_PER_TASK").map(String::as_str),
            Some("1")
        );
    }
    assert_eq!(
        job_ids.len(),
        TASKS as usize,
        "each task has its own job id"
    );

    let out = Command::new("scancel")
        .args(["--batch", "--signal=TERM", &id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let termed = wait_for(Duration::from_secs(20), || {
        (0..TASKS).all(|t| results.join(format!("term-{t}")).exists())
    });
    let ended = termed && wait_for(Duration::from_secs(60), || !queued(id));
    if !ended {
        let _ = Command::new("scancel").arg(id.to_string()).status();
    }
    assert!(termed, "TERM did not reach every worker of job {id}");
    assert!(ended, "job {id} still queued after its workers exited");

    for t in 0..TASKS {
        let log_path = opts.task_log(id, t);
        let log = std::fs::read_to_string(&log_path)
            .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
        let lines: Vec<&str> = log.lines().collect();
        let header = format!(
            "harness worker: job {} (task {id}_{t}) on {node}, restart 0, ",
            {
                let env = read_env(&results.join(format!("env-{t}")));
                env["SLURM_JOB_ID"].clone()
            }
        );
        assert!(
            lines[0].starts_with(&header),
            "{}: {log}",
            log_path.display()
        );
        assert!(
            lines.contains(&format!("stand-in task {t} started").as_str()),
            "{log}"
        );
        assert!(
            lines.contains(&format!("stand-in task {t} got TERM").as_str()),
            "{log}"
        );
    }
}
