//! Metrics: a long-form table (run_id, stage, split, step, epoch, metric, value, wall_s,
//! timestamp) written as small Parquet part files flushed on an interval, so a killed
//! process loses at most the last interval; completion compacts the parts into one file.
//! Anyone can open `metrics/` with polars, pandas, pyarrow or DuckDB.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use polars::prelude::*;

use crate::fsutil;

/// The compacted table of a completed run.
pub const COMPACT_FILE: &str = "metrics.parquet";

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub run_id: String,
    pub stage: String,
    pub split: String,
    pub step: u64,
    pub epoch: f64,
    pub metric: String,
    pub value: f64,
    /// Seconds since the writer started.
    pub wall_s: f64,
    /// Unix time in milliseconds (UTC).
    pub timestamp_ms: i64,
}

/// Appends rows and flushes them as Parquet parts every `interval`.
pub struct MetricsWriter {
    dir: PathBuf,
    run_id: String,
    buf: Vec<Row>,
    interval: Duration,
    last_flush: Instant,
    start: Instant,
    /// Wall seconds already spent by earlier (resumed) attempts, added to `wall_s`.
    wall_offset: f64,
    prefix: String,
    seq: u64,
}

impl MetricsWriter {
    /// A writer into `dir` (created on demand).
    pub fn new(dir: &Path, run_id: &str, interval: Duration) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(MetricsWriter {
            dir: dir.to_path_buf(),
            run_id: run_id.into(),
            buf: Vec::new(),
            interval,
            last_flush: Instant::now(),
            start: Instant::now(),
            wall_offset: 0.0,
            // Unique per writer, even across hosts sharing the folder and resumed attempts.
            prefix: format!(
                "part-{}-{}-{}",
                chrono::Utc::now().timestamp_millis(),
                fsutil::hostname(),
                std::process::id()
            ),
            seq: 0,
        })
    }

    /// Continue the wall clock of an earlier attempt.
    pub fn set_wall_offset(&mut self, seconds: f64) {
        self.wall_offset = seconds;
    }

    pub fn wall_s(&self) -> f64 {
        self.wall_offset + self.start.elapsed().as_secs_f64()
    }

    /// Records one value; flushes when the interval has passed.
    pub fn log(
        &mut self,
        stage: &str,
        split: &str,
        step: u64,
        epoch: f64,
        metric: &str,
        value: f64,
    ) -> Result<()> {
        self.buf.push(Row {
            run_id: self.run_id.clone(),
            stage: stage.into(),
            split: split.into(),
            step,
            epoch,
            metric: metric.into(),
            value,
            wall_s: self.wall_s(),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        });
        if self.last_flush.elapsed() >= self.interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one new part file (atomically).
    pub fn flush(&mut self) -> Result<()> {
        self.last_flush = Instant::now();
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut df = rows_to_frame(&self.buf)?;
        let path = self
            .dir
            .join(format!("{}-{:06}.parquet", self.prefix, self.seq));
        fsutil::write_atomic_with(&path, |f| {
            ParquetWriter::new(f).finish(&mut df)?;
            Ok(())
        })?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }
}

impl Drop for MetricsWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            eprintln!(
                "warning: could not flush metrics to {}: {e:#}",
                self.dir.display()
            );
        }
    }
}

/// Builds the long-form frame from rows.
pub fn rows_to_frame(rows: &[Row]) -> Result<DataFrame> {
    let ts: Vec<i64> = rows.iter().map(|r| r.timestamp_ms).collect();
    let ts = Series::new("timestamp".into(), ts)
        .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?;
    let mut df = df!(
        "run_id" => rows.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        "stage" => rows.iter().map(|r| r.stage.as_str()).collect::<Vec<_>>(),
        "split" => rows.iter().map(|r| r.split.as_str()).collect::<Vec<_>>(),
        "step" => rows.iter().map(|r| r.step).collect::<Vec<_>>(),
        "epoch" => rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        "metric" => rows.iter().map(|r| r.metric.as_str()).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        "wall_s" => rows.iter().map(|r| r.wall_s).collect::<Vec<_>>(),
    )?;
    df.with_column(ts.into_column())?;
    Ok(df)
}

/// Converts a long-form frame back to rows.
pub fn frame_to_rows(df: &DataFrame) -> Result<Vec<Row>> {
    let s = |name: &str| -> Result<StringChunked> { Ok(df.column(name)?.str()?.clone()) };
    let (run_id, stage, split, metric) = (s("run_id")?, s("stage")?, s("split")?, s("metric")?);
    let step = df.column("step")?.u64()?.clone();
    let epoch = df.column("epoch")?.f64()?.clone();
    let value = df.column("value")?.f64()?.clone();
    let wall = df.column("wall_s")?.f64()?.clone();
    let ts = df.column("timestamp")?.cast(&DataType::Int64)?;
    let ts = ts.i64()?;
    Ok((0..df.height())
        .map(|i| Row {
            run_id: run_id.get(i).unwrap_or("").into(),
            stage: stage.get(i).unwrap_or("").into(),
            split: split.get(i).unwrap_or("").into(),
            step: step.get(i).unwrap_or(0),
            epoch: epoch.get(i).unwrap_or(f64::NAN),
            metric: metric.get(i).unwrap_or("").into(),
            value: value.get(i).unwrap_or(f64::NAN),
            wall_s: wall.get(i).unwrap_or(f64::NAN),
            timestamp_ms: ts.get(i).unwrap_or(0),
        })
        .collect())
}

/// The Parquet files of a metrics folder: the compacted file and every part, in order.
/// Temporary files (a write cut short) are not listed.
pub fn part_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !n.starts_with('.') && n.ends_with(".parquet")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// What reading a metrics folder found.
pub struct ReadReport {
    pub frame: DataFrame,
    /// Files that could not be read (a torn or foreign file), with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Reads every part of a metrics folder into one frame, skipping unreadable parts.
pub fn read_dir(dir: &Path) -> Result<ReadReport> {
    let mut frame: Option<DataFrame> = None;
    let mut unreadable = Vec::new();
    for p in part_files(dir)? {
        let part = File::open(&p)
            .map_err(PolarsError::from)
            .and_then(|f| ParquetReader::new(f).finish());
        match part {
            Ok(df) => match &mut frame {
                None => frame = Some(df),
                Some(all) => {
                    if let Err(e) = all.vstack_mut_owned(df) {
                        unreadable.push((p, e.to_string()));
                    }
                }
            },
            Err(e) => unreadable.push((p, e.to_string())),
        }
    }
    let frame = match frame {
        Some(f) => f,
        None => rows_to_frame(&[])?,
    };
    Ok(ReadReport { frame, unreadable })
}

/// Reads a metrics folder as rows, in step order. Steps replayed after a resume (logged by
/// the interrupted attempt after its last checkpoint, then again) keep only their latest
/// value; the raw table from [`read_dir`] keeps both.
pub fn read_rows(dir: &Path) -> Result<Vec<Row>> {
    let mut rows = frame_to_rows(&read_dir(dir)?.frame)?;
    rows.sort_by(|a, b| {
        (&a.stage, &a.split, &a.metric, a.step, a.timestamp_ms).cmp(&(
            &b.stage,
            &b.split,
            &b.metric,
            b.step,
            b.timestamp_ms,
        ))
    });
    // Keep the last of each (stage, split, metric, step).
    let mut out: Vec<Row> = Vec::with_capacity(rows.len());
    for r in rows {
        match out.last_mut() {
            Some(l)
                if l.stage == r.stage
                    && l.split == r.split
                    && l.metric == r.metric
                    && l.step == r.step =>
            {
                *l = r
            }
            _ => out.push(r),
        }
    }
    out.sort_by_key(|r| (r.timestamp_ms, r.step));
    Ok(out)
}

/// Merges every part into `metrics.parquet` and removes the parts. Safe against a crash at
/// any point: the compacted file is complete before any part is deleted, and a reader
/// would only see duplicates if it ran between those two moments, which `compact` repairs
/// by rewriting from the union on its next run.
pub fn compact(dir: &Path) -> Result<PathBuf> {
    let files = part_files(dir)?;
    let target = dir.join(COMPACT_FILE);
    let report = read_dir(dir)?;
    let mut df = report.frame;
    // Rows already in the compacted file may reappear in parts only if an earlier compaction
    // was cut between its rename and its deletions; drop exact duplicates to repair that.
    if files.len() > 1 && files.contains(&target) {
        df = df.unique_stable(None, UniqueKeepStrategy::First, None)?;
    }
    fsutil::write_atomic_with(&target, |f| {
        ParquetWriter::new(f).finish(&mut df)?;
        Ok(())
    })?;
    for p in files {
        if p != target {
            fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(target)
}

/// The last value of each (stage, split, metric), in first-seen order.
pub fn last_values(rows: &[Row]) -> Vec<(String, String, String, u64, f64)> {
    let mut out: Vec<(String, String, String, u64, f64)> = Vec::new();
    for r in rows {
        match out
            .iter_mut()
            .find(|o| o.0 == r.stage && o.1 == r.split && o.2 == r.metric)
        {
            Some(o) if r.step >= o.3 => {
                o.3 = r.step;
                o.4 = r.value;
            }
            Some(_) => {}
            None => out.push((
                r.stage.clone(),
                r.split.clone(),
                r.metric.clone(),
                r.step,
                r.value,
            )),
        }
    }
    out
}
