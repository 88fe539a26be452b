//! The run store: claims, provenance, metrics, sweeps, kill -9 and resume.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use harness::store::metrics::{self, MetricsWriter};
use harness::store::provenance::code_state;
use harness::store::{State, Store};

use crate::common::{experiment, git, harness, succeed, wait_for, write};

#[test]
fn concurrent_claims_in_threads_have_one_winner() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::new(d.path()));
    for round in 0..5 {
        let id = format!("run-{round}");
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (s, b, id) = (store.clone(), barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    b.wait();
                    // Hold a won claim a moment so the others meet it.
                    s.claim_run(&id)
                        .ok()
                        .inspect(|_| std::thread::sleep(Duration::from_millis(50)))
                })
            })
            .collect();
        let won: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(won.len(), 1, "round {round}");
    }
}

#[test]
fn stale_claim_of_a_dead_pid_is_taken_over_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::new(d.path());
    let dir = store.run_dir("r");
    std::fs::create_dir_all(&dir).unwrap();
    // A claim left by a process that no longer exists on this host.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = serde_json::json!({
        "run_id": "r", "pid": dead, "host": harness::fsutil::hostname(),
        "created_s": harness::fsutil::now_s(), "token": "old"
    });
    std::fs::write(dir.join("lock"), stale.to_string()).unwrap();
    let c = store.claim_run("r").expect("stale claim taken over");
    assert!(
        store.claim_run("r").is_err(),
        "a live claim must not be taken"
    );
    drop(c);
    assert!(!dir.join("lock").exists(), "released on drop");
}

#[test]
fn effective_state_uses_pid_and_heartbeat() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::new(d.path()).with_heartbeat_timeout(2.0);
    let mut s = harness::store::Status {
        run_id: "r".into(),
        state: State::Running,
        pid: std::process::id(),
        host: harness::fsutil::hostname(),
        heartbeat: String::new(),
        heartbeat_s: harness::fsutil::now_s(),
        started: String::new(),
        ended: None,
        error: None,
        runner: "test".into(),
        stages: Default::default(),
    };
    assert_eq!(store.effective_state(&s), State::Running);
    // Another host: only the heartbeat can tell.
    s.host = "elsewhere".into();
    s.pid = 1;
    assert_eq!(store.effective_state(&s), State::Running);
    s.heartbeat_s -= 10.0;
    assert_eq!(store.effective_state(&s), State::Interrupted);
}

#[test]
fn metrics_parts_flush_compact_and_survive_a_torn_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("metrics");
    let mut w = MetricsWriter::new(&dir, "run-a", Duration::ZERO).unwrap();
    for step in 1..=5u64 {
        w.log(
            "stage1",
            "train",
            step,
            0.1 * step as f64,
            "loss",
            1.0 / step as f64,
        )
        .unwrap();
    }
    drop(w);
    let parts = metrics::part_files(&dir).unwrap();
    assert_eq!(parts.len(), 5, "interval 0 flushes every row");
    // A torn part (a crash of some other writer) and a leftover temp file.
    std::fs::write(dir.join("part-zzz.parquet"), b"PAR1 garbage").unwrap();
    std::fs::write(dir.join(".part-x.parquet.1.0.tmp"), b"half").unwrap();
    let r = metrics::read_dir(&dir).unwrap();
    assert_eq!(r.frame.height(), 5);
    assert_eq!(r.unreadable.len(), 1);
    std::fs::remove_file(dir.join("part-zzz.parquet")).unwrap();
    let rows = metrics::read_rows(&dir).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(rows[1].value, 0.5);
    assert_eq!(rows[0].run_id, "run-a");
    metrics::compact(&dir).unwrap();
    assert_eq!(
        metrics::part_files(&dir).unwrap(),
        [dir.join(metrics::COMPACT_FILE)]
    );
    assert_eq!(metrics::read_rows(&dir).unwrap(), rows);
    // The table has the documented long-form columns.
    let cols: Vec<String> = r
        .frame
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        cols,
        [
            "run_id",
            "stage",
            "split",
            "step",
            "epoch",
            "metric",
            "value",
            "wall_s",
            "timestamp"
        ]
    );
}

#[test]
fn interval_batches_rows_into_few_parts() {
    let d = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::new(d.path(), "r", Duration::from_secs(3600)).unwrap();
    for step in 0..1000u64 {
        w.log("stage1", "train", step, 0.0, "loss", 1.0).unwrap();
    }
    assert!(
        metrics::part_files(d.path()).unwrap().is_empty(),
        "nothing before the interval"
    );
    w.flush().unwrap();
    assert_eq!(metrics::part_files(d.path()).unwrap().len(), 1);
    assert_eq!(metrics::read_rows(d.path()).unwrap().len(), 1000);
}

#[test]
fn dirty_tree_diff_is_captured_with_untracked_files() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path();
    git(repo, &["init", "-q", "-b", "main"]);
    write(repo, "a.txt", "one\n");
    write(repo, ".gitignore", "results/\n");
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "init"]);
    let clean = code_state(repo);
    assert!(!clean.dirty);
    assert_eq!(clean.commit.len(), 40);
    assert_eq!(clean.branch.as_deref(), Some("main"));
    assert!(clean.diff_hash.is_none());

    write(repo, "a.txt", "one\ntwo\n");
    write(repo, "new.txt", "brand new\n");
    std::fs::create_dir_all(repo.join("results")).unwrap();
    write(repo, "results/ignored.txt", "not part of the code\n");
    let dirty = code_state(repo);
    assert!(dirty.dirty);
    let diff = String::from_utf8_lossy(&dirty.diff);
    assert!(diff.contains("+two"), "{diff}");
    assert!(diff.contains("+brand new"), "untracked content: {diff}");
    assert!(
        !diff.contains("not part of the code"),
        "ignored files stay out"
    );
    let h1 = dirty.diff_hash.clone().unwrap();
    assert!(dirty.id_suffix().ends_with(&format!("-d{}", &h1[..8])));
    write(repo, "new.txt", "changed again\n");
    assert_ne!(
        code_state(repo).diff_hash.unwrap(),
        h1,
        "another diff, another hash"
    );

    let outside = tempfile::tempdir().unwrap();
    let none = code_state(outside.path());
    assert_eq!(none.commit, "no-git");
    assert_eq!(none.id_suffix(), "nogit");
}

#[test]
fn sweep_reuses_shared_stage1_and_skips_completed_runs() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let a = write(
        d.path(),
        "a.toml",
        &experiment(
            "r8",
            "[stage1]\nmax_steps = 3\n[stage2]\nmax_steps = 2\nlora_rank = 8\n",
        ),
    );
    let b = write(
        d.path(),
        "b.toml",
        &experiment(
            "r16",
            "[stage1]\nmax_steps = 3\n[stage2]\nmax_steps = 2\nlora_rank = 16\n",
        ),
    );

    let dry = harness(d.path(), &results)
        .args(["sweep", "--dry-run"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{plan}");
    assert!(plan.contains("runs earlier in this sweep"), "{plan}");
    assert!(!results.exists(), "a dry run writes nothing");

    // One at a time (the parallel sweep has its own test).
    succeed(
        harness(d.path(), &results)
            .args(["sweep", "--jobs", "1"])
            .arg(&a)
            .arg(&b),
    );
    let store = Store::new(&results);
    let ids = store.run_ids().unwrap();
    assert_eq!(ids.len(), 2);
    let r8 = store.resolve("r8").unwrap();
    let r16 = store.resolve("r16").unwrap();
    let s16 = store.read_status(&r16).unwrap();
    assert_eq!(s16.state, State::Completed);
    assert_eq!(s16.stages["stage1"].state, State::Reused);
    assert_eq!(s16.stages["stage1"].run_id, r8);
    assert_eq!(s16.stages["stage2"].state, State::Completed);
    assert!(s16.runner == "test");
    // Only the run that trained stage 1 has its metrics.
    let rows = metrics::read_rows(&store.run_dir(&r16).join("metrics")).unwrap();
    assert!(rows.iter().all(|r| r.stage == "stage2"));
    assert_eq!(
        metrics::part_files(&store.run_dir(&r8).join("metrics"))
            .unwrap()
            .len(),
        1,
        "compacted on completion"
    );
    for f in ["run.toml", "provenance.json", "status.json", "log.txt"] {
        assert!(store.run_dir(&r8).join(f).exists(), "{f}");
    }

    let again = harness(d.path(), &results)
        .arg("sweep")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert_eq!(
        text.matches("skipped: already completed").count(),
        2,
        "{text}"
    );

    // ls and show read what the runs wrote.
    let ls = harness(d.path(), &results)
        .args(["ls", "--format", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    for r in arr {
        assert_eq!(r["status"], "completed");
        assert!(r["id"].is_string() && r["name"].is_string() && r["commit"].is_string());
        assert!(r["metrics"]["stage2/train/loss"].is_number(), "{r}");
        assert!(
            r["metrics"]["stage1/train/loss"].is_number(),
            "reused stage metrics: {r}"
        );
    }
    let show = harness(d.path(), &results)
        .args(["show", &r16[..6]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && text.contains("lora_rank = 16"),
        "{text}"
    );
}

#[test]
fn parallel_sweep_runs_side_by_side_and_shares_stage1_with_the_first_listed() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    // a and b share stage 1; c has its own. Each stage step sleeps, so the runs overlap.
    let exp = |name: &str, depth: u32, rank: u32| {
        format!(
            "name = \"{name}\"\nseed = 1\n\n[model]\nvision = \"builtin:v\"\nlm = \"builtin:l\"\nprojector_depth = {depth}\n\n[stage1]\nmax_steps = 4\n[stage2]\nmax_steps = 2\nlora_rank = {rank}\n"
        )
    };
    let files = [
        write(d.path(), "a.toml", &exp("a", 2, 8)),
        write(d.path(), "b.toml", &exp("b", 2, 16)),
        write(d.path(), "c.toml", &exp("c", 1, 8)),
    ];
    let out = succeed(
        harness(d.path(), &results)
            .env("HARNESS_TEST_STEP_MS", "150")
            .args(["sweep", "--jobs", "2"])
            .args(&files),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let store = Store::new(&results);
    assert_eq!(store.run_ids().unwrap().len(), 3, "{stdout}");
    let (a, b, c) = (
        store.resolve("a").unwrap(),
        store.resolve("b").unwrap(),
        store.resolve("c").unwrap(),
    );
    for id in [&a, &b, &c] {
        assert_eq!(store.read_status(id).unwrap().state, State::Completed);
        assert!(
            stdout.contains(id.as_str()),
            "the table lists {id}: {stdout}"
        );
    }
    // The first listed run trained the shared stage; b reused it instead of training it.
    let sb = store.read_status(&b).unwrap();
    assert_eq!(sb.stages["stage1"].state, State::Reused);
    assert_eq!(sb.stages["stage1"].run_id, a);
    assert_eq!(
        store.read_status(&c).unwrap().stages["stage1"].state,
        State::Completed
    );
    // Children's output comes through, prefixed by the run's name; they took the parent's
    // code state (the run ids it planned), and its hand-over folder is gone.
    assert!(
        stderr.contains("[a] ") && stderr.contains("[c] "),
        "{stderr}"
    );
    assert!(!stderr.contains("HARNESS_SWEEP_CODE_STATE"), "{stderr}");
    assert!(std::fs::read_dir(&results).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".sweep")));
    // a and c overlapped: each started before the other ended.
    let (sa, sc) = (
        store.read_status(&a).unwrap(),
        store.read_status(&c).unwrap(),
    );
    assert!(
        sa.started < sc.ended.clone().unwrap() && sc.started < sa.ended.clone().unwrap(),
        "a {:?}..{:?}, c {:?}..{:?}",
        sa.started,
        sa.ended,
        sc.started,
        sc.ended
    );

    // Again with one more experiment: the three completed runs are skipped without a
    // process, and the new one reuses c's stage 1.
    let more = write(d.path(), "d.toml", &exp("d", 1, 16));
    let out = succeed(
        harness(d.path(), &results)
            .args(["sweep", "--jobs", "2"])
            .args(&files)
            .arg(&more),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("skipped: already completed").count(),
        3,
        "{stdout}"
    );
    let sd = store.read_status(&store.resolve("d").unwrap()).unwrap();
    assert_eq!(sd.state, State::Completed);
    assert_eq!(sd.stages["stage1"].state, State::Reused);
    assert_eq!(sd.stages["stage1"].run_id, c);
}

#[test]
fn invalid_file_stops_the_sweep_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let good = write(
        d.path(),
        "good.toml",
        &experiment("good", "[stage1]\nmax_steps = 1\n"),
    );
    let bad = write(
        d.path(),
        "bad.toml",
        &experiment("bad", "[stage2]\nlora_rank = -3\n"),
    );
    let out = harness(d.path(), &results)
        .arg("sweep")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("stage2.lora_rank") && err.contains("line 9"),
        "{err}"
    );
    assert!(!results.exists(), "nothing may run");
}

#[test]
fn two_processes_racing_for_one_run_have_one_winner() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let f = write(
        d.path(),
        "e.toml",
        &experiment(
            "race",
            "[stage1]\nmax_steps = 20\n[stage2]\nmax_steps = 1\n",
        ),
    );
    let spawn = || {
        harness(d.path(), &results)
            .env("HARNESS_TEST_STEP_MS", "20")
            .arg("run")
            .arg(&f)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    let ok = [&o1, &o2].iter().filter(|o| o.status.success()).count();
    let both = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o1.stderr),
        String::from_utf8_lossy(&o2.stderr)
    );
    // Either the loser saw the live claim, or it started after the winner finished and
    // found the run completed; never do both train it.
    let loser_saw_claim = both.contains("is claimed by pid");
    let skipped = [&o1, &o2]
        .iter()
        .any(|o| String::from_utf8_lossy(&o.stdout).contains("skipped"));
    assert!(ok == 1 && loser_saw_claim || ok == 2 && skipped, "{both}");
    let store = Store::new(&results);
    let id = store.resolve("race").unwrap();
    let rows = metrics::read_rows(&store.run_dir(&id).join("metrics")).unwrap();
    let loss_rows = rows
        .iter()
        .filter(|r| r.stage == "stage1" && r.metric == "loss")
        .count();
    assert_eq!(loss_rows, 20, "stage 1 trained exactly once");
}

#[test]
fn kill_9_keeps_flushed_metrics_and_resume_completes() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let steps = 400;
    let f = write(
        d.path(),
        "e.toml",
        &experiment(
            "killed",
            &format!(
                "[stage1]\nmax_steps = {steps}\ncheckpoint_every = 25\n[stage2]\nmax_steps = 2\n"
            ),
        ),
    );
    let mut child = harness(d.path(), &results)
        .env("HARNESS_TEST_STEP_MS", "10")
        .arg("run")
        .arg(&f)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = Store::new(&results);
    let metrics_dir = || {
        store
            .run_ids()
            .ok()
            .and_then(|i| i.first().cloned())
            .map(|id| store.run_dir(&id).join("metrics"))
    };
    // Let it write a few flushed parts (flush interval 2 s), then kill -9.
    assert!(wait_for(Duration::from_secs(30), || {
        metrics_dir()
            .map(|m| metrics::part_files(&m).unwrap_or_default().len() >= 2)
            .unwrap_or(false)
    }));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let id = store.run_ids().unwrap()[0].clone();
    let m = metrics_dir().unwrap();
    let r = metrics::read_dir(&m).unwrap();
    assert!(
        r.unreadable.is_empty(),
        "every flushed part readable: {:?}",
        r.unreadable
    );
    let before = metrics::frame_to_rows(&r.frame).unwrap();
    let max_step = before.iter().map(|r| r.step).max().unwrap();
    assert!(
        max_step > 0 && max_step < steps,
        "killed mid-stage at {max_step}"
    );

    let status = store.read_status(&id).unwrap();
    assert_eq!(status.state, State::Running, "the file still says running");
    // Same host, dead pid: shown as interrupted at once; elsewhere, after the timeout.
    assert_eq!(store.effective_state(&status), State::Interrupted);
    let ls = harness(d.path(), &results)
        .args(["ls", "--format", "csv"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).contains(",interrupted,"));

    // Without --resume the run refuses; with it, it continues from the last checkpoint.
    let refuse = harness(d.path(), &results)
        .arg("run")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!refuse.status.success());
    assert!(String::from_utf8_lossy(&refuse.stderr).contains("--resume"));
    succeed(
        harness(d.path(), &results)
            .args(["run", "--resume"])
            .arg(&f),
    );
    let status = store.read_status(&id).unwrap();
    assert_eq!(status.state, State::Completed);
    let rows = metrics::read_rows(&m).unwrap();
    let mut steps_seen: Vec<u64> = rows
        .iter()
        .filter(|r| r.stage == "stage1" && r.metric == "loss")
        .map(|r| r.step)
        .collect();
    steps_seen.sort();
    steps_seen.dedup();
    assert_eq!(
        steps_seen,
        (1..=steps).collect::<Vec<_>>(),
        "every step logged across the two attempts"
    );
    assert!(rows.iter().any(|r| r.stage == "stage2"));
}

#[test]
fn sigterm_marks_the_run_interrupted_and_flushes() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let f = write(
        d.path(),
        "e.toml",
        &experiment(
            "term",
            "[stage1]\nmax_steps = 100000\ncheckpoint_every = 1\n",
        ),
    );
    let mut child = harness(d.path(), &results)
        .env("HARNESS_TEST_STEP_MS", "5")
        .arg("run")
        .arg(&f)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = Store::new(&results);
    assert!(wait_for(Duration::from_secs(30), || store
        .run_ids()
        .ok()
        .and_then(|i| i.first().and_then(|id| store.read_status(id).ok()))
        .map(|s| s.stages.contains_key("stage1"))
        .unwrap_or(false)));
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap();
    assert!(!code.success());
    let id = store.run_ids().unwrap()[0].clone();
    let s = store.read_status(&id).unwrap();
    assert_eq!(s.state, State::Interrupted);
    assert_eq!(s.stages["stage1"].state, State::Interrupted);
    let rows = metrics::read_rows(&store.run_dir(&id).join("metrics")).unwrap();
    let last_ck = std::fs::read_dir(store.run_dir(&id).join("checkpoints/stage1"))
        .unwrap()
        .count();
    // Every step that finished was flushed at the interrupt, not only the 2 s intervals.
    let logged = rows.iter().filter(|r| r.metric == "loss").count();
    assert_eq!(
        logged, last_ck,
        "metrics flushed up to the last completed step"
    );
}

#[test]
fn resolve_accepts_ids_prefixes_and_names() {
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let f = write(
        d.path(),
        "e.toml",
        &experiment(
            "alpha",
            "[stage1]\nmax_steps = 1\n[stage2]\nmax_steps = 1\n",
        ),
    );
    let g = write(
        d.path(),
        "g.toml",
        &experiment(
            "alphabet",
            "[stage1]\nmax_steps = 2\n[stage2]\nmax_steps = 1\n",
        ),
    );
    assert!(harness(d.path(), &results)
        .arg("sweep")
        .arg(&f)
        .arg(&g)
        .status()
        .unwrap()
        .success());
    let store = Store::new(&results);
    let id = store.resolve("alpha").unwrap();
    assert!(id.starts_with("alpha-"));
    assert_eq!(store.resolve(&id).unwrap(), id);
    let e = format!("{:#}", store.resolve("alph").unwrap_err());
    assert!(e.contains("ambiguous") && e.contains("alphabet-"), "{e}");
    let e = format!("{:#}", store.resolve("zzz").unwrap_err());
    assert!(e.contains("no run matches"), "{e}");
}
