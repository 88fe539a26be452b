//! Slurm for cluster sweeps: the batch script that starts one `harness worker` per array
//! task, its submission, the checks worth making before submitting (a Slurm client on
//! PATH, a known partition, a time limit the partition allows), and the identity a worker
//! reads from its environment to record in `status.json`.
//!
//! The Slurm behaviour this relies on was checked on a real Slurm 22.05 single-node cluster
//! (`scripts/slurm/cluster.sh`, `scripts/slurm/smoke.sh`; notes in `scripts/slurm/README.md`):
//! `--signal=B:TERM@N` signals the batch shell's own process only, never its children, so
//! the script `exec`s the worker: the worker then *is* that process and gets the warning
//! itself, exactly once. (A shell that traps and forwards would also work, but a plain
//! `scancel` or the time limit signals every process of the job, so a forwarded worker would
//! get TERM twice, and a second interrupt makes `harness` quit without its checkpoint.)

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Seconds before the time limit at which the worker gets SIGTERM, by default: time to
/// finish the step, write a checkpoint and mark the run interrupted. Slurm checks time
/// limits every 30 s or so, so the warning can come that much later than asked.
pub const DEFAULT_SIGNAL_LEAD_S: u32 = 120;

/// The error when no `sbatch` is on PATH.
pub const NO_SBATCH: &str =
    "sbatch not found on PATH: --slurm needs a Slurm client (or run without --slurm)";

/// What the batch script asks Slurm for. Paths must be absolute: a task runs on whichever
/// node Slurm picks, in the submitter's working folder.
#[derive(Debug, Clone, PartialEq)]
pub struct SbatchOptions {
    /// Array tasks, one worker each (`--array=0-(tasks-1)`).
    pub tasks: u32,
    /// At most this many tasks running at once (`--array=...%N`); `None`: as many as fit.
    pub max_running: Option<u32>,
    /// Partition, or a comma-separated list of them; `None`: the cluster's default.
    pub partition: Option<String>,
    /// GPUs per task (`--gpus-per-task`, with `--ntasks=1` which it requires).
    pub gpus_per_task: Option<u32>,
    /// CPUs per task (`--cpus-per-task`).
    pub cpus_per_task: Option<u32>,
    /// Memory per node (`--mem`): a number of MiB or with a K, M, G or T suffix.
    pub mem: Option<String>,
    /// Wall-clock limit per task in a Slurm time format (see [`SlurmTime::parse`]).
    pub time: Option<String>,
    /// Job name (`--job-name`); also the start of each task's log file name.
    pub job_name: String,
    /// Folder of the per-task logs `<job_name>-<array job id>_<task>.log`; created by
    /// [`write_script`] (Slurm fails a task whose log folder is missing).
    pub log_dir: PathBuf,
    /// Seconds before the time limit at which the worker gets SIGTERM (0-65535).
    pub signal_lead_s: u32,
    /// More sbatch options, one `#SBATCH` line each (`--account=proj`, `--qos=high`, ...).
    /// Options this struct sets are refused here.
    pub extra_args: Vec<String>,
}

impl SbatchOptions {
    /// Options for `tasks` workers logging into `log_dir`; the rest is Slurm's default.
    pub fn new(tasks: u32, log_dir: impl Into<PathBuf>) -> Self {
        SbatchOptions {
            tasks,
            max_running: None,
            partition: None,
            gpus_per_task: None,
            cpus_per_task: None,
            mem: None,
            time: None,
            job_name: "harness".into(),
            log_dir: log_dir.into(),
            signal_lead_s: DEFAULT_SIGNAL_LEAD_S,
            extra_args: Vec::new(),
        }
    }

    /// The log file of one array task (what `--output` expands to).
    pub fn task_log(&self, array_job_id: u64, task: u32) -> PathBuf {
        self.log_dir
            .join(format!("{}-{array_job_id}_{task}.log", self.job_name))
    }

    /// The time limit, parsed; `None` when none was asked for.
    pub fn time_limit(&self) -> Result<Option<SlurmTime>> {
        self.time.as_deref().map(SlurmTime::parse).transpose()
    }
}

/// A Slurm time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmTime {
    /// No limit (`0`, `-1`, `UNLIMITED`, `INFINITE`).
    Unlimited,
    /// A limit, in seconds as written.
    Seconds(u64),
}

impl SlurmTime {
    /// Parses the formats sbatch's `--time` takes: `minutes`, `minutes:seconds`,
    /// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes` and
    /// `days-hours:minutes:seconds`, or `UNLIMITED` / `INFINITE` / `-1` / `0` for none.
    /// Like Slurm, fields are not range-checked (`1:90` is 150 s).
    pub fn parse(text: &str) -> Result<SlurmTime> {
        let bad = || {
            anyhow::anyhow!(
                "--time `{text}` is not a Slurm time: use minutes, MM:SS, HH:MM:SS, D-HH, \
                 D-HH:MM or D-HH:MM:SS (or UNLIMITED)"
            )
        };
        if ["unlimited", "infinite", "-1"]
            .iter()
            .any(|w| text.eq_ignore_ascii_case(w))
        {
            return Ok(SlurmTime::Unlimited);
        }
        let num = |s: &str| -> Result<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u64>().map_err(|_| bad())
        };
        let (days, rest) = match text.split_once('-') {
            Some((d, rest)) => (Some(num(d)?), rest),
            None => (None, text),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (d, h, m, s) = match (days, parts.as_slice()) {
            (None, [m]) => (0, 0, num(m)?, 0),
            (None, [m, s]) => (0, 0, num(m)?, num(s)?),
            (None, [h, m, s]) => (0, num(h)?, num(m)?, num(s)?),
            (Some(d), [h]) => (d, num(h)?, 0, 0),
            (Some(d), [h, m]) => (d, num(h)?, num(m)?, 0),
            (Some(d), [h, m, s]) => (d, num(h)?, num(m)?, num(s)?),
            _ => return Err(bad()),
        };
        let total = d
            .checked_mul(86_400)
            .and_then(|x| x.checked_add(h.checked_mul(3_600)?))
            .and_then(|x| x.checked_add(m.checked_mul(60)?))
            .and_then(|x| x.checked_add(s))
            .ok_or_else(bad)?;
        // Slurm keeps limits as 32-bit minutes and parses fields as C ints.
        if total > i32::MAX as u64 {
            bail!("--time `{text}` is {total} s, more than Slurm can hold");
        }
        Ok(if total == 0 {
            SlurmTime::Unlimited
        } else {
            SlurmTime::Seconds(total)
        })
    }

    /// The limit Slurm enforces: whole minutes, rounded up (its resolution); `None`: none.
    pub fn enforced_s(self) -> Option<u64> {
        match self {
            SlurmTime::Unlimited => None,
            SlurmTime::Seconds(s) => Some(s.div_ceil(60) * 60),
        }
    }
}

impl fmt::Display for SlurmTime {
    /// `D-HH:MM:SS` or `HH:MM:SS`, as sinfo and scontrol print limits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SlurmTime::Unlimited => f.write_str("UNLIMITED"),
            SlurmTime::Seconds(t) => {
                let (d, h, m, s) = (t / 86_400, t / 3_600 % 24, t / 60 % 60, t % 60);
                if d > 0 {
                    write!(f, "{d}-{h:02}:{m:02}:{s:02}")
                } else {
                    write!(f, "{h:02}:{m:02}:{s:02}")
                }
            }
        }
    }
}

/// Options managed by [`SbatchOptions`] fields or fixed by the script, which `extra_args`
/// may not set again.
const MANAGED: &[(&str, &str)] = &[
    ("--array", "tasks / max_running"),
    ("-a", "tasks / max_running"),
    ("--output", "log_dir"),
    ("-o", "log_dir"),
    ("--error", "log_dir"),
    ("-e", "log_dir"),
    ("--open-mode", "the script (append)"),
    ("--signal", "signal_lead_s"),
    ("--requeue", "the script"),
    ("--no-requeue", "the script (--requeue)"),
    ("--job-name", "job_name"),
    ("-J", "job_name"),
    ("--partition", "partition"),
    ("-p", "partition"),
    ("--time", "time"),
    ("-t", "time"),
    ("--cpus-per-task", "cpus_per_task"),
    ("-c", "cpus_per_task"),
    ("--gpus-per-task", "gpus_per_task"),
    ("--ntasks", "the script (one task per worker)"),
    ("-n", "the script (one task per worker)"),
    ("--mem", "mem"),
    ("--parsable", "submit"),
    ("--wrap", "the script"),
];

/// The batch script for `opts.tasks` workers of sweep `sweep_id`: each array task runs
/// `harness_exe --results results_dir worker sweep_id` in place of the shell (`exec`), so
/// Slurm's `--signal=B:TERM@N` warning reaches the worker itself. Tasks log to
/// [`SbatchOptions::task_log`] (appended across requeues) and may be requeued.
pub fn sbatch_script(
    opts: &SbatchOptions,
    harness_exe: &Path,
    results_dir: &Path,
    sweep_id: &str,
) -> Result<String> {
    validate(opts)?;
    let exe = absolute_utf8(harness_exe, "the harness executable")?;
    let results = absolute_utf8(results_dir, "the results folder")?;
    if !is_name(sweep_id) {
        bail!("sweep id `{sweep_id}`: use letters, digits, `.`, `_` and `-`");
    }

    let mut lines = vec!["#!/bin/bash".to_string()];
    let mut sbatch = |opt: String| lines.push(format!("#SBATCH {opt}"));
    sbatch(format!("--job-name={}", opts.job_name));
    let throttle = opts
        .max_running
        .map(|n| format!("%{n}"))
        .unwrap_or_default();
    sbatch(format!("--array=0-{}{throttle}", opts.tasks - 1));
    sbatch("--ntasks=1".into());
    let log_dir = opts.log_dir.to_str().expect("validated UTF-8");
    sbatch(format!(
        "--output={}/{}-%A_%a.log",
        log_dir.trim_end_matches('/').replace('%', "%%"),
        opts.job_name
    ));
    sbatch("--open-mode=append".into());
    sbatch("--requeue".into());
    sbatch(format!("--signal=B:TERM@{}", opts.signal_lead_s));
    if let Some(p) = &opts.partition {
        sbatch(format!("--partition={p}"));
    }
    if let Some(t) = &opts.time {
        sbatch(format!("--time={t}"));
    }
    if let Some(c) = opts.cpus_per_task {
        sbatch(format!("--cpus-per-task={c}"));
    }
    if let Some(g) = opts.gpus_per_task {
        sbatch(format!("--gpus-per-task={g}"));
    }
    if let Some(m) = &opts.mem {
        sbatch(format!("--mem={m}"));
    }
    for a in &opts.extra_args {
        sbatch(a.clone());
    }
    lines.push(format!(
        "# Sweep {sweep_id}: one harness worker per array task; workers claim runs through\n\
         # lock files in the results folder, so any number of them may run at once.\n\
         # Slurm sends the --signal=B: warning to this shell's process only: exec makes the\n\
         # worker that process, so the worker gets it itself, once."
    ));
    lines.push("set -eu".into());
    lines.push(
        "echo \"harness worker: job $SLURM_JOB_ID (task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}) \
         on $SLURMD_NODENAME, restart ${SLURM_RESTART_COUNT:-0}, $(date -Iseconds)\""
            .into(),
    );
    lines.push(format!(
        "exec {} --results {} worker {}",
        sh_quote(exe),
        sh_quote(results),
        sh_quote(sweep_id)
    ));
    Ok(lines.join("\n") + "\n")
}

fn validate(opts: &SbatchOptions) -> Result<()> {
    if opts.tasks == 0 {
        bail!("--slurm needs at least one array task (tasks = 0)");
    }
    if opts.max_running == Some(0) {
        bail!("max_running = 0 would never start a task");
    }
    if !is_name(&opts.job_name) {
        bail!(
            "job name `{}`: use letters, digits, `.`, `_` and `-`",
            opts.job_name
        );
    }
    if let Some(p) = &opts.partition {
        if p.split(',').any(|one| !is_name(one)) {
            bail!("partition `{p}`: a partition name (or a comma-separated list of them)");
        }
    }
    for (what, v) in [
        ("cpus_per_task", opts.cpus_per_task),
        ("gpus_per_task", opts.gpus_per_task),
    ] {
        if v == Some(0) {
            bail!("{what} = 0: leave it unset instead");
        }
    }
    if let Some(m) = &opts.mem {
        let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
        let suffix = m.len() - digits.len();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || suffix > 1 {
            bail!("--mem `{m}`: a number of MiB, optionally with a K, M, G or T suffix");
        }
    }
    if opts.signal_lead_s > 65_535 {
        bail!(
            "signal lead {} s: Slurm takes 0-65535 s (--signal=B:TERM@N)",
            opts.signal_lead_s
        );
    }
    if let Some(limit) = opts.time_limit()?.and_then(SlurmTime::enforced_s) {
        if limit <= u64::from(opts.signal_lead_s) {
            bail!(
                "--time `{}` gives each task {limit} s, no more than the {} s before the end at \
                 which the worker is told to stop (--signal=B:TERM@{}): ask for more time",
                opts.time.as_deref().unwrap_or_default(),
                opts.signal_lead_s,
                opts.signal_lead_s
            );
        }
    }
    let log_dir = absolute_utf8(&opts.log_dir, "the log folder")?;
    // sbatch splits #SBATCH lines at whitespace and reads `\` in --output as an escape.
    if log_dir
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        bail!("log folder `{log_dir}`: Slurm's --output cannot hold whitespace or `\\`");
    }
    for a in &opts.extra_args {
        if !a.starts_with('-') || a.chars().any(|c| c.is_control()) {
            bail!("extra sbatch argument `{a}`: one option per entry, like `--account=proj`");
        }
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        // Short options may carry their value attached (`-pgpu`).
        let short = if name.starts_with("--") {
            name
        } else {
            name.char_indices().nth(2).map_or(name, |(i, _)| &name[..i])
        };
        if let Some((_, field)) = MANAGED.iter().find(|(o, _)| *o == short) {
            bail!("extra sbatch argument `{a}` sets what {field} sets; use that instead");
        }
    }
    Ok(())
}

/// Letters, digits, `.`, `_`, `-`: safe unquoted in `#SBATCH` lines and file names.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn absolute_utf8<'a>(path: &'a Path, what: &str) -> Result<&'a str> {
    let s = path
        .to_str()
        .with_context(|| format!("{what} {} is not valid UTF-8", path.display()))?;
    if !path.is_absolute() {
        bail!("{what} `{s}` must be an absolute path (tasks run on other nodes)");
    }
    Ok(s)
}

/// Single-quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes the batch script to `path` (atomically) and creates the log folder: Slurm does
/// not create it, and a task whose `--output` folder is missing fails at launch.
pub fn write_script(path: &Path, script: &str, opts: &SbatchOptions) -> Result<()> {
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("cannot create the log folder {}", opts.log_dir.display()))?;
    crate::fsutil::write_atomic(path, script.as_bytes())
}

/// A submitted job: its id, and the cluster when sbatch names one (`--clusters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobId {
    pub id: u64,
    pub cluster: Option<String>,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cluster {
            Some(c) => write!(f, "{};{c}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

/// Parses what `sbatch --parsable` prints: `123` or `123;cluster` (its last line).
pub fn parse_parsable(stdout: &str) -> Result<JobId> {
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .with_context(|| "sbatch --parsable printed no job id".to_string())?;
    let (id, cluster) = match line.split_once(';') {
        Some((id, c)) => (id, Some(c.to_string()).filter(|c| !c.is_empty())),
        None => (line, None),
    };
    let id = id
        .parse::<u64>()
        .with_context(|| format!("sbatch --parsable printed `{line}`, not a job id"))?;
    Ok(JobId { id, cluster })
}

/// Submits the batch script with `sbatch_exe --parsable SCRIPT` (the submitter's
/// environment goes to the tasks: sbatch's default `--export=ALL`).
pub fn submit(script_path: &Path, sbatch_exe: &Path) -> Result<JobId> {
    let out = Command::new(sbatch_exe)
        .arg("--parsable")
        .arg(script_path)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("{NO_SBATCH} (tried `{}`)", sbatch_exe.display())
            }
            _ => anyhow::anyhow!("cannot run {}: {e}", sbatch_exe.display()),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        bail!(
            "sbatch {} failed ({}): {}",
            script_path.display(),
            out.status,
            err.join(" / ")
        );
    }
    parse_parsable(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("submitting {}", script_path.display()))
}

/// The first executable `name` in the folders of `path` (a PATH value).
pub fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Where `sbatch` is, or the one-line error [`NO_SBATCH`].
pub fn check_available() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_on_path("sbatch", &path).ok_or_else(|| anyhow::anyhow!(NO_SBATCH))
}

/// One partition as `sinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// The partition jobs go to without `--partition`.
    pub default: bool,
    /// Its MaxTime; `None` where sinfo printed something else than a time.
    pub max_time: Option<SlurmTime>,
}

/// Parses `sinfo -h -o %P|%l` (name, `*` on the default, time limit), one line each.
pub fn parse_partitions(sinfo: &str) -> Vec<Partition> {
    let mut seen = BTreeSet::new();
    sinfo
        .lines()
        .filter_map(|l| {
            let (p, limit) = l.trim().split_once('|').unwrap_or((l.trim(), ""));
            let name = p.trim_end_matches('*');
            (!name.is_empty() && seen.insert(name.to_string())).then(|| Partition {
                name: name.to_string(),
                default: p.ends_with('*'),
                max_time: SlurmTime::parse(limit.trim()).ok(),
            })
        })
        .collect()
}

/// The cluster's partitions, from `sinfo` on PATH.
pub fn partitions() -> Result<Vec<Partition>> {
    let out = Command::new("sinfo")
        .args(["-h", "-o", "%P|%l"])
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "sinfo not found on PATH: --slurm needs a Slurm client (or run without --slurm)"
            ),
            _ => anyhow::anyhow!("cannot run sinfo: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "sinfo failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_partitions(&String::from_utf8_lossy(&out.stdout)))
}

/// Fails with one line naming the partition and listing the cluster's when `partition`
/// (or one of a comma-separated list) does not exist. Asks `sinfo`.
pub fn check_partition(partition: &str) -> Result<()> {
    check_partition_in(partition, &partitions()?)
}

/// [`check_partition`] against a known list.
pub fn check_partition_in(partition: &str, known: &[Partition]) -> Result<()> {
    for p in partition.split(',') {
        if !known.iter().any(|k| k.name == p) {
            bail!(
                "Slurm partition `{p}` does not exist (partitions: {})",
                list(known)
            );
        }
    }
    Ok(())
}

/// The checks before submitting `opts` to a cluster with these partitions: the partition
/// exists (or there is a default) and the time limit fits its MaxTime -- sbatch accepts a
/// longer one and the job then waits forever (reason `PartitionTimeLimit`).
pub fn check_submission(opts: &SbatchOptions, known: &[Partition]) -> Result<()> {
    validate(opts)?;
    let chosen: Vec<&Partition> = match &opts.partition {
        Some(p) => {
            check_partition_in(p, known)?;
            known
                .iter()
                .filter(|k| p.split(',').any(|one| one == k.name))
                .collect()
        }
        None => {
            let d: Vec<&Partition> = known.iter().filter(|k| k.default).collect();
            if d.is_empty() {
                bail!(
                    "this cluster has no default partition: choose one (partitions: {})",
                    list(known)
                );
            }
            d
        }
    };
    if let Some(limit) = opts.time_limit()? {
        // With a list, Slurm may use any partition the job fits: one is enough.
        let fits = |k: &&Partition| match (
            limit.enforced_s(),
            k.max_time.and_then(SlurmTime::enforced_s),
        ) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(t), Some(max)) => t <= max,
        };
        if !chosen.iter().any(fits) {
            let maxes: Vec<String> = chosen
                .iter()
                .map(|k| {
                    format!(
                        "{} {}",
                        k.name,
                        k.max_time.map_or("?".into(), |t| t.to_string())
                    )
                })
                .collect();
            bail!(
                "--time `{}` is more than the partition allows (MaxTime: {}); the job would wait forever",
                opts.time.as_deref().unwrap_or_default(),
                maxes.join(", ")
            );
        }
    }
    Ok(())
}

fn list(known: &[Partition]) -> String {
    if known.is_empty() {
        return "none".into();
    }
    known
        .iter()
        .map(|k| {
            if k.default {
                format!("{} (default)", k.name)
            } else {
                k.name.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A task's identity lives with the store, which records it per stage
/// ([`crate::store::worker`]); these names stay here for callers of the Slurm side.
pub use crate::store::worker::{task_identity, task_identity_from, SlurmTask};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn secs(t: &str) -> u64 {
        match SlurmTime::parse(t).unwrap() {
            SlurmTime::Seconds(s) => s,
            SlurmTime::Unlimited => panic!("{t} parsed as unlimited"),
        }
    }

    #[test]
    fn time_formats_give_seconds() {
        assert_eq!(secs("90"), 90 * 60);
        assert_eq!(secs("5:30"), 5 * 60 + 30);
        assert_eq!(secs("1:02:03"), 3600 + 2 * 60 + 3);
        assert_eq!(secs("2-12"), 2 * 86_400 + 12 * 3600);
        assert_eq!(secs("1-02:03"), 86_400 + 2 * 3600 + 3 * 60);
        assert_eq!(secs("1-02:03:04"), 86_400 + 2 * 3600 + 3 * 60 + 4);
        // Like Slurm: no range checks (sbatch --time=1:99 gave TimeLimit=00:03:00 here).
        assert_eq!(secs("1:99"), 60 + 99);
        assert_eq!(SlurmTime::parse("1:99").unwrap().enforced_s(), Some(180));
        assert_eq!(SlurmTime::parse("1:01").unwrap().enforced_s(), Some(120));
        assert_eq!(SlurmTime::parse("30").unwrap().enforced_s(), Some(1800));
        for none in ["0", "UNLIMITED", "infinite", "Infinite", "-1", "0:00"] {
            assert_eq!(
                SlurmTime::parse(none).unwrap(),
                SlurmTime::Unlimited,
                "{none}"
            );
        }
    }

    #[test]
    fn time_display_is_slurms() {
        assert_eq!(SlurmTime::Seconds(1800).to_string(), "00:30:00");
        assert_eq!(SlurmTime::Seconds(93_784).to_string(), "1-02:03:04");
        assert_eq!(SlurmTime::Unlimited.to_string(), "UNLIMITED");
    }

    #[test]
    fn bad_times_are_named() {
        for bad in [
            "",
            "abc",
            "1:2:3:4",
            "1-2-3",
            "1-",
            "-5",
            ":5",
            "5:",
            "1.5",
            " 5",
            "5 ",
            "1h",
            "1-2:3:4:5",
            "+5",
            "1--2",
        ] {
            let e = SlurmTime::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{bad}`")) && e.contains("D-HH:MM:SS"),
                "{bad}: {e}"
            );
        }
        let e = SlurmTime::parse("99999999999").unwrap_err().to_string();
        assert!(e.contains("more than Slurm can hold"), "{e}");
    }

    fn full_opts() -> SbatchOptions {
        SbatchOptions {
            tasks: 4,
            max_running: Some(2),
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            cpus_per_task: Some(8),
            mem: Some("64G".into()),
            time: Some("1-00:00:00".into()),
            job_name: "sweep-a".into(),
            log_dir: "/shared/results/_slurm/logs".into(),
            signal_lead_s: 120,
            extra_args: vec!["--account=proj".into(), "--qos=high".into()],
        }
    }

    #[test]
    fn script_has_every_option_and_execs_the_worker() {
        let s = sbatch_script(
            &full_opts(),
            Path::new("/opt/harness/bin/harness"),
            Path::new("/shared/results"),
            "s-1a2b",
        )
        .unwrap();
        let expected = "#!/bin/bash
#SBATCH --job-name=sweep-a
#SBATCH --array=0-3%2
#SBATCH --ntasks=1
#SBATCH --output=/shared/results/_slurm/logs/sweep-a-%A_%a.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --partition=gpu
#SBATCH --time=1-00:00:00
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-task=1
#SBATCH --mem=64G
#SBATCH --account=proj
#SBATCH --qos=high
# Sweep s-1a2b: one harness worker per array task; workers claim runs through
# lock files in the results folder, so any number of them may run at once.
# Slurm sends the --signal=B: warning to this shell's process only: exec makes the
# worker that process, so the worker gets it itself, once.
set -eu
echo \"harness worker: job $SLURM_JOB_ID (task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}) on $SLURMD_NODENAME, restart ${SLURM_RESTART_COUNT:-0}, $(date -Iseconds)\"
exec '/opt/harness/bin/harness' --results '/shared/results' worker 's-1a2b'
";
        assert_eq!(s, expected);
        assert_eq!(
            full_opts().task_log(77, 3),
            Path::new("/shared/results/_slurm/logs/sweep-a-77_3.log")
        );
    }

    #[test]
    fn minimal_script_leaves_resources_to_slurm() {
        let s = sbatch_script(
            &SbatchOptions::new(1, "/r/logs/"),
            Path::new("/bin/harness"),
            Path::new("/r"),
            "x",
        )
        .unwrap();
        let directives: Vec<&str> = s.lines().filter(|l| l.starts_with("#SBATCH")).collect();
        assert_eq!(
            directives,
            [
                "#SBATCH --job-name=harness",
                "#SBATCH --array=0-0",
                "#SBATCH --ntasks=1",
                "#SBATCH --output=/r/logs/harness-%A_%a.log",
                "#SBATCH --open-mode=append",
                "#SBATCH --requeue",
                "#SBATCH --signal=B:TERM@120",
            ]
        );
    }

    #[test]
    fn paths_are_quoted_and_percent_escaped() {
        let mut o = SbatchOptions::new(2, "/data/100%/logs");
        o.signal_lead_s = 300;
        let s = sbatch_script(
            &o,
            Path::new("/home/a b/harness"),
            Path::new("/home/a b/it's results"),
            "s",
        )
        .unwrap();
        assert!(
            s.contains("#SBATCH --output=/data/100%%/logs/harness-%A_%a.log\n"),
            "{s}"
        );
        assert!(s.contains("#SBATCH --signal=B:TERM@300\n"), "{s}");
        assert!(
            s.ends_with(
                "exec '/home/a b/harness' --results '/home/a b/it'\\''s results' worker 's'\n"
            ),
            "{s}"
        );
    }

    /// What bash makes of the script's last line: the worker's argv.
    #[test]
    fn quoted_command_line_survives_bash() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("it's a \"dir\" $HOME");
        let mut o = SbatchOptions::new(1, dir.path().join("logs"));
        o.time = Some("10".into());
        let s = sbatch_script(&o, Path::new("/bin/echo"), &results, "s-1").unwrap();
        let script = dir.path().join("job.sh");
        write_script(&script, &s, &o).unwrap();
        assert!(dir.path().join("logs").is_dir());
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(syntax.success());
        let out = Command::new("bash")
            .arg(&script)
            .env("SLURM_JOB_ID", "5")
            .env("SLURM_ARRAY_JOB_ID", "4")
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURMD_NODENAME", "n1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("harness worker: job 5 (task 4_1) on n1, restart 0, "),
            "{text}"
        );
        assert_eq!(
            lines[1],
            format!("--results {} worker s-1", results.display())
        );
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        let exe = Path::new("/bin/harness");
        let res = Path::new("/r");
        let err = |o: SbatchOptions| sbatch_script(&o, exe, res, "s").unwrap_err().to_string();
        let base = || SbatchOptions::new(2, "/r/logs");
        assert!(err(SbatchOptions { tasks: 0, ..base() }).contains("tasks = 0"));
        assert!(err(SbatchOptions {
            max_running: Some(0),
            ..base()
        })
        .contains("max_running"));
        let e = err(SbatchOptions {
            time: Some("2".into()),
            ..base()
        });
        assert!(
            e.contains("gives each task 120 s") && e.contains("@120"),
            "{e}"
        );
        let e = err(SbatchOptions {
            time: Some("2:01".into()),
            signal_lead_s: 180,
            ..base()
        });
        assert!(e.contains("gives each task 180 s"), "{e}");
        assert!(sbatch_script(
            &SbatchOptions {
                time: Some("2:01".into()),
                ..base()
            },
            exe,
            res,
            "s"
        )
        .is_ok());
        assert!(err(SbatchOptions {
            time: Some("1h".into()),
            ..base()
        })
        .contains("`1h` is not a Slurm time"));
        assert!(err(SbatchOptions {
            log_dir: "logs".into(),
            ..base()
        })
        .contains("absolute"));
        assert!(err(SbatchOptions {
            log_dir: "/a b".into(),
            ..base()
        })
        .contains("whitespace"));
        assert!(err(SbatchOptions {
            job_name: "a b".into(),
            ..base()
        })
        .contains("job name `a b`"));
        assert!(err(SbatchOptions {
            partition: Some("gpu;rm".into()),
            ..base()
        })
        .contains("partition `gpu;rm`"));
        assert!(sbatch_script(
            &SbatchOptions {
                partition: Some("gpu,cpu".into()),
                ..base()
            },
            exe,
            res,
            "s"
        )
        .is_ok());
        assert!(err(SbatchOptions {
            cpus_per_task: Some(0),
            ..base()
        })
        .contains("cpus_per_task = 0"));
        assert!(err(SbatchOptions {
            mem: Some("4GB".into()),
            ..base()
        })
        .contains("--mem `4GB`"));
        assert!(err(SbatchOptions {
            signal_lead_s: 70_000,
            ..base()
        })
        .contains("0-65535"));
        for (arg, field) in [
            ("--time=5", "time"),
            ("-t", "time"),
            ("-pgpu", "partition"),
            ("--output=/x", "log_dir"),
            ("--array=0-9", "tasks"),
            ("--signal=USR1", "signal_lead_s"),
        ] {
            let e = err(SbatchOptions {
                extra_args: vec![arg.into()],
                ..base()
            });
            assert!(
                e.contains(&format!("`{arg}` sets what {field}")),
                "{arg}: {e}"
            );
        }
        assert!(err(SbatchOptions {
            extra_args: vec!["account=x".into()],
            ..base()
        })
        .contains("one option per entry"));
        assert!(err(SbatchOptions {
            extra_args: vec!["--qos=a\n#SBATCH --x".into()],
            ..base()
        })
        .contains("one option per entry"));
        let e = sbatch_script(&base(), Path::new("harness"), res, "s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the harness executable `harness` must be an absolute path"),
            "{e}"
        );
        let e = sbatch_script(&base(), exe, Path::new("results"), "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the results folder `results`"), "{e}");
        let e = sbatch_script(&base(), exe, res, "a/b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sweep id `a/b`"), "{e}");
    }

    #[test]
    fn parsable_output() {
        assert_eq!(
            parse_parsable("123\n").unwrap(),
            JobId {
                id: 123,
                cluster: None
            }
        );
        assert_eq!(
            parse_parsable("123;alpha\n").unwrap(),
            JobId {
                id: 123,
                cluster: Some("alpha".into())
            }
        );
        assert_eq!(parse_parsable("sbatch: note\n456\n\n").unwrap().id, 456);
        assert_eq!(
            JobId {
                id: 9,
                cluster: Some("c".into())
            }
            .to_string(),
            "9;c"
        );
        assert!(parse_parsable("")
            .unwrap_err()
            .to_string()
            .contains("no job id"));
        let e = parse_parsable("Submitted batch job 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`Submitted batch job 5`, not a job id"), "{e}");
    }

    fn fake_exe(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn submit_runs_sbatch_parsable() {
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        let ok = fake_exe(
            dir.path(),
            "sbatch",
            &format!(
                "printf '%s\\n' \"$@\" > '{}'; echo '77;alpha'",
                args.display()
            ),
        );
        let script = dir.path().join("job.sh");
        let id = submit(&script, &ok).unwrap();
        assert_eq!(
            id,
            JobId {
                id: 77,
                cluster: Some("alpha".into())
            }
        );
        let got = std::fs::read_to_string(&args).unwrap();
        assert_eq!(got, format!("--parsable\n{}\n", script.display()));

        let bad = fake_exe(
            dir.path(),
            "sbatch-bad",
            "echo 'sbatch: error: invalid partition specified: nope' >&2; \
             echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1",
        );
        let e = submit(&script, &bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "sbatch {} failed (exit status: 1): ",
                script.display()
            )),
            "{e}"
        );
        assert!(
            e.contains("invalid partition specified: nope / sbatch: error: Batch job"),
            "{e}"
        );

        let e = submit(&script, &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(NO_SBATCH), "{e}");
    }

    #[test]
    fn sbatch_is_looked_up_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        // Not executable: skipped, like a shell would.
        let plain = a.path().join("sbatch");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(find_on_path("sbatch", &path), None);
        let real = fake_exe(b.path(), "sbatch", "exit 0");
        assert_eq!(find_on_path("sbatch", &path), Some(real));
        assert_eq!(find_on_path("sbatch", OsStr::new("")), None);
        assert_eq!(
            NO_SBATCH,
            "sbatch not found on PATH: --slurm needs a Slurm client (or run without --slurm)"
        );
    }

    /// `sinfo -h -o '%P|%l'` on the test cluster of scripts/slurm/cluster.sh.
    const SINFO: &str = "main*|infinite\nshort|30:00\n";

    #[test]
    fn partitions_from_sinfo() {
        let p = parse_partitions(SINFO);
        assert_eq!(
            p,
            [
                Partition {
                    name: "main".into(),
                    default: true,
                    max_time: Some(SlurmTime::Unlimited)
                },
                Partition {
                    name: "short".into(),
                    default: false,
                    max_time: Some(SlurmTime::Seconds(1800))
                },
            ]
        );
        assert!(check_partition_in("short", &p).is_ok());
        assert!(check_partition_in("main,short", &p).is_ok());
        let e = check_partition_in("gpu", &p).unwrap_err().to_string();
        assert_eq!(
            e,
            "Slurm partition `gpu` does not exist (partitions: main (default), short)"
        );
        let e = check_partition_in("main,gpu", &p).unwrap_err().to_string();
        assert!(e.starts_with("Slurm partition `gpu` does not exist"), "{e}");
        let e = check_partition_in("gpu", &[]).unwrap_err().to_string();
        assert!(e.ends_with("(partitions: none)"), "{e}");
    }

    #[test]
    fn submission_time_must_fit_the_partition() {
        let p = parse_partitions(SINFO);
        let opts = |part: Option<&str>, time: Option<&str>| SbatchOptions {
            partition: part.map(Into::into),
            time: time.map(Into::into),
            ..SbatchOptions::new(2, "/r/logs")
        };
        assert!(check_submission(&opts(Some("short"), Some("30")), &p).is_ok());
        assert!(check_submission(&opts(Some("short"), Some("29:30")), &p).is_ok());
        let e = check_submission(&opts(Some("short"), Some("31")), &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`31` is more than the partition allows (MaxTime: short 00:30:00)"),
            "{e}"
        );
        // Seconds round up to the minute, as Slurm enforces them.
        assert!(check_submission(&opts(Some("short"), Some("30:01")), &p).is_err());
        assert!(check_submission(&opts(Some("short"), Some("UNLIMITED")), &p).is_err());
        assert!(check_submission(&opts(Some("short"), None), &p).is_ok());
        assert!(check_submission(&opts(Some("short,main"), Some("60")), &p).is_ok());
        assert!(check_submission(&opts(None, Some("5-00")), &p).is_ok());
        let e = check_submission(&opts(Some("gpu"), None), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`gpu` does not exist"), "{e}");
        let no_default = parse_partitions("a|1:00:00\n");
        let e = check_submission(&opts(None, None), &no_default)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "this cluster has no default partition: choose one (partitions: a)"
        );
    }

    #[test]
    fn identity_from_environment() {
        let env: HashMap<&str, &str> = [
            ("SLURM_JOB_ID", "42"),
            ("SLURM_ARRAY_JOB_ID", "40"),
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURMD_NODENAME", "gpu-07"),
            ("SLURM_RESTART_COUNT", "1"),
        ]
        .into_iter()
        .collect();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let t = task_identity_from(get).unwrap().unwrap();
        assert_eq!(
            t,
            SlurmTask {
                job_id: 42,
                array_job_id: Some(40),
                array_task_id: Some(2),
                node: Some("gpu-07".into()),
                restart_count: 1,
            }
        );
        assert_eq!(t.to_string(), "40_2 (job 42) on gpu-07, restart 1");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["array_task_id"], 2);

        let only_job = |k: &str| (k == "SLURM_JOB_ID").then(|| "7".to_string());
        let t = task_identity_from(only_job).unwrap().unwrap();
        assert_eq!(
            (t.array_job_id, t.restart_count, t.to_string()),
            (None, 0, "job 7".into())
        );
        assert_eq!(task_identity_from(|_| None).unwrap(), None);
        let bad = |k: &str| match k {
            "SLURM_JOB_ID" => Some("12".to_string()),
            "SLURM_ARRAY_TASK_ID" => Some("x".to_string()),
            _ => None,
        };
        let e = task_identity_from(bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "environment variable SLURM_ARRAY_TASK_ID=`x` is not a number"
        );
    }
}
