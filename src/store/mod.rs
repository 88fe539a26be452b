//! The run store: `results/<run-id>/` holds one run's `run.toml`, `provenance.json`,
//! `status.json`, `metrics/`, `checkpoints/`, `charts/`, `report.html` and `log.txt`.
//! `results/_stages/` records which run produced each completed stage key (with the
//! stage's config key and the code fingerprint beside it), so later runs reuse it.
//!
//! Claims are files created exclusively (O_EXCL), which works on local and shared file
//! systems alike. A claim is stale when its owner is a dead pid on this host, or when the
//! owner's heartbeat (refreshed in `status.json` every few seconds) is older than the
//! heartbeat timeout; a stale claim may be taken over by exactly one claimant.
//!
//! Beside the store itself: [`metrics`] (the Parquet metrics table), [`items`] (per-item
//! evaluation results), [`provenance`] (the git identity and environment of a run),
//! [`runs`] (one-line summaries for `ls`, `show` and the reports), [`groups`] (runs that
//! differ only in their seed), [`worker`] (who ran a stage: host, Slurm task, log) and
//! [`lease`] (the same kind of lock for work outside any run, like building a backbone).

pub mod groups;
pub mod items;
pub mod lease;
pub mod metrics;
pub mod provenance;
pub mod runs;
pub mod worker;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, create_exclusive, now_rfc3339, now_s, read_json, write_json};

/// Default seconds without a heartbeat after which a running run counts as interrupted.
pub const DEFAULT_HEARTBEAT_TIMEOUT_S: f64 = 60.0;
/// How often a live run refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Lifecycle of a run (and of each of its stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Completed,
    Failed,
    Interrupted,
    /// A stage taken over from another run with the same stage key.
    Reused,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).unwrap();
        f.write_str(s.as_str().unwrap_or("?"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStatus {
    pub key: String,
    pub state: State,
    /// The run whose result this stage uses (itself, or the run it was reused from).
    pub run_id: String,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// Who trained it (this run's own stages; a reused stage's trainer is in its source run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<worker::WorkerInfo>,
    /// Set when `--reuse config` reused a result that other code trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_across_code: Option<CodeChange>,
}

/// How the code of a stage result differs from this binary's: the commit it was trained
/// at and the files whose hashes differ (from that run's `provenance.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeChange {
    /// Full commit id of the run that trained it (or `no-git`).
    pub from_commit: String,
    /// Whether that run's tree had uncommitted changes.
    #[serde(default)]
    pub from_dirty: bool,
    /// Its code fingerprint; `None` for a run recorded before fingerprints were.
    pub from_fingerprint: Option<String>,
    /// Fingerprinted files that differ (changed, added or removed), sorted; empty when
    /// unknown (no fingerprint recorded, and no commit to read them from).
    pub files: Vec<String>,
    /// For a run that recorded no fingerprint: `files` were found by reading the
    /// fingerprinted files of its commit with git2 (from the repository the harness runs
    /// in), not from recorded hashes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_from_commit: bool,
}

impl CodeChange {
    /// `commit 1a2b3c4` (with ` (dirty)` when its tree was).
    pub fn commit(&self) -> String {
        let short: String = self.from_commit.chars().take(7).collect();
        format!(
            "commit {short}{}",
            if self.from_dirty { " (dirty)" } else { "" }
        )
    }

    /// `the code differs in 2 files: a, b`, or why the files are unknown.
    pub fn files_summary(&self) -> String {
        let n = self.files.len();
        let listed = || {
            format!(
                "{n} file{}: {}",
                if n == 1 { "" } else { "s" },
                crate::config::fingerprint::name_files(&self.files, 8)
            )
        };
        // Read from the commit, so a dirty run's uncommitted changes are not in them.
        let aside = if self.from_dirty {
            " (its uncommitted changes aside)"
        } else {
            ""
        };
        match (&self.from_fingerprint, n) {
            (None, 0) if self.files_from_commit => format!(
                "its run recorded no code fingerprint, though the fingerprinted files at its \
                 commit are those of this code{aside}"
            ),
            (None, _) if self.files_from_commit => format!(
                "its run recorded no code fingerprint, and the code at its commit differs in {}{aside}",
                listed()
            ),
            (None, _) => "its run recorded no code fingerprint (made before fingerprints were \
                          part of the keys), so which files differ is unknown"
                .into(),
            (Some(f), 0) if f == crate::config::fingerprint::FINGERPRINT => {
                "it was trained by this code, on a stage-1 result of other code".into()
            }
            (Some(_), 0) => "the code fingerprint differs (no file's hash does)".into(),
            (Some(_), _) => format!("the code differs in {}", listed()),
        }
    }
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub run_id: String,
    pub state: State,
    pub pid: u32,
    pub host: String,
    /// RFC 3339 and Unix seconds of the last sign of life.
    pub heartbeat: String,
    pub heartbeat_s: f64,
    pub started: String,
    pub ended: Option<String>,
    pub error: Option<String>,
    /// Which stage implementation ran (`train`, or `test` for the orchestration tests).
    pub runner: String,
    pub stages: BTreeMap<String, StageStatus>,
}

/// What a claim file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// The run it is for (for a [`lease::Lease`], what the lease is for).
    pub run_id: String,
    pub pid: u32,
    pub host: String,
    pub created_s: f64,
    /// Unique per claim, so a takeover can check it replaces the claim it judged stale.
    pub token: String,
}

impl ClaimInfo {
    fn mine(run_id: &str) -> Self {
        ClaimInfo {
            run_id: run_id.into(),
            pid: std::process::id(),
            host: fsutil::hostname(),
            created_s: now_s(),
            token: format!("{}-{}-{}", fsutil::hostname(), std::process::id(), now_s()),
        }
    }
}

/// The error of [`Store::claim_run`] when another live process holds the run: callers that
/// share a sweep with other workers skip such a run instead of failing.
#[derive(Debug, thiserror::Error)]
#[error("run {run_id} is claimed by pid {} on {} (lock {}); it is still alive", owner.pid, owner.host, lock.display())]
pub struct ClaimHeld {
    pub run_id: String,
    pub owner: ClaimInfo,
    pub lock: PathBuf,
}

/// The heartbeat timeout in seconds: `HARNESS_HEARTBEAT_TIMEOUT` when set to a number,
/// else [`DEFAULT_HEARTBEAT_TIMEOUT_S`].
pub fn heartbeat_timeout_s() -> f64 {
    std::env::var("HARNESS_HEARTBEAT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT_S)
}

/// Whether the owner of a claim (`host`, `pid`, last heartbeat) is gone: a dead pid on this
/// host, or a heartbeat older than `timeout_s` anywhere.
pub fn owner_gone(host: &str, pid: u32, heartbeat_s: f64, timeout_s: f64) -> bool {
    (host == fsutil::hostname() && !fsutil::pid_alive(pid)) || now_s() - heartbeat_s > timeout_s
}

/// Tries to take the claim file `lock` as `mine`: `Ok(Err(holder))` when a live owner holds
/// it (`stale` judges that), returned so callers can say who. A stale claim is replaced by
/// exactly one claimant: only the one who creates `<lock>.steal` may, and only while the
/// claim is still the one it judged stale.
pub(crate) fn claim_file(
    lock: &Path,
    mine: ClaimInfo,
    stale: impl Fn(&ClaimInfo) -> bool,
    timeout_s: f64,
) -> Result<Result<ClaimInfo, ClaimInfo>> {
    fs::create_dir_all(lock.parent().unwrap())?;
    let bytes = serde_json::to_vec(&mine)?;
    if create_exclusive(lock, &bytes)? {
        return Ok(Ok(mine));
    }
    let held: ClaimInfo = match read_json(lock) {
        Ok(h) => h,
        // A claim file is written in one small write right after creation; unreadable
        // means it is being written now.
        Err(_) => {
            return Ok(Err(ClaimInfo {
                token: String::new(),
                ..mine
            }))
        }
    };
    if !stale(&held) {
        return Ok(Err(held));
    }
    let steal = lock.with_extension("steal");
    if !create_exclusive(&steal, &bytes)? {
        let age = fs::metadata(&steal)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default().as_secs_f64())
            .unwrap_or(0.0);
        if age > timeout_s {
            let _ = fs::remove_file(&steal); // its taker died mid-takeover
        }
        return Ok(Err(held));
    }
    let result = (|| {
        let again: Option<ClaimInfo> = read_json(lock).ok();
        if again.as_ref().map(|a| a.token.as_str()) != Some(held.token.as_str()) {
            return Ok(Err(again.unwrap_or(held.clone())));
        }
        fs::remove_file(lock)?;
        if create_exclusive(lock, &bytes)? {
            Ok(Ok(mine.clone()))
        } else {
            Ok(Err(read_json(lock).unwrap_or(held.clone())))
        }
    })();
    let _ = fs::remove_file(&steal);
    result
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT/SIGTERM arrived; long loops check this and stop cleanly.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Installs the SIGINT/SIGTERM handler: the first signal asks the work to stop (it marks
/// the run interrupted and flushes metrics); a second one exits at once.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step, flushing metrics (again to force)");
    });
}

/// Test hook: raise the interrupt flag as a signal would.
pub fn request_interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The store rooted at a results folder.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
    pub heartbeat_timeout_s: f64,
}

impl Store {
    /// Opens (without creating) the store; the timeout comes from
    /// `HARNESS_HEARTBEAT_TIMEOUT` (seconds) when set.
    pub fn new(root: &Path) -> Self {
        Store {
            root: root.to_path_buf(),
            heartbeat_timeout_s: heartbeat_timeout_s(),
        }
    }

    pub fn with_heartbeat_timeout(mut self, seconds: f64) -> Self {
        self.heartbeat_timeout_s = seconds;
        self
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join(run_id)
    }

    fn stages_dir(&self) -> PathBuf {
        self.root.join("_stages")
    }

    /// Every run folder in the store (folders with a `status.json`), sorted by id.
    pub fn run_ids(&self) -> Result<Vec<String>> {
        if !self.root.exists() {
            return Ok(vec![]);
        }
        let mut ids: Vec<String> = fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("status.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn read_status(&self, run_id: &str) -> Result<Status> {
        read_json(&self.run_dir(run_id).join("status.json"))
    }

    /// The state to show: a `running` run whose heartbeat stopped (or whose pid on this host
    /// is gone) is `interrupted`.
    pub fn effective_state(&self, s: &Status) -> State {
        if s.state == State::Running && self.owner_gone(&s.host, s.pid, s.heartbeat_s) {
            State::Interrupted
        } else {
            s.state
        }
    }

    fn owner_gone(&self, host: &str, pid: u32, heartbeat_s: f64) -> bool {
        owner_gone(host, pid, heartbeat_s, self.heartbeat_timeout_s)
    }

    /// Whether the claim described by `info` no longer has a live owner.
    fn claim_stale(&self, info: &ClaimInfo) -> bool {
        // The run's heartbeat speaks for this claim only while the claim's owner writes the
        // status: once another worker took the run over, a claim the dead owner left (its
        // stage lock) would otherwise look alive on the new owner's heartbeat forever.
        let beat = self
            .read_status(&info.run_id)
            .ok()
            .filter(|s| s.pid == info.pid && s.host == info.host)
            .map_or(info.created_s, |s| s.heartbeat_s);
        // A claim made after the status was last written (a resume) counts from its creation.
        self.owner_gone(&info.host, info.pid, beat.max(info.created_s))
    }

    /// Tries to take the claim file at `lock` for `run_id`; `Ok(Err(holder))` when a live
    /// owner holds it.
    fn try_claim(&self, lock: &Path, run_id: &str) -> Result<Result<ClaimInfo, ClaimInfo>> {
        claim_file(
            lock,
            ClaimInfo::mine(run_id),
            |held| self.claim_stale(held),
            self.heartbeat_timeout_s,
        )
    }

    /// The live owner of `lock` other than this process, if any: what a claim attempt
    /// would run into, asked without claiming.
    fn live_holder(&self, lock: &Path) -> Option<ClaimInfo> {
        let held: ClaimInfo = read_json(lock).ok()?;
        let me = held.pid == std::process::id() && held.host == fsutil::hostname();
        (!me && !self.claim_stale(&held)).then_some(held)
    }

    /// Who holds the run's claim, when that is another live process (another worker).
    pub fn run_holder(&self, run_id: &str) -> Option<ClaimInfo> {
        self.live_holder(&self.run_dir(run_id).join("lock"))
    }

    /// Who is training the stage `key`, when that is another live process.
    pub fn stage_holder(&self, key: &str) -> Option<ClaimInfo> {
        self.live_holder(&self.stages_dir().join(format!("{key}.lock")))
    }

    /// Claims a run folder. Errors name the live owner when there is one.
    pub fn claim_run(&self, run_id: &str) -> Result<Claim> {
        let dir = self.run_dir(run_id);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let lock = dir.join("lock");
        match self.try_claim(&lock, run_id)? {
            Ok(info) => Ok(Claim { lock, info }),
            Err(owner) => Err(ClaimHeld {
                run_id: run_id.into(),
                owner,
                lock,
            }
            .into()),
        }
    }

    /// Tries to claim a stage key for `run_id`; `Ok(None)` when another live run has it.
    pub fn claim_stage(&self, key: &str, run_id: &str) -> Result<Option<Claim>> {
        let lock = self.stages_dir().join(format!("{key}.lock"));
        Ok(self
            .try_claim(&lock, run_id)?
            .ok()
            .map(|info| Claim { lock, info }))
    }

    /// The run that completed `key`, if any.
    pub fn completed_stage(&self, key: &str) -> Option<StageRecord> {
        read_json(&self.stages_dir().join(format!("{key}.json"))).ok()
    }

    /// The latest completed stage with config key `config_key`, whatever code trained it
    /// (records from before code fingerprints count: their key was the config key).
    pub fn completed_stage_by_config(&self, config_key: &str) -> Option<StageRecord> {
        let entries = fs::read_dir(self.stages_dir()).ok()?;
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json::<StageRecord>(&e.path()).ok())
            .filter(|r| r.config_key.as_deref().unwrap_or(&r.key) == config_key)
            .max_by(|a, b| (&a.completed, &a.key).cmp(&(&b.completed, &b.key)))
    }

    /// Records that `run_id` completed stage `stage` under `key` (its config key and the
    /// code fingerprint beside it, for `--reuse config` and for saying what changed).
    pub fn record_stage(
        &self,
        key: &str,
        config_key: &str,
        fingerprint: &str,
        stage: u8,
        run_id: &str,
    ) -> Result<()> {
        let rec = StageRecord {
            key: key.into(),
            config_key: Some(config_key.into()),
            fingerprint: Some(fingerprint.into()),
            stage,
            run_id: run_id.into(),
            completed: now_rfc3339(),
        };
        write_json(&self.stages_dir().join(format!("{key}.json")), &rec)
    }

    /// How the code that trained run `run_id` differs from this binary's: from the
    /// per-file hashes in its `provenance.json`, which are those of the binary that ran
    /// (committed or not); for a run that recorded none, from its commit's fingerprinted
    /// files, read with git2 in the repository the harness runs in, when that commit is
    /// there ([`provenance::fingerprinted_files_at`]).
    pub fn code_change_from(&self, run_id: &str) -> CodeChange {
        let prov = self.read_provenance(run_id).ok();
        let (from_commit, from_dirty) = prov
            .as_ref()
            .map(|p| (p.code.commit.clone(), p.code.dirty))
            .unwrap_or_else(|| ("unknown".into(), false));
        let fp = prov.and_then(|p| p.fingerprint);
        let now = crate::config::fingerprint::CodeFingerprint::built();
        let (files, files_from_commit) = match &fp {
            Some(f) => (
                crate::config::fingerprint::differing(&f.files, &now.files),
                false,
            ),
            None => match provenance::fingerprinted_files_at(Path::new("."), &from_commit) {
                Some(at) => (crate::config::fingerprint::differing(&at, &now.files), true),
                None => (vec![], false),
            },
        };
        CodeChange {
            from_commit,
            from_dirty,
            from_fingerprint: fp.map(|f| f.sha256),
            files,
            files_from_commit,
        }
    }

    /// Resolves a run reference: a full id, a unique id prefix, or an experiment name (its
    /// latest run). Errors list the candidates.
    pub fn resolve(&self, reference: &str) -> Result<String> {
        let ids = self.run_ids()?;
        if ids.iter().any(|i| i == reference) {
            return Ok(reference.into());
        }
        let by_prefix: Vec<&String> = ids.iter().filter(|i| i.starts_with(reference)).collect();
        let by_name: Vec<(String, String)> = ids
            .iter()
            .filter_map(|i| {
                let exp = self.read_experiment(i).ok()?;
                let st = self.read_status(i).ok()?;
                (exp.name == reference).then(|| (st.started, i.clone()))
            })
            .collect();
        if let Some((_, latest)) = by_name.iter().max() {
            return Ok(latest.clone());
        }
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                let known = if ids.is_empty() {
                    "the store is empty".into()
                } else {
                    ids.join(", ")
                };
                bail!(
                    "no run matches {reference:?} in {} ({known})",
                    self.root.display()
                )
            }
            many => bail!(
                "{reference:?} is ambiguous; it matches {}",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The resolved experiment a run was started with (`run.toml`).
    pub fn read_experiment(&self, run_id: &str) -> Result<crate::config::Experiment> {
        let p = self.run_dir(run_id).join("run.toml");
        let text =
            fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        crate::config::parse(&text, &p.display().to_string())
    }

    pub fn read_provenance(&self, run_id: &str) -> Result<provenance::Provenance> {
        read_json(&self.run_dir(run_id).join("provenance.json"))
    }
}

/// `_stages/<key>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    /// The stage's config key (`None` in records from before code fingerprints, whose
    /// `key` was the config key).
    #[serde(default)]
    pub config_key: Option<String>,
    /// The code fingerprint that trained it (`None` before fingerprints).
    #[serde(default)]
    pub fingerprint: Option<String>,
    pub stage: u8,
    pub run_id: String,
    pub completed: String,
}

/// A held claim; released on drop (only if the file is still ours).
#[derive(Debug)]
pub struct Claim {
    pub lock: PathBuf,
    pub info: ClaimInfo,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let ours = read_json::<ClaimInfo>(&self.lock).map(|c| c.token == self.info.token);
        if ours.unwrap_or(false) {
            let _ = fs::remove_file(&self.lock);
        }
    }
}

/// A run in progress: its status behind a mutex shared with the heartbeat thread, which
/// rewrites `status.json` every few seconds.
pub struct LiveRun {
    pub dir: PathBuf,
    status: Arc<Mutex<Status>>,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
    _claim: Claim,
}

impl LiveRun {
    /// Starts (or restarts, on resume) the run under a claim: writes `status.json` as
    /// running and starts the heartbeat.
    pub fn start(dir: &Path, claim: Claim, runner: &str, previous: Option<Status>) -> Result<Self> {
        let now = now_rfc3339();
        let status = Status {
            run_id: claim.info.run_id.clone(),
            state: State::Running,
            pid: std::process::id(),
            host: fsutil::hostname(),
            heartbeat: now.clone(),
            heartbeat_s: now_s(),
            started: previous.as_ref().map(|p| p.started.clone()).unwrap_or(now),
            ended: None,
            error: None,
            runner: runner.into(),
            stages: previous.map(|p| p.stages).unwrap_or_default(),
        };
        let path = dir.join("status.json");
        write_json(&path, &status)?;
        let status = Arc::new(Mutex::new(status));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2, p2) = (status.clone(), stop.clone(), path.clone());
        let beat = std::thread::spawn(move || {
            let tick = Duration::from_millis(200);
            let mut since = Duration::ZERO;
            while !stop2.load(Ordering::SeqCst) {
                std::thread::sleep(tick);
                since += tick;
                if since >= HEARTBEAT_EVERY {
                    since = Duration::ZERO;
                    let mut s = s2.lock().unwrap();
                    s.heartbeat = now_rfc3339();
                    s.heartbeat_s = now_s();
                    let _ = write_json(&p2, &*s);
                }
            }
        });
        Ok(LiveRun {
            dir: dir.to_path_buf(),
            status,
            stop,
            beat: Some(beat),
            _claim: claim,
        })
    }

    /// Updates the status under the lock and writes it.
    pub fn update(&self, f: impl FnOnce(&mut Status)) -> Result<()> {
        let mut s = self.status.lock().unwrap();
        f(&mut s);
        s.heartbeat = now_rfc3339();
        s.heartbeat_s = now_s();
        write_json(&self.dir.join("status.json"), &*s)
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    pub fn set_stage(&self, name: &str, st: StageStatus) -> Result<()> {
        self.update(|s| {
            s.stages.insert(name.into(), st);
        })
    }

    /// Ends the run with a final state (and error text for failures).
    pub fn finish(mut self, state: State, error: Option<String>) -> Result<Status> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.beat.take() {
            let _ = h.join();
        }
        self.update(|s| {
            s.state = state;
            s.ended = Some(now_rfc3339());
            s.error = error;
        })?;
        Ok(self.status())
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.beat.take() {
            let _ = h.join();
        }
    }
}

/// Appends a line to the run's `log.txt` (best effort: logging never fails a run).
pub fn log_line(run_dir: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("log.txt"))
    {
        let _ = writeln!(f, "{} {line}", now_rfc3339());
    }
}
