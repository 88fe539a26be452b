//! The answers file as `eval bench` writes it: LLaVA's answers format ([`super::answers`]),
//! appended one whole line per write, so an interrupted evaluation keeps every answer it
//! wrote, and fsynced every [`SYNC_LINES`] lines or [`SYNC_EVERY`] (a power cut loses at
//! most that much; a killed process loses nothing the kernel has). On reopening, a last
//! line cut short by a crash (no newline) is removed and the rest is read back, so the
//! evaluation resumes after the last whole answer. A single writer per file is enforced
//! by [`WriterLock`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::answers::{Answers, QuestionId};
use crate::fsutil;

/// Lines written between two fsyncs at most.
pub const SYNC_LINES: usize = 64;
/// Time between two fsyncs at most (checked when a line is written).
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// One answer, in the field order of LLaVA's `model_vqa_loader.py`.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerLine {
    pub question_id: Value,
    pub prompt: String,
    pub text: String,
    pub answer_id: String,
    pub model_id: String,
    pub metadata: Value,
}

impl AnswerLine {
    /// An answer of `model_id` to `(question_id, prompt)`; `answer_id` is derived from the
    /// three (LLaVA draws a random one), so rewriting an answer gives the same line.
    pub fn new(
        question_id: &QuestionId,
        prompt: &str,
        text: &str,
        model_id: &str,
        metadata: Value,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [model_id, &question_id.key(), prompt] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        AnswerLine {
            question_id: question_id.to_json(),
            prompt: prompt.to_string(),
            text: text.to_string(),
            answer_id: hex::encode(&h.finalize()[..11]),
            model_id: model_id.to_string(),
            metadata,
        }
    }
}

/// An answers file open for appending.
pub struct AnswerLog {
    path: PathBuf,
    file: File,
    unsynced: usize,
    last_sync: Instant,
}

/// What [`AnswerLog::open`] found.
pub struct Opened {
    pub log: AnswerLog,
    /// The whole answers already in the file.
    pub existing: Answers,
    /// Bytes of a torn last line that were removed (0 normally).
    pub cut: usize,
}

impl AnswerLog {
    /// Opens (or creates, with its folder) the answers file at `path`, removing a torn last
    /// line; a whole line that is not a valid answer is an error naming the file and line
    /// (it was not written by a crash; nothing is changed).
    pub fn open(path: &Path) -> Result<Opened> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let text = std::str::from_utf8(&bytes[..whole])
            .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
        let existing = Answers::parse(&path.display().to_string(), text)?;
        let cut = bytes.len() - whole;
        if cut > 0 {
            file.set_len(whole as u64)
                .with_context(|| format!("removing the torn last line of {}", path.display()))?;
            file.sync_data()?;
        }
        if created {
            fsutil::sync_dir(dir);
        }
        Ok(Opened {
            log: AnswerLog {
                path: path.to_path_buf(),
                file,
                unsynced: 0,
                last_sync: Instant::now(),
            },
            existing,
            cut,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one answer as one line in one write.
    pub fn append(&mut self, line: &AnswerLine) -> Result<()> {
        let mut s = serde_json::to_string(line).expect("an answer serializes");
        s.push('\n');
        self.file
            .write_all(s.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.unsynced += 1;
        if self.unsynced >= SYNC_LINES || self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Forces what was written to disk.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced > 0 {
            self.file
                .sync_data()
                .with_context(|| format!("syncing {}", self.path.display()))?;
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }
}

impl Drop for AnswerLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// An exclusive claim on writing one answers file: a lock file created with O_EXCL,
/// holding the owner's pid and host, removed when dropped. A lock left by a dead process
/// on this host is taken over; one held elsewhere or by a live process is an error.
pub struct WriterLock {
    path: PathBuf,
}

impl WriterLock {
    pub fn acquire(path: &Path) -> Result<WriterLock> {
        let me = serde_json::json!({"pid": std::process::id(), "host": fsutil::hostname()});
        let bytes = serde_json::to_vec(&me).expect("json");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        for _ in 0..2 {
            if fsutil::create_exclusive(path, &bytes)? {
                return Ok(WriterLock {
                    path: path.to_path_buf(),
                });
            }
            let held: Value = fsutil::read_json(path).unwrap_or(Value::Null);
            let pid = held.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
            let host = held.get("host").and_then(Value::as_str).unwrap_or("?");
            if pid != 0 && host == fsutil::hostname() && !fsutil::pid_alive(pid) {
                let _ = std::fs::remove_file(path);
                continue;
            }
            bail!(
                "another evaluation (pid {pid} on {host}) is writing these answers (lock {}); \
                 wait for it, or remove the lock if that process is gone",
                path.display()
            );
        }
        bail!("could not take the lock {}", path.display())
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: i64, text: &str) -> AnswerLine {
        AnswerLine::new(
            &QuestionId::Int(id),
            "Is there a dog?",
            text,
            "run-1",
            serde_json::json!({}),
        )
    }

    #[test]
    fn lines_are_llava_answers_and_a_torn_tail_is_cut_on_reopening() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bench/pope/answers.jsonl");
        {
            let mut o = AnswerLog::open(&p).unwrap();
            assert_eq!((o.existing.items.len(), o.cut), (0, 0));
            o.log.append(&line(1, "Yes")).unwrap();
            o.log.append(&line(2, "No")).unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let first = text.lines().next().unwrap();
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(first)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        // serde_json's map sorts; the line itself keeps LLaVA's order.
        assert!(first.starts_with(
            r#"{"question_id":1,"prompt":"Is there a dog?","text":"Yes","answer_id":""#
        ));
        assert_eq!(keys.len(), 6);
        // A crash in the middle of the third line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"question_id":3,"prompt":"Is th"#).unwrap();
        drop(f);
        let o = AnswerLog::open(&p).unwrap();
        assert_eq!(o.existing.items.len(), 2);
        assert_eq!(o.cut, r#"{"question_id":3,"prompt":"Is th"#.len());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        assert_eq!(line(1, "Yes").answer_id, line(1, "No").answer_id);
        assert_ne!(line(1, "Yes").answer_id, line(2, "Yes").answer_id);
    }

    #[test]
    fn a_bad_whole_line_is_an_error_and_the_file_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("answers.jsonl");
        std::fs::write(&p, "{\"question_id\": 1, \"text\": \"Yes\"}\nnot json\n").unwrap();
        let e = format!("{:#}", AnswerLog::open(&p).err().unwrap());
        assert!(e.contains("answers.jsonl line 2: not valid JSON"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"question_id\": 1, \"text\": \"Yes\"}\nnot json\n"
        );
    }

    #[test]
    fn one_writer_at_a_time_and_dead_owners_give_way() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let l = WriterLock::acquire(&p).unwrap();
        let e = WriterLock::acquire(&p).err().unwrap().to_string();
        assert!(e.contains("another evaluation"), "{e}");
        drop(l);
        assert!(!p.exists());
        // A lock of a pid that is not alive on this host is taken over.
        let dead = serde_json::json!({"pid": i32::MAX as u32, "host": fsutil::hostname()});
        std::fs::write(&p, dead.to_string()).unwrap();
        let _l = WriterLock::acquire(&p).unwrap();
    }
}
