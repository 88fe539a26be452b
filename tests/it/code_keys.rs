//! The code in the stage keys: results of other code retrain (and the plan says which files
//! differ), results of the same code are reused, `--reuse config` crosses a code change
//! and says so, and the binary's fingerprint is the hash of the files as they are.
//!
//! "Other code" is made the way an older binary would have left the store: a stage is run
//! with the orchestration test runner, then its run's recorded file hashes are edited (as
//! a binary whose `src/train/loss.rs` differed would have recorded them), and its stage
//! records and status are rewritten under the keys that code gives them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::config::{self, fingerprint};
use harness::store::{State, Store};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{experiment, git, harness, repo_path, succeed, write};

/// Commits everything in `repo` (a change outside the fingerprinted code); the new commit.
fn commit(repo: &Path, note: &str) -> String {
    write(repo, "notes.md", note);
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", note]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A git repository holding two experiments that share stage 1 (they differ in LoRA rank).
fn repo() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    git(r, &["init", "-q", "-b", "main"]);
    write(r, ".gitignore", "results/\nreports/\n");
    let stages =
        |rank| format!("[stage1]\nmax_steps = 3\n[stage2]\nmax_steps = 2\nlora_rank = {rank}\n");
    let a = write(r, "a.toml", &experiment("a", &stages(8)));
    let b = write(r, "b.toml", &experiment("b", &stages(16)));
    let results = r.join("results");
    (d, results, a, b)
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn save(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn keys_of(file: &Path) -> config::StageKeys {
    config::stage_keys(&config::load(file).unwrap().exp)
}

/// Rewrites run `id` as a binary whose fingerprinted files were `edit`ed would have written
/// it: its provenance's file hashes and fingerprint, and both stages' records and status
/// under the keys that code gives them. Returns that code's fingerprint.
fn as_if_other_code(
    results: &Path,
    id: &str,
    edit: impl FnOnce(&mut BTreeMap<String, String>),
) -> String {
    let prov_path = results.join(id).join("provenance.json");
    let mut prov = read(&prov_path);
    let mut files: BTreeMap<String, String> =
        serde_json::from_value(prov["fingerprint"]["files"].clone()).unwrap();
    edit(&mut files);
    let old = fingerprint::combine(&files);
    prov["fingerprint"] = json!({ "sha256": old, "files": files });
    save(&prov_path, &prov);
    let status_path = results.join(id).join("status.json");
    let mut status = read(&status_path);
    let mut stage1: Option<String> = None;
    for n in [1, 2] {
        let st = &mut status["stages"][format!("stage{n}")];
        assert_eq!(st["run_id"], id, "stage {n} was trained by {id}");
        let rec_path = results
            .join("_stages")
            .join(format!("{}.json", st["key"].as_str().unwrap()));
        let mut rec = read(&rec_path);
        let key =
            config::stage_code_key(rec["config_key"].as_str().unwrap(), &old, stage1.as_deref());
        rec["key"] = json!(key);
        rec["fingerprint"] = json!(old);
        std::fs::remove_file(&rec_path).unwrap();
        save(&results.join("_stages").join(format!("{key}.json")), &rec);
        st["key"] = json!(key);
        if n == 1 {
            stage1 = Some(key);
        }
    }
    save(&status_path, &status);
    old
}

/// Rewrites run `id` as a binary from before code fingerprints wrote it: no fingerprint in
/// its provenance, its stages recorded under their config keys with no config key or
/// fingerprint beside them.
fn as_if_before_fingerprints(results: &Path, id: &str) {
    let prov_path = results.join(id).join("provenance.json");
    let mut prov = read(&prov_path);
    prov.as_object_mut().unwrap().remove("fingerprint");
    save(&prov_path, &prov);
    let status_path = results.join(id).join("status.json");
    let mut status = read(&status_path);
    for n in [1, 2] {
        let st = &mut status["stages"][format!("stage{n}")];
        let rec_path = results
            .join("_stages")
            .join(format!("{}.json", st["key"].as_str().unwrap()));
        let rec = read(&rec_path);
        let key = rec["config_key"].as_str().unwrap().to_string();
        std::fs::remove_file(&rec_path).unwrap();
        let old = json!({ "key": key, "stage": n, "run_id": id, "completed": rec["completed"] });
        save(&results.join("_stages").join(format!("{key}.json")), &old);
        st["key"] = json!(key);
    }
    save(&status_path, &status);
}

fn dry_run(repo: &Path, results: &Path, args: &[&str], files: &[&Path]) -> String {
    let out = succeed(
        harness(repo, results)
            .args(["sweep", "--dry-run"])
            .args(args)
            .args(files),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The run id the plan gives experiment `name` (`NAME  (FILE)  run ID`).
fn planned_id(plan: &str, name: &str) -> String {
    let line = plan
        .lines()
        .find(|l| l.starts_with(&format!("{name}  ")))
        .unwrap();
    line.split("  run ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The line of the plan for `stage` of the run listed under `name`.
fn plan_line(plan: &str, name: &str, stage: u8) -> String {
    let mut lines = plan
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{name}  ")));
    lines
        .find(|l| l.trim_start().starts_with(&format!("stage {stage} @")))
        .unwrap_or_else(|| panic!("no stage {stage} of {name} in:\n{plan}"))
        .trim()
        .to_string()
}

#[test]
fn other_code_retrains_and_names_the_files_same_code_reuses_and_reuse_config_crosses() {
    let (d, results, a, b) = repo();
    let r = d.path();
    let x = commit(r, "one");
    let x7 = &x[..7];
    succeed(harness(r, &results).args(["sweep", "--jobs", "1"]).arg(&a));
    let store = Store::new(&results);
    let ra = store.resolve("a").unwrap();
    let (ka, kb) = (keys_of(&a), keys_of(&b));
    assert_eq!(ka.code, fingerprint::FINGERPRINT);
    assert_eq!(ka.stage1, kb.stage1, "a and b share stage 1");
    assert_eq!(
        ka.stage1,
        config::stage_code_key(&ka.stage1_config, fingerprint::FINGERPRINT, None)
    );
    assert_ne!(ka.stage1, ka.stage1_config);

    // provenance.json carries this binary's fingerprint and the hash of every file it covers.
    let prov = store.read_provenance(&ra).unwrap();
    let fp = prov.fingerprint.expect("a fingerprint in provenance.json");
    assert_eq!(fp.sha256, fingerprint::FINGERPRINT);
    assert_eq!(fp.files.len(), fingerprint::FILES.len());
    assert!(fp.files.contains_key("src/train/loss.rs") && fp.files.contains_key("Cargo.lock"));
    assert!(fp
        .files
        .keys()
        .all(|f| !f.starts_with("src/report/") && !f.starts_with("tests/")));
    // The stage record carries its config key and the fingerprint.
    let rec = store
        .completed_stage(&ka.stage1)
        .expect("stage 1 recorded under its key");
    assert_eq!(rec.run_id, ra);
    assert_eq!(rec.config_key.as_deref(), Some(ka.stage1_config.as_str()));
    assert_eq!(rec.fingerprint.as_deref(), Some(fingerprint::FINGERPRINT));

    // A commit that changes no fingerprinted file: a new run id, the same code, reuse.
    commit(r, "two");
    let plan = dry_run(r, &results, &[], &[&a]);
    assert_eq!(
        plan_line(&plan, "a", 1),
        format!("stage 1 @ {}: reuse from {ra}", &ka.stage1[..12])
    );
    assert_eq!(
        plan_line(&plan, "a", 2),
        format!("stage 2 @ {}: reuse from {ra}", &ka.stage2[..12])
    );

    // The same store as a binary whose loss.rs differed, and which had a file since removed.
    let old = as_if_other_code(&results, &ra, |f| {
        f.insert("src/train/loss.rs".into(), "0".repeat(64));
        f.insert("src/train/retired.rs".into(), "1".repeat(64));
    });
    assert_ne!(old, fingerprint::FINGERPRINT);
    let differ = format!(
        "results exist for this config (run {ra}, commit {x7}) but the code differs in 2 files: src/train/loss.rs, src/train/retired.rs"
    );
    let plan = dry_run(r, &results, &[], &[&a, &b]);
    assert_eq!(
        plan_line(&plan, "a", 1),
        format!("stage 1 @ {}: run: {differ}", &ka.stage1[..12])
    );
    assert_eq!(
        plan_line(&plan, "a", 2),
        format!("stage 2 @ {}: run: {differ}", &ka.stage2[..12])
    );
    assert_eq!(
        plan_line(&plan, "b", 1),
        format!(
            "stage 1 @ {}: reuse from {} (runs earlier in this sweep)",
            &kb.stage1[..12],
            planned_id(&plan, "a")
        )
    );
    assert_eq!(
        plan_line(&plan, "b", 2),
        format!(
            "stage 2 @ {}: run: no result for this key",
            &kb.stage2[..12]
        )
    );

    // --reuse config: both of a's stages and b's stage 1 come from a's old run.
    let across = format!(
        "across a code change from commit {x7} (the code differs in 2 files: src/train/loss.rs, src/train/retired.rs)"
    );
    let plan = dry_run(r, &results, &["--reuse", "config"], &[&a, &b]);
    assert!(
        plan_line(&plan, "a", 1).ends_with(&format!(": reuse from {ra} {across}")),
        "{plan}"
    );
    assert!(
        plan_line(&plan, "a", 2).ends_with(&format!(": reuse from {ra} {across}")),
        "{plan}"
    );
    assert!(
        plan_line(&plan, "b", 1).ends_with(&format!(": reuse from {ra} {across}")),
        "{plan}"
    );
    assert!(
        plan_line(&plan, "b", 2).ends_with(": run: no result for this key"),
        "{plan}"
    );

    succeed(
        harness(r, &results)
            .args(["sweep", "--jobs", "1", "--reuse", "config"])
            .arg(&a)
            .arg(&b),
    );
    let (ra2, rb) = (store.resolve("a").unwrap(), store.resolve("b").unwrap());
    assert_ne!(ra2, ra);
    let sa = store.read_status(&ra2).unwrap();
    assert_eq!(sa.state, State::Completed);
    for stage in ["stage1", "stage2"] {
        let st = &sa.stages[stage];
        assert_eq!(
            (st.state, st.run_id.as_str()),
            (State::Reused, ra.as_str()),
            "{stage}"
        );
        let c = st
            .reused_across_code
            .as_ref()
            .expect("recorded as across a code change");
        assert_eq!(c.from_commit, x);
        assert_eq!(c.from_fingerprint.as_deref(), Some(old.as_str()));
        assert_eq!(c.files, ["src/train/loss.rs", "src/train/retired.rs"]);
    }
    // status.json says so in plain JSON.
    let raw = read(&results.join(&ra2).join("status.json"));
    assert_eq!(
        raw["stages"]["stage1"]["reused_across_code"]["from_commit"],
        x
    );
    // b trained stage 2 on the old stage 1: its key chains that result's key, so it never
    // passes for a stage 2 of this code alone.
    let sb = store.read_status(&rb).unwrap();
    assert_eq!(sb.stages["stage1"].state, State::Reused);
    let k1_old = config::stage_code_key(&kb.stage1_config, &old, None);
    assert_eq!(sb.stages["stage1"].key, k1_old);
    let st2 = &sb.stages["stage2"];
    assert_eq!(
        (st2.state, st2.run_id.as_str()),
        (State::Completed, rb.as_str())
    );
    assert!(st2.reused_across_code.is_none());
    let k2 = config::stage_code_key(&kb.stage2_config, fingerprint::FINGERPRINT, Some(&k1_old));
    assert_eq!(st2.key, k2);
    assert_ne!(k2, kb.stage2);
    assert_eq!(store.completed_stage(&k2).unwrap().run_id, rb);
    assert!(store.completed_stage(&kb.stage2).is_none());

    // The run report and compare say it.
    let say = format!("reused across a code change from commit {x7}");
    let page = std::fs::read_to_string(results.join(&ra2).join("report.html")).unwrap();
    assert!(page.contains(&say), "run report");
    let cmp = succeed(
        harness(r, &results)
            .args(["compare", &ra, &ra2, "--reports"])
            .arg(r.join("reports")),
    );
    let cmp_page = std::fs::read_to_string(String::from_utf8_lossy(&cmp.stdout).trim()).unwrap();
    assert!(
        cmp_page.contains(&format!("{ra2}: stage1 {say}")),
        "compare page"
    );
    let show = succeed(harness(r, &results).args(["show", &ra2]));
    assert!(String::from_utf8_lossy(&show.stdout)
        .contains(&format!("across a code change from commit {x7}")));

    // Back to the default: b retrains both stages, since its stage 1 of this code is missing
    // and its recorded stage 2 stands on other code's stage 1.
    commit(r, "three");
    let plan = dry_run(r, &results, &[], &[&b]);
    assert!(
        plan_line(&plan, "b", 1).ends_with(&format!(": run: {differ}")),
        "{plan}"
    );
    assert!(
        plan_line(&plan, "b", 2).ends_with(&format!(
            ": run: results exist for this config (run {rb}, commit {}) but it was trained by this code, on a stage-1 result of other code",
            &git(r, &["rev-parse", "HEAD~1"])[..7]
        )),
        "{plan}"
    );
    succeed(harness(r, &results).args(["sweep", "--jobs", "1"]).arg(&b));
    let rb3 = store.resolve("b").unwrap();
    let s3 = store.read_status(&rb3).unwrap();
    for (stage, key) in [("stage1", &kb.stage1), ("stage2", &kb.stage2)] {
        let st = &s3.stages[stage];
        assert_eq!(
            (st.state, st.run_id.as_str(), &st.key),
            (State::Completed, rb3.as_str(), key),
            "{stage}"
        );
    }
}

#[test]
fn results_from_before_fingerprints_retrain_unless_reuse_config() {
    let (d, results, a, _) = repo();
    let r = d.path();
    let x = commit(r, "one");
    succeed(harness(r, &results).args(["sweep", "--jobs", "1"]).arg(&a));
    let store = Store::new(&results);
    let ra = store.resolve("a").unwrap();
    as_if_before_fingerprints(&results, &ra);
    let ka = keys_of(&a);
    assert!(store.completed_stage(&ka.stage1).is_none());
    commit(r, "two");
    let plan = dry_run(r, &results, &[], &[&a]);
    let legacy = format!(
        "results exist for this config (run {ra}, commit {}) but its run recorded no code fingerprint",
        &x[..7]
    );
    assert!(
        plan_line(&plan, "a", 1).contains(&format!(": run: {legacy}")),
        "{plan}"
    );
    assert!(
        plan_line(&plan, "a", 2).contains(&format!(": run: {legacy}")),
        "{plan}"
    );

    succeed(
        harness(r, &results)
            .args(["run", "--reuse", "config"])
            .arg(&a),
    );
    let ra2 = store.resolve("a").unwrap();
    let s = store.read_status(&ra2).unwrap();
    assert_eq!(s.state, State::Completed);
    for stage in ["stage1", "stage2"] {
        let st = &s.stages[stage];
        assert_eq!((st.state, st.run_id.as_str()), (State::Reused, ra.as_str()));
        let c = st.reused_across_code.as_ref().unwrap();
        assert_eq!(
            (c.from_commit.as_str(), c.from_fingerprint.as_ref()),
            (x.as_str(), None)
        );
        // The commit holds no fingerprinted file (this repository is not the harness's
        // source), so which files differ is unknown.
        assert!(c.files.is_empty() && !c.files_from_commit);
    }
    assert_eq!(
        s.stages["stage1"].key, ka.stage1_config,
        "the old record's key"
    );

    // In a checkout of the harness's source, the old run's commit says which files differ:
    // git2 reads its fingerprinted files. Here the commit holds this binary's files, with
    // loss.rs changed, then unchanged.
    let with_source = |loss_differs: bool| -> String {
        for (f, _) in fingerprint::FILES {
            let mut bytes = std::fs::read(repo_path(f)).unwrap();
            if loss_differs && *f == "src/train/loss.rs" {
                bytes.extend_from_slice(b"\n// other code\n");
            }
            let p = r.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        // A file the list leaves out differs too, and is not named.
        std::fs::create_dir_all(r.join("src/report")).unwrap();
        write(r, "src/report/html.rs", &format!("// {loss_differs}\n"));
        let c = commit(r, &format!("source, loss differs: {loss_differs}"));
        let prov_path = results.join(&ra).join("provenance.json");
        let mut prov = read(&prov_path);
        prov["code"]["commit"] = json!(c);
        save(&prov_path, &prov);
        c
    };
    let y = with_source(true);
    let plan = dry_run(r, &results, &[], &[&a]);
    let named = format!(
        ": run: results exist for this config (run {ra}, commit {}) but its run recorded no code fingerprint, and the code at its commit differs in 1 file: src/train/loss.rs",
        &y[..7]
    );
    for n in [1, 2] {
        assert!(plan_line(&plan, "a", n).ends_with(&named), "{plan}");
    }
    let z = with_source(false);
    let plan = dry_run(r, &results, &[], &[&a]);
    // Still retrained (the record's key is not this code's), with the reason.
    let same = format!(
        ": run: results exist for this config (run {ra}, commit {}) but its run recorded no code fingerprint, though the fingerprinted files at its commit are those of this code",
        &z[..7]
    );
    for n in [1, 2] {
        assert!(plan_line(&plan, "a", n).ends_with(&same), "{plan}");
    }
}

#[test]
fn the_embedded_hashes_are_those_of_the_files_as_they_are() {
    let mut listing = String::new();
    for (f, h) in fingerprint::FILES {
        let bytes = std::fs::read(repo_path(f)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), *h, "{f}");
        listing.push_str(&format!("{h}  {f}\n"));
    }
    // `sha256sum FILES | sha256sum`, the files in path order.
    assert_eq!(
        hex::encode(Sha256::digest(listing.as_bytes())),
        fingerprint::FINGERPRINT
    );
    // Every training source file is in it, save in-run evaluation and the bench.
    let mut train: Vec<String> = std::fs::read_dir(repo_path("src/train"))
        .unwrap()
        .map(|e| format!("src/train/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".rs") && !f.ends_with("/evaluate.rs") && !f.ends_with("/bench.rs"))
        .collect();
    train.sort();
    let in_fp: Vec<String> = fingerprint::FILES
        .iter()
        .map(|(f, _)| f.to_string())
        .filter(|f| f.starts_with("src/train/"))
        .collect();
    assert_eq!(in_fp, train);
}
