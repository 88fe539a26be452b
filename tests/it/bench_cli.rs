//! `harness bench`: `--nf4` picks stage 2's base with and without a config file (it used
//! to be ignored next to `--config`, so "dense" timings were NF4 ones).

use std::process::Command;

use super::common::write;

const TINY: &str = "d_model = 16\nlayers = 1\nheads = 2\npartial_rotary = 0.5\nmlp = 32\n\
vocab = 64\nimage_tokens = 4\nimage_dim = 8\ntext_len = 4\nbatch = 1\nlora_rank = 2\n\
steps = 1\nwarmup = 0\n";

/// The `nf4` that `harness bench --stage 2 --json ARGS` reports it timed.
fn timed_nf4(args: &[&str]) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["bench", "--stage", "2", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["config"]["nf4"].as_bool().unwrap()
}

#[test]
fn bench_nf4_flag_applies_with_and_without_a_config_file() {
    let d = tempfile::tempdir().unwrap();
    let plain = write(d.path(), "plain.toml", TINY);
    let dense = write(d.path(), "dense.toml", &format!("{TINY}nf4 = false\n"));
    let plain = plain.to_str().unwrap();
    let dense = dense.to_str().unwrap();
    assert!(timed_nf4(&["--config", plain]));
    assert!(!timed_nf4(&["--config", plain, "--nf4", "false"]));
    assert!(!timed_nf4(&["--config", dense]));
    assert!(timed_nf4(&["--config", dense, "--nf4", "true"]));
    let sizes = [
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--mlp",
        "32",
        "--vocab",
        "64",
        "--image-tokens",
        "4",
        "--image-dim",
        "8",
        "--text-len",
        "4",
        "--batch",
        "1",
        "--lora-rank",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--partial-rotary",
        "0.5",
    ];
    assert!(timed_nf4(&sizes));
    assert!(!timed_nf4(&[&sizes[..], &["--nf4", "false"]].concat()));
}
