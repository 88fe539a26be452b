//! Everything a report shows about one run, read once: summary, status, config,
//! provenance, curves (including stages reused from other runs) and sample outputs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use crate::config::Experiment;
use crate::store::provenance::Provenance;
use crate::store::runs::{self, RunSummary};
use crate::store::{Status, Store};

use super::series::{self, Curve};

/// Samples shown per run at most; the page says how many more exist.
pub const MAX_SAMPLES: usize = 64;

/// One generated output (`samples.json`, written by evaluation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub image: Option<String>,
    pub prompt: String,
    pub reference: String,
    pub output: String,
    pub stage: String,
}

impl Sample {
    /// What identifies "the same sample" across runs: stage, image and prompt.
    pub fn key(&self) -> (String, String, String) {
        (
            self.stage.clone(),
            self.image.clone().unwrap_or_default(),
            self.prompt.clone(),
        )
    }
}

#[derive(Debug, Clone)]
pub struct RunData {
    pub summary: RunSummary,
    pub status: Status,
    pub experiment: Option<Experiment>,
    /// `run.toml` as written (the resolved config).
    pub config_text: Option<String>,
    pub provenance: Option<Provenance>,
    pub rows: usize,
    pub curves: Vec<Curve>,
    pub samples: Vec<Sample>,
    /// `samples.json` exists but could not be read.
    pub samples_error: Option<String>,
    pub dir: PathBuf,
}

impl RunData {
    pub fn load(store: &Store, id: &str) -> Result<Self> {
        let (summary, rows) = runs::summary_and_rows(store, id)?;
        let status = store.read_status(id)?;
        let dir = store.run_dir(id);
        let (samples, samples_error) = match read_samples(&dir.join("samples.json")) {
            Ok(s) => (s, None),
            Err(e) => (vec![], Some(format!("{e:#}"))),
        };
        Ok(RunData {
            status,
            experiment: store.read_experiment(id).ok(),
            config_text: std::fs::read_to_string(dir.join("run.toml")).ok(),
            provenance: store.read_provenance(id).ok(),
            rows: rows.len(),
            curves: series::curves(&rows),
            samples,
            samples_error,
            dir,
            summary,
        })
    }

    pub fn id(&self) -> &str {
        &self.summary.id
    }

    pub fn curve(&self, stage: &str, split: &str, metric: &str) -> Option<&Curve> {
        self.curves
            .iter()
            .find(|c| c.stage == stage && c.split == split && c.metric == metric)
    }

    /// Wall time of the run: ended - started, or so far for a run still going.
    pub fn duration_s(&self) -> Option<f64> {
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
        let start = parse(&self.status.started)?;
        let end = match &self.status.ended {
            Some(e) => parse(e)?,
            None => chrono::Utc::now().fixed_offset(),
        };
        Some((end - start).num_milliseconds() as f64 / 1e3)
    }
}

/// Reads `samples.json`: a list of objects; missing file = no samples. Fields are read
/// leniently (a list of references is joined) so a new field never breaks a report.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let v: Value = crate::fsutil::read_json(path)?;
    let list = v
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{} is not a JSON list", path.display()))?;
    let text = |o: &Value, k: &str| -> String {
        match o.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    Ok(list
        .iter()
        .map(|o| Sample {
            image: o.get("image").and_then(|i| i.as_str()).map(String::from),
            prompt: text(o, "prompt"),
            reference: text(o, "reference"),
            output: text(o, "output"),
            stage: text(o, "stage"),
        })
        .collect())
}

/// A small PNG thumbnail of `image` as a data URI, if the file exists and decodes.
/// Relative paths are tried from the working directory, then beside the results folder.
pub fn thumbnail(image: &str, store: &Store) -> Option<String> {
    let p = Path::new(image);
    let candidates = [
        p.to_path_buf(),
        store.root.parent().unwrap_or(Path::new(".")).join(p),
    ];
    let path = candidates.iter().find(|c| c.is_file())?;
    let img = image::open(path).ok()?.thumbnail(160, 160).to_rgb8();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .ok()?;
    Some(format!(
        "data:image/png;base64,{}",
        super::html::base64(&png)
    ))
}
