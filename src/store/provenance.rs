//! Where a run's code came from: the git commit, branch, and, for a dirty tree, the diff
//! (tracked and untracked files) and its hash. Outside a repository the run is marked
//! `no-git` with a warning instead of failing. Beside them the binary's code fingerprint
//! and its per-file hashes ([`crate::config::fingerprint`]), which identify the code that
//! ran even when the harness ran outside the tree it was built from.

use std::path::Path;

use git2::{DiffFormat, DiffOptions, Repository, StatusOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Diffs larger than this are stored truncated (the hash still covers all of it).
pub const DIFF_CAP_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeState {
    /// Full commit id, or `no-git`.
    pub commit: String,
    pub branch: Option<String>,
    pub dirty: bool,
    /// sha256 of the full diff when dirty.
    pub diff_hash: Option<String>,
    /// Bytes of the full diff.
    pub diff_bytes: usize,
    /// Files changed or untracked, for reports.
    pub changed_files: Vec<String>,
    #[serde(skip)]
    pub diff: Vec<u8>,
}

pub const NO_GIT: &str = "no-git";

impl CodeState {
    /// Short commit for run ids: 7 hex digits, or `nogit`.
    pub fn short(&self) -> String {
        if self.commit == NO_GIT {
            "nogit".into()
        } else {
            self.commit.chars().take(7).collect()
        }
    }

    /// The run-id suffix: commit, plus `d` and 8 digits of the diff hash when dirty.
    pub fn id_suffix(&self) -> String {
        match &self.diff_hash {
            Some(h) => format!("{}-d{}", self.short(), &h[..8]),
            None => self.short(),
        }
    }

    /// Writes `code.json` and `diff.patch` into `dir`, for [`CodeState::load`].
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        crate::fsutil::write_atomic(&dir.join("code.json"), &serde_json::to_vec_pretty(self)?)?;
        crate::fsutil::write_atomic(&dir.join("diff.patch"), &self.diff)
    }

    /// What [`CodeState::save`] wrote.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut s: CodeState = crate::fsutil::read_json(&dir.join("code.json"))?;
        s.diff = std::fs::read(dir.join("diff.patch"))?;
        Ok(s)
    }

    fn no_git() -> Self {
        CodeState {
            commit: NO_GIT.into(),
            branch: None,
            dirty: false,
            diff_hash: None,
            diff_bytes: 0,
            changed_files: vec![],
            diff: vec![],
        }
    }
}

/// Reads the code state of the repository containing `dir`. Never fails: without a
/// repository (or without a first commit) it warns and returns the `no-git` marker.
pub fn code_state(dir: &Path) -> CodeState {
    match try_code_state(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "warning: {} is not in a usable git repository ({}); runs are marked no-git",
                dir.display(),
                e.message()
            );
            CodeState::no_git()
        }
    }
}

fn try_code_state(dir: &Path) -> Result<CodeState, git2::Error> {
    let repo = Repository::discover(dir)?;
    let head = repo.head()?;
    let commit = head.peel_to_commit()?;
    let branch = if head.is_branch() {
        head.shorthand().map(String::from)
    } else {
        None
    };

    let mut sopts = StatusOptions::new();
    sopts
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    let statuses = repo.statuses(Some(&mut sopts))?;
    let changed_files: Vec<String> = statuses
        .iter()
        .filter_map(|s| s.path().map(String::from))
        .collect();
    let dirty = !changed_files.is_empty();

    let (mut diff, mut hasher, mut total) = (Vec::new(), Sha256::new(), 0usize);
    if dirty {
        let tree = commit.tree()?;
        let mut dopts = DiffOptions::new();
        dopts
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .show_untracked_content(true);
        let d = repo.diff_tree_to_workdir_with_index(Some(&tree), Some(&mut dopts))?;
        d.print(DiffFormat::Patch, |_, _, line| {
            let mut chunk = Vec::with_capacity(line.content().len() + 1);
            if matches!(line.origin(), '+' | '-' | ' ') {
                chunk.push(line.origin() as u8);
            }
            chunk.extend_from_slice(line.content());
            hasher.update(&chunk);
            total += chunk.len();
            if diff.len() < DIFF_CAP_BYTES {
                let room = DIFF_CAP_BYTES - diff.len();
                diff.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            true
        })?;
    }
    Ok(CodeState {
        commit: commit.id().to_string(),
        branch,
        dirty,
        diff_hash: dirty.then(|| hex::encode(hasher.finalize())),
        diff_bytes: total,
        changed_files,
        diff,
    })
}

/// Everything recorded about where and how a run ran (`provenance.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub code: CodeState,
    pub host: String,
    pub backend: String,
    pub device: String,
    pub harness_version: String,
    pub burn_version: String,
    pub os: String,
    pub command: Vec<String>,
    pub started: String,
    pub ended: Option<String>,
    /// The code fingerprint of the binary and the per-file hashes it covers (`None` in
    /// runs recorded before fingerprints).
    #[serde(default)]
    pub fingerprint: Option<crate::config::fingerprint::CodeFingerprint>,
}

impl Provenance {
    pub fn new(code: CodeState) -> Self {
        Provenance {
            code,
            host: crate::fsutil::hostname(),
            backend: crate::backend::NAME.into(),
            device: crate::backend::NAME.into(),
            harness_version: env!("CARGO_PKG_VERSION").into(),
            burn_version: "0.21.0".into(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            command: std::env::args().collect(),
            started: crate::fsutil::now_rfc3339(),
            ended: None,
            fingerprint: Some(crate::config::fingerprint::CodeFingerprint::built()),
        }
    }
}

/// The sha256 of each file the code fingerprint's list covers, as commit `commit` of the
/// repository containing `dir` holds them (read with git2 from that commit's tree): how a
/// run that recorded no fingerprint (one from before fingerprints) can still say which
/// fingerprinted files differ from this binary's. `None` when there is no repository, the
/// commit is not in it, or its tree holds none of the listed files (the repository is not
/// the harness's source, so it says nothing about the code).
pub fn fingerprinted_files_at(
    dir: &Path,
    commit: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    use crate::config::fingerprint;
    let rules = fingerprint::parse(fingerprint::LIST).ok()?;
    let repo = Repository::discover(dir).ok()?;
    let oid = git2::Oid::from_str(commit).ok()?;
    let tree = repo.find_commit(oid).ok()?.tree().ok()?;
    let mut files = std::collections::BTreeMap::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let Some(name) = entry.name() else {
            return git2::TreeWalkResult::Skip;
        };
        let path = format!("{root}{name}");
        if entry.kind() == Some(git2::ObjectType::Tree) {
            // Only folders on the way to a listed path, or under one.
            let folder = format!("{path}/");
            let wanted = rules.iter().any(|r| {
                !r.exclude && (r.path.starts_with(&folder) || folder.starts_with(&r.path))
            });
            return if wanted {
                git2::TreeWalkResult::Ok
            } else {
                git2::TreeWalkResult::Skip
            };
        }
        if entry.kind() != Some(git2::ObjectType::Blob) {
            return git2::TreeWalkResult::Ok;
        }
        if fingerprint::covers(&rules, &path) {
            if let Ok(blob) = repo.find_blob(entry.id()) {
                files.insert(path, hex::encode(Sha256::digest(blob.content())));
            }
        }
        git2::TreeWalkResult::Ok
    })
    .ok()?;
    (!files.is_empty()).then_some(files)
}
