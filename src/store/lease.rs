//! A lease: a lock file for work done once outside any run, like building a `builtin:`
//! backbone into the shared cache while other workers wait for it. Taken by exclusive
//! create, as run claims are ([`super::claim_file`]); kept alive by a heartbeat file beside
//! it (`<lock>.beat`, rewritten every few seconds: a lock file's own mtime means nothing on
//! NFS, see `scripts/slurm/README.md`); taken over by one waiter when its holder is gone (a
//! dead pid on this host, or no heartbeat for the heartbeat timeout).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{claim_file, heartbeat_timeout_s, owner_gone, ClaimInfo, HEARTBEAT_EVERY};
use crate::fsutil::{now_s, read_json, write_json};

/// `<lock>.beat`: the holder's last sign of life.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    token: String,
    heartbeat_s: f64,
}

/// A held lease; released (lock and heartbeat removed, if still ours) on drop.
#[derive(Debug)]
pub struct Lease {
    lock: PathBuf,
    info: ClaimInfo,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

fn beat_path(lock: &Path) -> PathBuf {
    let mut name = lock.file_name().unwrap_or_default().to_os_string();
    name.push(".beat");
    lock.with_file_name(name)
}

impl Lease {
    /// Takes the lease at `lock` for `what` (a label for messages), or returns its live
    /// holder. The heartbeat timeout is [`heartbeat_timeout_s`].
    pub fn try_take(lock: &Path, what: &str) -> Result<Result<Lease, ClaimInfo>> {
        Self::try_take_with_timeout(lock, what, heartbeat_timeout_s())
    }

    /// [`Lease::try_take`] with an explicit heartbeat timeout in seconds.
    pub fn try_take_with_timeout(
        lock: &Path,
        what: &str,
        timeout_s: f64,
    ) -> Result<Result<Lease, ClaimInfo>> {
        let beat = beat_path(lock);
        let stale = |held: &ClaimInfo| {
            let last = read_json::<Beat>(&beat)
                .ok()
                .filter(|b| b.token == held.token)
                .map_or(held.created_s, |b| b.heartbeat_s);
            owner_gone(&held.host, held.pid, last.max(held.created_s), timeout_s)
        };
        let info = match claim_file(lock, ClaimInfo::mine(what), stale, timeout_s)? {
            Ok(info) => info,
            Err(holder) => return Ok(Err(holder)),
        };
        let write = {
            let (beat, token) = (beat.clone(), info.token.clone());
            move || {
                let _ = write_json(
                    &beat,
                    &Beat {
                        token: token.clone(),
                        heartbeat_s: now_s(),
                    },
                );
            }
        };
        write();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let tick = Duration::from_millis(200);
            let mut since = Duration::ZERO;
            while !stop2.load(Ordering::SeqCst) {
                std::thread::sleep(tick);
                since += tick;
                if since >= HEARTBEAT_EVERY {
                    since = Duration::ZERO;
                    write();
                }
            }
        });
        Ok(Ok(Lease {
            lock: lock.to_path_buf(),
            info,
            stop,
            beat: Some(handle),
        }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.lock
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.beat.take() {
            let _ = h.join();
        }
        let ours = read_json::<ClaimInfo>(&self.lock).is_ok_and(|c| c.token == self.info.token);
        if ours {
            let _ = std::fs::remove_file(beat_path(&self.lock));
            let _ = std::fs::remove_file(&self.lock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign(lock: &Path, host: &str, pid: u32, created_s: f64) {
        let info = ClaimInfo {
            run_id: "x".into(),
            pid,
            host: host.into(),
            created_s,
            token: format!("{host}-{pid}-{created_s}"),
        };
        write_json(lock, &info).unwrap();
    }

    #[test]
    fn one_holder_then_released() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join("b.lock");
        let a = Lease::try_take_with_timeout(&lock, "b", 60.0)
            .unwrap()
            .unwrap();
        assert!(beat_path(&lock).exists());
        let held = Lease::try_take_with_timeout(&lock, "b", 60.0)
            .unwrap()
            .unwrap_err();
        assert_eq!((held.pid, held.run_id.as_str()), (std::process::id(), "b"));
        drop(a);
        assert!(!lock.exists() && !beat_path(&lock).exists());
        assert!(Lease::try_take_with_timeout(&lock, "b", 60.0)
            .unwrap()
            .is_ok());
    }

    #[test]
    fn dead_or_silent_holders_are_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join("b.lock");
        // Another host, claimed 100 s ago, no heartbeat: stale after a 60 s timeout, held
        // under a 300 s one.
        foreign(&lock, "elsewhere", 1, now_s() - 100.0);
        let h = Lease::try_take_with_timeout(&lock, "b", 300.0)
            .unwrap()
            .unwrap_err();
        assert_eq!(h.host, "elsewhere");
        // A fresh heartbeat of that holder keeps it even past the timeout of its claim.
        write_json(
            &beat_path(&lock),
            &Beat {
                token: h.token.clone(),
                heartbeat_s: now_s(),
            },
        )
        .unwrap();
        assert!(Lease::try_take_with_timeout(&lock, "b", 60.0)
            .unwrap()
            .is_err());
        // A heartbeat with another token (a former holder's) does not count.
        write_json(
            &beat_path(&lock),
            &Beat {
                token: "old".into(),
                heartbeat_s: now_s(),
            },
        )
        .unwrap();
        let got = Lease::try_take_with_timeout(&lock, "b", 60.0)
            .unwrap()
            .unwrap();
        let now: ClaimInfo = read_json(&lock).unwrap();
        assert_eq!(now.pid, std::process::id());
        drop(got);

        // This host, a pid that is not running: stale at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        foreign(&lock, &crate::fsutil::hostname(), dead, now_s());
        assert!(Lease::try_take_with_timeout(&lock, "b", 3600.0)
            .unwrap()
            .is_ok());
    }
}
