//! Data parallelism through the binary: two workers sharing the CPU device (`devices =
//! [0, 0]`), each on half of every global micro-batch, against one worker on the whole of
//! it; and kill -9 + `--resume` with two workers.

use std::path::{Path, PathBuf};

use harness::store::{metrics, Store};

use crate::common::{harness_train, succeed};
use crate::model_parity::max_abs;
use crate::train_e2e::{
    adapter_values, exp_with, kill_mid_stage_then_resume, projector_values, series, world,
};

/// The e2e experiment with `workers` workers on the CPU at `batch / workers` per device
/// (the same global batch whatever `workers`), gradient accumulation 2, no dropout (the
/// masks of a half batch cannot equal those of the whole), stage 1 at lr 1e-3, and a small
/// evaluation. (At the e2e's lr 1e-2, one of the 10,240 projector weights ended 1.2e-5
/// apart after 8 steps, Adam magnifying the float noise of a near-zero gradient; all
/// others within 1e-6.)
fn parallel_exp(dir: &Path, name: &str, workers: usize, s1: u64, s2: u64) -> PathBuf {
    let f = exp_with(dir, name, s1, s2, "");
    let devices = vec!["0"; workers].join(", ");
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("seed = 5\n", &format!("seed = 5\ndevices = [{devices}]\n"))
        .replace(
            "batch = 16\ngrad_accum = 1",
            &format!("batch = {}\ngrad_accum = 2", 16 / workers),
        )
        .replace(
            "batch = 8\ngrad_accum = 1",
            &format!("batch = {}\ngrad_accum = 2", 8 / workers),
        )
        .replace("lora_alpha = 16", "lora_alpha = 16\nlora_dropout = 0.0")
        .replace("lr = 1e-2", "lr = 1e-3")
        .replace("caption_images = 8", "caption_images = 2")
        .replace("qa_samples = 40", "qa_samples = 4");
    std::fs::write(&f, text).unwrap();
    f
}

fn run_dir(results: &Path, name: &str) -> PathBuf {
    let s = Store::new(results);
    s.run_dir(&s.resolve(name).unwrap())
}

#[test]
fn two_workers_reach_the_weights_of_one_on_the_whole_batch() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let cache = d.path().join("cache");
    let results = d.path().join("results");
    let one = parallel_exp(d.path(), "one", 1, 8, 5);
    let two = parallel_exp(d.path(), "two", 2, 8, 5);
    succeed(
        harness_train(d.path(), &results, &cache)
            .arg("run")
            .arg(&one),
    );
    succeed(
        harness_train(d.path(), &results, &cache)
            .arg("run")
            .arg(&two),
    );
    let (a, b) = (run_dir(&results, "one"), run_dir(&results, "two"));

    // The worker count is part of the stage keys: stage 1 was trained twice, not reused.
    let status = std::fs::read_to_string(b.join("status.json")).unwrap();
    assert!(!status.contains("reused"), "{status}");

    let (pa, pb) = (projector_values(&a), projector_values(&b));
    let dp = max_abs(&pa, &pb);
    let (aa, ab) = (adapter_values(&a), adapter_values(&b));
    assert!(aa.iter().any(|&v| v != 0.0), "stage 2 trained the adapters");
    let dl = max_abs(&aa, &ab);
    eprintln!("1 vs 2 workers: projector max |diff| {dp:e}, adapters {dl:e}");
    assert!(dp <= 1e-5, "projector after stage 1: {dp}");
    assert!(dl <= 1e-5, "adapters after stage 2: {dl}");

    // The same losses step by step, the global batch's target tokens counted alike, and
    // the two-worker run logs its all-reduce.
    let rows = |dir: &Path| metrics::read_rows(&dir.join("metrics")).unwrap();
    let (ra, rb) = (rows(&a), rows(&b));
    for stage in ["stage1", "stage2"] {
        let (la, lb) = (
            series(&ra, stage, "train", "loss"),
            series(&rb, stage, "train", "loss"),
        );
        assert_eq!(la.len(), lb.len());
        assert!(la[0] != la[la.len() - 1], "{stage} trained: {la:?}");
        for (x, y) in la.iter().zip(&lb) {
            assert!((x - y).abs() <= 1e-5, "{stage} loss {x} vs {y}");
        }
        assert_eq!(
            series(&ra, stage, "train", "target_tokens"),
            series(&rb, stage, "train", "target_tokens")
        );
        assert!(series(&ra, stage, "train", "allreduce_s").is_empty());
        assert_eq!(series(&rb, stage, "train", "allreduce_s").len(), lb.len());
    }
    let toml = std::fs::read_to_string(b.join("run.toml")).unwrap();
    assert!(
        toml.contains("# stage1: global batch 32 = batch 8 x grad_accum 2 x 2 device(s)"),
        "{toml}"
    );
}

#[test]
fn two_workers_resume_after_kill_9_to_the_same_adapters() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let cache = d.path().join("cache");
    let f = parallel_exp(d.path(), "dp", 2, 6, 16);
    // Adapter dropout on: each worker's masks must come from its own seed even though the
    // two share burn's one generator, or the resumed draws would differ.
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("lora_dropout = 0.0", "lora_dropout = 0.1")
        .replace("checkpoint_every = 3", "checkpoint_every = 4");
    std::fs::write(&f, text).unwrap();

    let r1 = d.path().join("r1");
    succeed(harness_train(d.path(), &r1, &cache).arg("run").arg(&f));
    let reference = adapter_values(&run_dir(&r1, "dp"));
    assert!(reference.iter().any(|&v| v != 0.0));

    let run = kill_mid_stage_then_resume(d.path(), &d.path().join("r2"), &cache, &f, "stage2");
    assert_eq!(
        adapter_values(&run),
        reference,
        "bitwise equal adapters after kill -9 with two workers and resume"
    );
}

#[test]
fn a_device_the_cpu_build_lacks_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let f = parallel_exp(d.path(), "bad", 2, 2, 2);
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("devices = [0, 0]", "devices = [0, 1]");
    std::fs::write(&f, text).unwrap();
    let results = d.path().join("results");
    let out = harness_train(d.path(), &results, &d.path().join("cache"))
        .arg("run")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("devices = [0, 1]") && err.contains("device 1 does not exist"),
        "{err}"
    );
}
