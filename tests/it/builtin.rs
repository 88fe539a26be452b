//! `builtin:NAME` backbones: trained on the experiment's synthetic world the first time they
//! are needed, keyed by recipe and world, and reused by every later experiment.

use std::path::Path;

use harness::backbones as builtin;
use harness::data::synth::{generate, SynthOptions};

use crate::common::{harness_train, succeed, write};

fn world(dir: &Path, seed: u64) {
    let o = SynthOptions {
        images: 60,
        size: 32,
        seed,
        val_fraction: 0.2,
        threads: 2,
    };
    generate(dir, &o).unwrap();
}

fn exp(dir: &Path, name: &str, depth: u32) -> std::path::PathBuf {
    let root = dir.join("synth").display().to_string();
    let text = format!(
        r#"name = "{name}"
seed = 2
[model]
vision = "builtin:clip-micro"
lm = "builtin:phi-micro"
projector_depth = {depth}
[data]
coco_root = "{root}"
instruct_json = "{root}/llava_instruct_150k.json"
instruct_val_json = "{root}/llava_instruct_val.json"
val_images = 4
stage2_val = 8
max_len = 200
[stage1]
max_steps = 2
batch = 8
[stage2]
max_steps = 2
batch = 4
lora_rank = 2
[eval]
caption_images = 2
qa_samples = 4
max_new_tokens = 4
gallery = 2
"#
    );
    write(dir, &format!("{name}.toml"), &text)
}

fn backbones(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache.join("backbones"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn builtin_backbones_are_built_once_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (results, cache) = (tmp.path().join("results"), tmp.path().join("cache"));
    world(&tmp.path().join("synth"), 4);
    let a = exp(tmp.path(), "a", 0);
    let run = |e: &Path| {
        let out =
            succeed(harness_train(tmp.path(), &results, &cache).args(["run", e.to_str().unwrap()]));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let out = run(&a);
    let built = backbones(&cache);
    assert_eq!(built.len(), 2, "{built:?}");
    assert!(built[0].starts_with("clip-micro-") && built[1].starts_with("phi-micro-"));
    for b in &built {
        let d = cache.join("backbones").join(b);
        assert!(d.join("config.json").exists() && d.join("model.safetensors").exists());
    }
    assert!(out.contains("builtin:clip-micro: not cached"), "{out}");

    // Another experiment on the same world: no new build, and it says nothing about one.
    let mtime = |b: &str| {
        std::fs::metadata(cache.join("backbones").join(b).join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = built.iter().map(|b| mtime(b)).collect();
    let b = exp(tmp.path(), "b", 1);
    let out = run(&b);
    assert!(!out.contains("not cached"), "{out}");
    assert_eq!(backbones(&cache), built);
    assert_eq!(built.iter().map(|b| mtime(b)).collect::<Vec<_>>(), before);
}

#[test]
fn parallel_sweep_builds_each_backbone_once_before_the_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (results, cache) = (tmp.path().join("results"), tmp.path().join("cache"));
    world(&tmp.path().join("synth"), 4);
    let (a, b) = (exp(tmp.path(), "a", 0), exp(tmp.path(), "b", 1));
    let out = succeed(
        harness_train(tmp.path(), &results, &cache)
            .args(["sweep", "--jobs", "2"])
            .arg(&a)
            .arg(&b),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // Both backbones were built by their own workers, the LM listed first, and neither
    // run built one again.
    assert!(
        err.contains("building 2 backbones, 2 at a time: phi-micro, clip-micro"),
        "{err}"
    );
    assert_eq!(err.matches("not cached").count(), 2, "{err}");
    assert!(
        err.contains("[phi-micro] builtin:phi-micro: not cached"),
        "{err}"
    );
    let built = backbones(&cache);
    assert_eq!(built.len(), 2, "{built:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(" completed ").count(), 2, "{stdout}");
}

#[test]
fn builtin_keys_follow_recipe_and_world() {
    let tmp = tempfile::tempdir().unwrap();
    let (w1, w2) = (tmp.path().join("w1"), tmp.path().join("w2"));
    world(&w1, 1);
    world(&w2, 2);
    let d1 = builtin::dir("clip-p8", &w1).unwrap();
    assert_eq!(d1, builtin::dir("clip-p8", &w1).unwrap());
    assert_ne!(d1, builtin::dir("clip-p8", &w2).unwrap(), "another world");
    let key = |d: std::path::PathBuf| {
        let n = d.file_name().unwrap().to_string_lossy().into_owned();
        n.rsplit('-').next().unwrap().to_string()
    };
    assert_ne!(
        key(d1.clone()),
        key(builtin::dir("clip-p16", &w1).unwrap()),
        "another recipe"
    );
    assert_ne!(
        builtin::spec_key("builtin:clip-p8"),
        builtin::spec_key("builtin:clip-p16")
    );
    assert_eq!(builtin::spec_key("some/path"), None);

    let err = builtin::dir("nope", &w1).unwrap_err().to_string();
    assert!(
        err.contains("unknown builtin backbone") && err.contains("clip-p8"),
        "{err}"
    );
    let err = format!("{:#}", builtin::dir("clip-p8", tmp.path()).unwrap_err());
    assert!(
        err.contains("synth.json") && err.contains("harness synth"),
        "{err}"
    );
}

/// Two processes that need the same missing backbone at once (sweep workers sharing a
/// cache): one trains it under the lease beside the cache folder, the other waits for it.
#[test]
fn racing_builds_of_one_backbone_train_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (results, cache) = (tmp.path().join("results"), tmp.path().join("cache"));
    let world_dir = tmp.path().join("synth");
    world(&world_dir, 4);
    let spawn = || {
        harness_train(tmp.path(), &results, &cache)
            .args(["pretrain", "builtin", "phi-micro", "--world"])
            .arg(&world_dir)
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
    let err = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o1.stderr),
        String::from_utf8_lossy(&o2.stderr)
    );
    assert!(o1.status.success() && o2.status.success(), "{err}");
    assert_eq!(err.matches("not cached, training it").count(), 1, "{err}");
    assert_eq!(o1.stdout, o2.stdout, "both name the same folder");
    // The lease and its heartbeat are gone; only the build is left.
    let built = backbones(&cache);
    assert_eq!(built.len(), 1, "{built:?}");
    assert!(built[0].starts_with("phi-micro-"));
}

/// Two `harness worker`s on a saved sweep of real (micro) experiments: the two missing
/// backbones are built once each, by whichever worker took each lease, and both runs
/// train once.
#[test]
fn workers_build_shared_backbones_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (results, cache) = (tmp.path().join("results"), tmp.path().join("cache"));
    world(&tmp.path().join("synth"), 4);
    let files = [exp(tmp.path(), "a", 0), exp(tmp.path(), "b", 1)];
    let store = harness::store::Store::new(&results);
    let exps = harness::sweep::plan::load_all(&files).unwrap();
    let code = harness::store::provenance::code_state(tmp.path());
    let planned = harness::sweep::plan::plan(&store, &exps, &code, Default::default()).unwrap();
    let saved =
        harness::sweep::cluster::save(&results, &planned, &code, tmp.path(), Default::default())
            .unwrap();
    let spawn = || {
        harness_train(tmp.path(), &results, &cache)
            .args(["worker", &saved.id])
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
    let err = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o1.stderr),
        String::from_utf8_lossy(&o2.stderr)
    );
    assert!(o1.status.success() && o2.status.success(), "{err}");
    assert_eq!(err.matches("not cached, training it").count(), 2, "{err}");
    assert_eq!(backbones(&cache).len(), 2, "{err}");
    for p in &planned {
        let s = store.read_status(&p.run_id).unwrap();
        assert_eq!(s.state, harness::store::State::Completed, "{:?}", s.error);
        assert_eq!(
            s.stages["stage1"].run_id, p.run_id,
            "own stage 1 (depths differ)"
        );
    }
}
