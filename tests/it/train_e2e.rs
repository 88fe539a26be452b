//! Both stages for real on the synthetic world with tiny HF-format backbones, through the
//! binary: learning, metrics, the feature cache, and kill -9 + resume.

use std::path::Path;
use std::time::Duration;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use harness::backend::Compute;
use harness::data::synth::{generate, SynthOptions};
use harness::model::projector::{Projector, ProjectorConfig};
use harness::store::metrics;
use harness::store::{State, Store};

use crate::common::{harness_train, repo_path, succeed, wait_for, write};

pub(crate) fn world(dir: &Path) {
    let o = SynthOptions {
        images: 160,
        size: 32,
        seed: 3,
        val_fraction: 0.1,
        threads: 2,
    };
    generate(&dir.join("synth"), &o).unwrap();
}

pub(crate) fn exp(dir: &Path, name: &str, stage1_steps: u64, extra: &str) -> std::path::PathBuf {
    exp_with(dir, name, stage1_steps, 6, extra)
}

pub(crate) fn exp_with(
    dir: &Path,
    name: &str,
    stage1_steps: u64,
    stage2_steps: u64,
    extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        r#"name = "{name}"
seed = 5
[model]
vision = "{vision}"
lm = "{lm}"
projector_depth = 1
[data]
coco_root = "{root}/synth"
instruct_json = "{root}/synth/llava_instruct_150k.json"
val_images = 8
stage2_val = 16
max_len = 96
[stage1]
max_steps = {stage1_steps}
batch = 16
grad_accum = 1
lr = 1e-2
warmup = 0.05
checkpoint_every = 10
keep_checkpoints = 2
[stage2]
max_steps = {stage2_steps}
batch = 8
grad_accum = 1
lr = 1e-3
projector_lr = 1e-3
lora_rank = 8
lora_alpha = 16
checkpoint_every = 3
[eval]
caption_images = 8
qa_samples = 40
max_new_tokens = 24
gallery = 4
{extra}"#,
        vision = repo_path("tests/fixtures/models/clip_vision").display(),
        lm = repo_path("tests/fixtures/train/phi").display(),
        root = dir.display(),
    );
    write(dir, &format!("{name}.toml"), &text)
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub(crate) fn series(rows: &[metrics::Row], stage: &str, split: &str, metric: &str) -> Vec<f64> {
    rows.iter()
        .filter(|r| r.stage == stage && r.split == split && r.metric == metric)
        .map(|r| r.value)
        .collect()
}

pub(crate) fn projector_values(run_dir: &Path) -> Vec<f32> {
    let dev = Default::default();
    let cfg = ProjectorConfig::new(32, 64).with_depth(1);
    let p: Projector<Compute> = cfg.init(&dev);
    let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(run_dir.join("checkpoints/stage1/final/projector"), &dev)
        .unwrap();
    let p = p.load_record(rec);
    let mut out = vec![];
    for t in [
        p.input.weight.val(),
        p.blocks[0].w1.weight.val(),
        p.blocks[0].w2.weight.val(),
    ] {
        out.extend(t.into_data().to_vec::<f32>().unwrap());
    }
    out
}

#[test]
fn two_stages_train_on_the_synthetic_world() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let (results, cache) = (d.path().join("results"), d.path().join("cache"));
    let f = exp_with(d.path(), "e2e", 100, 30, "");
    succeed(harness_train(d.path(), &results, &cache).arg("run").arg(&f));
    let store = Store::new(&results);
    let id = store.resolve("e2e").unwrap();
    assert_eq!(store.read_status(&id).unwrap().state, State::Completed);
    let rows = metrics::read_rows(&store.run_dir(&id).join("metrics")).unwrap();

    let loss = series(&rows, "stage1", "train", "loss");
    assert_eq!(loss.len(), 100);
    let (first, last) = (mean(&loss[..5]), mean(&loss[loss.len() - 5..]));
    eprintln!("stage 1 loss: first 5 steps {first:.3}, last 5 steps {last:.3}");
    // Captions have irreducible entropy (five paraphrases per image, shapes in any order),
    // so the floor is far above zero: measured 1.13 -> 0.78 at this size.
    assert!(
        last < 0.75 * first,
        "stage-1 loss must fall well below its start: {first} -> {last}"
    );
    for m in [
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "step_time_s",
        "peak_mem_bytes",
    ] {
        assert_eq!(series(&rows, "stage1", "train", m).len(), 100, "{m}");
    }
    assert!(!series(&rows, "stage1", "val", "loss").is_empty());
    assert!(!series(&rows, "stage1", "val", "perplexity").is_empty());
    let loss2 = series(&rows, "stage2", "train", "loss");
    assert_eq!(loss2.len(), 30);
    let (first2, last2) = (mean(&loss2[..5]), mean(&loss2[loss2.len() - 5..]));
    eprintln!("stage 2 loss: first 5 steps {first2:.3}, last 5 steps {last2:.3} ({loss2:?})");
    assert!(
        last2 < 0.9 * first2,
        "stage-2 loss must fall: {first2} -> {last2}"
    );
    assert!(!series(&rows, "stage2", "val", "loss").is_empty());
    let cached = series(&rows, "stage1", "data", "clip_forward_images");
    assert!(cached[0] > 0.0, "the first stage computes CLIP features");
    let cached2 = series(&rows, "stage2", "data", "clip_forward_images");
    assert_eq!(
        cached2,
        [0.0],
        "stage 2 reuses stage 1's cached features (same images)"
    );
    assert!(rows.iter().any(|r| r.metric.starts_with("skipped/")));

    // Evaluation at the end of each stage: caption metrics, QA accuracy per type, a gallery.
    for m in ["Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"] {
        let v = series(&rows, "stage1", "eval", m);
        assert_eq!(v.len(), 1, "{m}");
        assert!(v[0].is_finite() && v[0] >= 0.0, "{m} = {}", v[0]);
    }
    let acc = series(&rows, "stage2", "eval", "qa_acc");
    assert_eq!(acc.len(), 1);
    assert!((0.0..=1.0).contains(&acc[0]));
    let types: Vec<&str> = rows
        .iter()
        .filter(|r| r.stage == "stage2" && r.metric.starts_with("qa_acc/"))
        .map(|r| r.metric.as_str())
        .collect();
    assert!(types.len() >= 2, "accuracy per question type: {types:?}");
    // Every scored item is in the run's item tables, and recomputing the metrics from
    // them gives what was logged.
    let items = harness::store::items::read_dir(&store.run_dir(&id)).unwrap();
    let caps: Vec<_> = items.iter().filter(|i| i.task == "captions").collect();
    let qa: Vec<_> = items.iter().filter(|i| i.task == "qa").collect();
    assert_eq!(caps.len(), 8, "caption_images = 8");
    assert!(caps
        .iter()
        .all(|i| i.item.ends_with(".jpg") && !i.item.contains('/')));
    assert!(!qa.is_empty() && qa.len() <= 40);
    assert!(qa
        .iter()
        .all(|i| i.item.contains(".jpg#") && (i.score == 0.0 || i.score == 1.0)));
    let recomputed = harness::eval::intervals::run_intervals(&items, &Default::default()).unwrap();
    for m in recomputed {
        let logged = rows
            .iter()
            .find(|r| format!("{}/{}/{}", r.stage, r.split, r.metric) == m.key)
            .unwrap_or_else(|| panic!("{} was not logged", m.key));
        assert!(
            (logged.value - m.interval.value).abs() < 1e-9,
            "{}: logged {} recomputed {}",
            m.key,
            logged.value,
            m.interval.value
        );
        assert!(m.interval.low <= m.interval.value && m.interval.value <= m.interval.high);
    }
    eprintln!(
        "eval: Bleu_4 {:.3} CIDEr {:.3} qa_acc {:.3} ({types:?})",
        series(&rows, "stage1", "eval", "Bleu_4")[0],
        series(&rows, "stage1", "eval", "CIDEr")[0],
        acc[0]
    );
    let samples: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.run_dir(&id).join("samples.json")).unwrap())
            .unwrap();
    let stages: Vec<&str> = samples
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["stage1"; 4]
            .iter()
            .chain(&["stage2"; 4])
            .copied()
            .collect::<Vec<_>>()
    );
    assert!(
        store.run_dir(&id).join("report.html").exists(),
        "a report is written when the run ends"
    );
}

#[test]
fn kill_9_then_resume_reaches_the_same_weights() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let cache = d.path().join("cache");
    // Reference: uninterrupted.
    let f = exp(d.path(), "ref", 60, "");
    let r1 = d.path().join("r1");
    succeed(harness_train(d.path(), &r1, &cache).arg("run").arg(&f));
    let s1 = Store::new(&r1);
    let reference = projector_values(&s1.run_dir(&s1.resolve("ref").unwrap()));

    // Same experiment, killed mid-stage 1 after a checkpoint, then resumed.
    let run = kill_mid_stage_then_resume(d.path(), &d.path().join("r2"), &cache, &f, "stage1");
    assert_eq!(
        projector_values(&run),
        reference,
        "bitwise equal weights after kill -9 and resume"
    );
}

/// Runs `f` into `results`, kills it with SIGKILL once `stage` has written a checkpoint (and
/// before it finished), resumes it with `--resume`, and returns the run's folder.
pub(crate) fn kill_mid_stage_then_resume(
    dir: &Path,
    results: &Path,
    cache: &Path,
    f: &Path,
    stage: &str,
) -> std::path::PathBuf {
    let mut child = harness_train(dir, results, cache)
        .arg("run")
        .arg(f)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = Store::new(results);
    let checkpointed = || {
        store
            .run_ids()
            .ok()
            .and_then(|i| i.first().cloned())
            .is_some_and(|id| {
                std::fs::read_dir(store.run_dir(&id).join("checkpoints").join(stage))
                    .map(|r| {
                        r.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
                    })
                    .unwrap_or(false)
            })
    };
    assert!(
        wait_for(Duration::from_secs(180), checkpointed),
        "no {stage} checkpoint written"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let run = store.run_dir(&store.run_ids().unwrap()[0]);
    let final_dir = run.join("checkpoints").join(stage).join("final");
    assert!(!final_dir.exists(), "killed before the end of {stage}");
    let out = harness_train(dir, results, cache)
        .args(["run", "--resume"])
        .arg(f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("{stage}: resuming at step")), "{err}");
    run
}

/// Every adapter weight of a run's stage-2 result, in layer order.
pub(crate) fn adapter_values(run_dir: &Path) -> Vec<f32> {
    use harness::model::checkpoint::Checkpoint;
    use harness::model::lora::LoraConfig;
    use harness::model::phi::{Phi, PhiConfig};
    let dev = Default::default();
    let lm_dir = repo_path("tests/fixtures/train/phi");
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.1,
        ..LoraConfig::default()
    };
    let lm: Phi<Compute> = Phi::load_with(
        &Checkpoint::open(&lm_dir).unwrap(),
        &PhiConfig::load(&lm_dir).unwrap(),
        &dev,
        &lora,
    )
    .unwrap();
    let lm = harness::model::assembly::load_adapters(
        lm,
        &run_dir.join("checkpoints/stage2/final"),
        &dev,
    )
    .unwrap();
    let mut out = vec![];
    for l in lm.adapters().layers {
        for a in [l.q_proj, l.k_proj, l.v_proj, l.dense, l.fc1, l.fc2]
            .into_iter()
            .flatten()
        {
            out.extend(a.a.val().into_data().to_vec::<f32>().unwrap());
            out.extend(a.b.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    out
}

#[test]
fn kill_9_in_stage_2_then_resume_reaches_the_same_adapters() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let cache = d.path().join("cache");
    let f = exp(d.path(), "s2", 20, "");
    // A longer stage 2 with adapter dropout on: resumed draws must equal uninterrupted ones.
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("max_steps = 6", "max_steps = 24")
        .replace("checkpoint_every = 3", "checkpoint_every = 4")
        .replace("lora_alpha = 16", "lora_alpha = 16\nlora_dropout = 0.1");
    std::fs::write(&f, text).unwrap();

    let r1 = d.path().join("r1");
    succeed(harness_train(d.path(), &r1, &cache).arg("run").arg(&f));
    let s1 = Store::new(&r1);
    let reference = adapter_values(&s1.run_dir(&s1.resolve("s2").unwrap()));
    assert!(reference.iter().any(|&v| v != 0.0));

    let run = kill_mid_stage_then_resume(d.path(), &d.path().join("r2"), &cache, &f, "stage2");
    assert_eq!(
        adapter_values(&run),
        reference,
        "bitwise equal adapters after kill -9 in stage 2 and resume"
    );
}
