//! Who ran a stage: the host and process, the Slurm task when it ran in one (read from the
//! variables Slurm sets in a batch job), and the worker's own log (a Slurm task's output
//! file). Recorded per stage in `status.json` and in the run's `log.txt`, so a result on a
//! shared results folder says which job, task and node produced it.

use std::fmt;
use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Which Slurm task this process is, from the variables Slurm sets in a batch job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmTask {
    /// `SLURM_JOB_ID`: this task's own job id (each array task has one).
    pub job_id: u64,
    /// `SLURM_ARRAY_JOB_ID`: the id sbatch printed, shared by the array's tasks.
    pub array_job_id: Option<u64>,
    /// `SLURM_ARRAY_TASK_ID`.
    pub array_task_id: Option<u32>,
    /// `SLURMD_NODENAME`: the node it runs on.
    pub node: Option<String>,
    /// `SLURM_RESTART_COUNT`: times the job was requeued (unset, i.e. 0, on its first run).
    pub restart_count: u32,
}

impl SlurmTask {
    /// `40_2` for an array task, `42` for a plain job: what `squeue -j` takes.
    pub fn short(&self) -> String {
        match (self.array_job_id, self.array_task_id) {
            (Some(a), Some(t)) => format!("{a}_{t}"),
            _ => self.job_id.to_string(),
        }
    }
}

impl fmt::Display for SlurmTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.array_job_id, self.array_task_id) {
            (Some(a), Some(t)) => write!(f, "{a}_{t} (job {})", self.job_id)?,
            _ => write!(f, "job {}", self.job_id)?,
        }
        if let Some(n) = &self.node {
            write!(f, " on {n}")?;
        }
        if self.restart_count > 0 {
            write!(f, ", restart {}", self.restart_count)?;
        }
        Ok(())
    }
}

/// This process's Slurm task, from its environment; `None` outside a Slurm job.
pub fn task_identity() -> Result<Option<SlurmTask>> {
    task_identity_from(|k| std::env::var(k).ok())
}

/// [`task_identity`] from any variable lookup; a variable that is set but not a number
/// is an error naming it.
pub fn task_identity_from(var: impl Fn(&str) -> Option<String>) -> Result<Option<SlurmTask>> {
    fn num<T: std::str::FromStr>(
        var: &impl Fn(&str) -> Option<String>,
        k: &str,
    ) -> Result<Option<T>> {
        match var(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("environment variable {k}=`{v}` is not a number")),
        }
    }
    let Some(job_id) = num::<u64>(&var, "SLURM_JOB_ID")? else {
        return Ok(None);
    };
    Ok(Some(SlurmTask {
        job_id,
        array_job_id: num(&var, "SLURM_ARRAY_JOB_ID")?,
        array_task_id: num(&var, "SLURM_ARRAY_TASK_ID")?,
        node: var("SLURMD_NODENAME").filter(|v| !v.is_empty()),
        restart_count: num(&var, "SLURM_RESTART_COUNT")?.unwrap_or(0),
    }))
}

/// The process that ran a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub host: String,
    pub pid: u32,
    /// The Slurm task, when it ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmTask>,
    /// The file its output went to (a Slurm task's log), when that is a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

impl WorkerInfo {
    /// This process. A malformed Slurm variable is left out with a warning: it must not
    /// stop a run.
    pub fn current() -> Self {
        let slurm = task_identity().unwrap_or_else(|e| {
            eprintln!("warning: {e:#}; the Slurm task is not recorded");
            None
        });
        WorkerInfo {
            host: fsutil::hostname(),
            pid: std::process::id(),
            slurm,
            log: output_file(),
        }
    }

    /// `40_2 on gpu-07` in a Slurm task, else `host`: the "ran on" of tables.
    pub fn short(&self) -> String {
        match &self.slurm {
            Some(t) => format!(
                "{} on {}",
                t.short(),
                t.node.as_deref().unwrap_or(&self.host)
            ),
            None => self.host.clone(),
        }
    }
}

impl fmt::Display for WorkerInfo {
    /// `pid 7 on h, Slurm 40_2 (job 42) on gpu-07, log /r/_sweeps/s/logs/s-40_2.log`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on {}", self.pid, self.host)?;
        if let Some(t) = &self.slurm {
            write!(f, ", Slurm {t}")?;
        }
        if let Some(l) = &self.log {
            write!(f, ", log {}", l.display())?;
        }
        Ok(())
    }
}

/// The regular file this process's stdout writes to (where Slurm's `--output` sends a
/// task's output), if it is one: not a terminal, pipe or `/dev/null`.
fn output_file() -> Option<PathBuf> {
    let target = std::fs::read_link("/proc/self/fd/1").ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    (target.is_absolute() && meta.is_file()).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_shows_its_slurm_task() {
        let w = WorkerInfo {
            host: "h".into(),
            pid: 7,
            slurm: Some(SlurmTask {
                job_id: 42,
                array_job_id: Some(40),
                array_task_id: Some(2),
                node: Some("gpu-07".into()),
                restart_count: 0,
            }),
            log: Some("/r/s-40_2.log".into()),
        };
        assert_eq!(w.short(), "40_2 on gpu-07");
        assert_eq!(
            w.to_string(),
            "pid 7 on h, Slurm 40_2 (job 42) on gpu-07, log /r/s-40_2.log"
        );
        let plain = WorkerInfo {
            slurm: None,
            log: None,
            ..w
        };
        assert_eq!(
            (plain.short(), plain.to_string()),
            ("h".into(), "pid 7 on h".into())
        );
        // Older status files have no `worker`; a plain one serializes without the options.
        let v = serde_json::to_value(&plain).unwrap();
        assert_eq!(v, serde_json::json!({"host": "h", "pid": 7}));
    }
}
