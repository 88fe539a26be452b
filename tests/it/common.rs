//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A minimal valid experiment; `extra` is appended (sections and keys).
pub fn experiment(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nseed = 1\n\n[model]\nvision = \"builtin:v\"\nlm = \"builtin:l\"\n\n{extra}"
    )
}

pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs git in `dir` (identity and signing set, so it works on a bare machine), asserting
/// success; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The harness binary, run in `cwd` with the orchestration test stage.
pub fn harness(cwd: &Path, results: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    c.current_dir(cwd)
        .env("HARNESS_RESULTS", results)
        .env("HARNESS_STAGE_RUNNER", "test")
        .env_remove("HARNESS_HEARTBEAT_TIMEOUT");
    c
}

/// The harness binary with the real trainer, its feature cache in `cache`.
pub fn harness_train(cwd: &Path, results: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    c.current_dir(cwd)
        .env("HARNESS_RESULTS", results)
        .env("HARNESS_CACHE", cache)
        .env_remove("HARNESS_STAGE_RUNNER")
        .env_remove("HARNESS_HEARTBEAT_TIMEOUT");
    c
}

/// A path in the repository (tests run with the crate root as working folder).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Polls until `f` is true or the timeout passes; whether it became true.
pub fn wait_for(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Runs a command to its end and fails the test with its stderr unless it succeeded.
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
