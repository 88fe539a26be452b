//! Experiment files: one TOML file is one experiment.
//!
//! Parsing is strict (unknown keys and wrong types are errors naming the file, key and line),
//! every default is filled in before hashing, and the hashes are computed over a canonical
//! JSON form (keys sorted, floats in Rust's shortest round-trip form), so key order, comments,
//! whitespace and spelling out a default never change an experiment's identity. A stage's
//! key joins its config key with the code fingerprint ([`fingerprint`]): the code that
//! trains is part of what a stage is.

pub mod fingerprint;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One experiment, with every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Readable name; part of the run id, not of the config hash.
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    /// Replicas: one run per seed, named `<name>-s<seed>`, each a normal run with its own
    /// stage keys ([`replicas`]). Empty: one run with `seed`. Left out of the resolved form
    /// when empty, so experiments without it keep their hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Where to run: `auto` (CUDA when built with it, else CPU), `cpu`, `cuda`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Devices for data-parallel training, one worker thread each: GPU ordinals on CUDA
    /// builds; on the CPU only 0, repeated once per worker (`[0, 0]`). The global batch is
    /// `batch x grad_accum x len(devices)`.
    #[serde(default = "default_devices")]
    pub devices: Vec<usize>,
    pub model: ModelConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default = "StageConfig::stage1_default")]
    pub stage1: StageConfig,
    #[serde(default)]
    pub stage2: Stage2Config,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Vision tower: an HF CLIP checkpoint directory, or `builtin:NAME` for one of the
    /// tiny towers the harness trains itself.
    pub vision: String,
    /// HF `hidden_states` index of the features (negative counts from the end).
    #[serde(default = "default_feature_layer")]
    pub feature_layer: i64,
    #[serde(default)]
    pub feature_select: FeatureSelect,
    /// `crop` (CLIP's resize + center crop) or `pad` (LLaVA's pad to square with the mean).
    #[serde(default)]
    pub image_aspect: ImageAspect,
    #[serde(default)]
    pub projector: ProjectorKind,
    /// Residual blocks after the first linear layer (`residual` projector only).
    #[serde(default)]
    pub projector_depth: i64,
    /// Language model: an HF Phi checkpoint directory, or `builtin:NAME`.
    pub lm: String,
    /// Compute dtype: `auto` is f32 on CPU and bf16 on GPU.
    #[serde(default)]
    pub dtype: DType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelect {
    /// Patch tokens only (CLS dropped), as LLaVA does.
    #[default]
    Patch,
    /// CLS followed by the patch tokens.
    ClsPatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageAspect {
    #[default]
    Crop,
    Pad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorKind {
    /// `Linear(d_vision -> d_lm)` then `depth` blocks `x + W2(gelu(W1(LN(x))))`.
    #[default]
    Residual,
    /// LLaVA-1.5's `Linear, GELU, Linear`.
    Mlp2xGelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// COCO 2017 root: `annotations/captions_{train,val}2017.json`, `train2017/`, `val2017/`.
    pub coco_root: String,
    /// Stage-2 conversations in LLaVA's format: llava_instruct_150k.json,
    /// llava_v1_5_mix665k.json, ... Their `image` names are relative to `image_folder`.
    pub instruct_json: String,
    /// The folder `instruct_json`'s image names are relative to (LLaVA's `image_folder`);
    /// empty: `coco_root/train2017` (Instruct150K). For mix665k, the folder holding
    /// `coco/`, `gqa/`, `ocr_vqa/`, `textvqa/` and `vg/`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_folder: String,
    /// Use at most this many caption pairs / conversations (0 = all).
    pub stage1_limit: u64,
    pub stage2_limit: u64,
    /// Conversations held out of stage-2 training for validation (and QA scoring).
    pub stage2_val: u64,
    /// Optional Instruct-format file of validation conversations on `coco_root/val2017`
    /// images (the synthetic world writes one). When set, stage 2 validates and scores QA on
    /// its first `stage2_val` conversations, on images no stage trained on, and trains on
    /// all of `instruct_json`; when empty, the last `stage2_val` of `instruct_json` are
    /// held out (their images are COCO train images, seen by stage 1's captions).
    pub instruct_val_json: String,
    /// Validation images (from val2017) for stage-1 validation loss and captioning.
    pub val_images: u64,
    /// Sequences longer than this (image tokens included) are truncated, and counted.
    pub max_len: u64,
    /// Conversation template for stage 2: one of [`TEMPLATES`].
    pub template: String,
    /// Batches pad their sequences up to a multiple of this many tokens, so a run sees a
    /// handful of shapes (a GPU backend compiles its kernels per shape); 0 = the backend's
    /// choice ([`DataConfig::pad_multiple`]: 64 on a GPU, 8 on the CPU, where every padded
    /// token costs time). Padded positions are masked and carry no label: no loss or
    /// gradient changes, so stage keys leave it out.
    #[serde(skip_serializing_if = "is_zero")]
    pub pad_to_multiple: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl DataConfig {
    /// The multiple batches pad to: `pad_to_multiple`, or the backend's default.
    pub fn pad_multiple(&self) -> usize {
        match self.pad_to_multiple {
            0 if cfg!(feature = "cuda") => 64,
            0 => 8,
            n => n as usize,
        }
    }
}

/// The conversation templates `data.template` can name (their text is
/// `data::sequence::ChatTemplate::named`): `phi` (the default), `llava_v1` (LLaVA-1.5's
/// Vicuna v1 system prompt).
pub const TEMPLATES: [&str; 2] = ["phi", "llava_v1"];

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            coco_root: "data/coco".into(),
            instruct_json: "data/llava_instruct_150k.json".into(),
            image_folder: String::new(),
            stage1_limit: 0,
            stage2_limit: 0,
            stage2_val: 500,
            instruct_val_json: String::new(),
            val_images: 500,
            max_len: 512,
            template: "phi".into(),
            pad_to_multiple: 0,
        }
    }
}

/// Optimisation settings shared by both stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageConfig {
    /// Passes over the data; ignored when `max_steps` is set.
    pub epochs: f64,
    /// Optimizer steps; overrides `epochs` when > 0.
    pub max_steps: u64,
    /// Sequences per micro-batch on each device.
    pub batch: u64,
    /// Micro-batches per optimizer step (global batch = batch x grad_accum x devices).
    pub grad_accum: u64,
    pub lr: f64,
    /// Warmup as a fraction of the total steps.
    pub warmup: f64,
    pub schedule: Schedule,
    /// The cosine/linear schedule decays to `lr x min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global-norm gradient clipping (0 = off).
    pub clip_grad_norm: f64,
    /// Validation every N optimizer steps (0 = only at the end).
    pub eval_every: u64,
    /// Checkpoint every N optimizer steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept (the final one is always kept).
    pub keep_checkpoints: u64,
    /// Batches of similar lengths (HF/LLaVA `group_by_length`: megabatches of 50 batches
    /// sorted by length, the batches shuffled), so less padding; seeded like the plain order.
    pub group_by_length: bool,
    /// Keep only each LM layer's input in the forward pass and recompute the layer in the
    /// backward (activation checkpointing per layer): about a third more compute for the
    /// activations of one layer instead of all. Gradients are the same.
    pub activation_checkpointing: bool,
}

impl StageConfig {
    /// Sequences per optimizer step with `workers` data-parallel workers.
    pub fn global_batch(&self, workers: usize) -> u64 {
        self.batch * self.grad_accum * workers as u64
    }

    /// LLaVA-1.5 pretraining: lr 1e-3, warmup 3% then cosine, no weight decay.
    fn stage1_default() -> Self {
        StageConfig {
            epochs: 1.0,
            max_steps: 0,
            batch: 32,
            grad_accum: 8,
            lr: 1e-3,
            warmup: 0.03,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_grad_norm: 1.0,
            eval_every: 0,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            group_by_length: true,
            activation_checkpointing: false,
        }
    }
}

impl Default for StageConfig {
    fn default() -> Self {
        Self::stage1_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage2Config {
    #[serde(flatten)]
    pub opt: StageConfig,
    /// Learning rate of the projector (the adapters use `lr`).
    pub projector_lr: f64,
    pub lora_rank: i64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    /// `nf4` (QLoRA) or `none` (plain LoRA on a full-precision base).
    pub quant: Quant,
    /// Quantize the NF4 block scales to 8 bits (block 256), as QLoRA does.
    pub double_quant: bool,
}

impl Default for Stage2Config {
    fn default() -> Self {
        Stage2Config {
            opt: StageConfig {
                lr: 2e-4,
                batch: 16,
                grad_accum: 8,
                ..StageConfig::stage1_default()
            },
            projector_lr: 2e-5,
            lora_rank: 64,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            lora_targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            quant: Quant::Nf4,
            double_quant: true,
        }
    }
}

/// The Phi-2 linear layers LoRA may adapt.
pub const LORA_TARGETS: [&str; 6] = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    #[default]
    Nf4,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Val images captioned and scored after stage 1.
    pub caption_images: u64,
    /// Held-out conversations answered and scored after stage 2.
    pub qa_samples: u64,
    pub max_new_tokens: u64,
    /// Beam width (1 = greedy).
    pub beams: u64,
    /// Samples shown in the report gallery.
    pub gallery: u64,
    /// Benchmarks run at the end of the run, after stage 2's own evaluation
    /// (`[[eval.bench]]`; `eval::bench::run`). Left out of the config hash when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bench: Vec<BenchConfig>,
}

/// The benchmarks `[[eval.bench]]` can name (`eval::bench::Task`).
pub const BENCH_TASKS: [&str; 6] = ["pope", "textvqa", "vqav2", "gqa", "scienceqa", "mme"];

/// One benchmark a run evaluates after stage 2 (`[[eval.bench]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// One of [`BENCH_TASKS`].
    pub task: String,
    /// The benchmark's folder in LLaVA's eval layout (what it holds per task:
    /// `eval::bench::layout`).
    pub data: String,
    /// Questions evaluated, spread evenly over the question file (0 = all).
    #[serde(default)]
    pub limit: u64,
    /// Prompts generated together.
    #[serde(default = "default_bench_batch")]
    pub batch: u64,
}

fn default_bench_batch() -> u64 {
    8
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            caption_images: 100,
            qa_samples: 200,
            max_new_tokens: 32,
            beams: 1,
            gallery: 8,
            bench: Vec::new(),
        }
    }
}

fn default_devices() -> Vec<usize> {
    vec![0]
}
fn default_feature_layer() -> i64 {
    -2
}

/// An experiment as loaded from its file, with the file's text kept for error locations.
#[derive(Debug, Clone)]
pub struct LoadedExperiment {
    pub path: PathBuf,
    pub exp: Experiment,
    /// The seed when this is one replica of the file's experiment (`seeds = [..]`,
    /// `sweep --seeds N`, `run --seed S`): `harness run FILE --seed S` runs it again.
    pub replica: Option<u64>,
}

/// Reads, parses and validates one experiment file.
pub fn load(path: &Path) -> Result<LoadedExperiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read experiment file {}", path.display()))?;
    let exp = parse(&text, &path.display().to_string())?;
    let problems = validate(&exp, &text);
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("  {}: {}", path.display(), p))
            .collect();
        return Err(anyhow!(
            "{} is not a valid experiment:\n{}",
            path.display(),
            list.join("\n")
        ));
    }
    Ok(LoadedExperiment {
        path: path.to_path_buf(),
        exp,
        replica: None,
    })
}

/// Parses experiment TOML; `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<Experiment> {
    // Checked before serde so the error points at the key, not at its table.
    let written = stage2_keys_written(text, origin)?;
    let mut exp = toml::from_str::<Experiment>(text).map_err(|e| {
        let line = e.span().map(|s| line_of_offset(text, s.start));
        let msg = e.message().trim_end().to_string();
        match line {
            Some(l) => anyhow!("{origin}:{l}: {msg}\n{}", excerpt(text, l)),
            None => anyhow!("{origin}: {msg}"),
        }
    })?;
    if let Some(written) = written {
        exp.stage2 = with_stage2_defaults(&exp.stage2, &written);
    }
    Ok(exp)
}

/// serde cannot deny unknown keys through `flatten`, and fills a flattened struct's missing
/// fields from that struct's own defaults (stage 1's), so `[stage2]` is handled here: its
/// keys are checked against the resolved form, and the ones not written are set to stage
/// 2's defaults. Returns the keys written, or `None` without a `[stage2]` table.
fn stage2_keys_written(text: &str, origin: &str) -> Result<Option<Vec<String>>> {
    // Syntax errors are left to the typed parse, which reports them with their line.
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Ok(None);
    };
    let Some(toml::Value::Table(s2)) = table.get("stage2") else {
        return Ok(None);
    };
    let known = serde_json::to_value(Stage2Config::default()).expect("json");
    for key in s2.keys() {
        if known.get(key).is_none() {
            let dotted = format!("stage2.{key}");
            let at = key_line(text, &dotted)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            let mut names: Vec<_> = known.as_object().unwrap().keys().cloned().collect();
            names.sort();
            return Err(anyhow!(
                "{origin}{at}: unknown field `{key}` in [stage2], expected one of {}",
                names.join(", ")
            ));
        }
    }
    Ok(Some(s2.keys().cloned().collect()))
}

fn with_stage2_defaults(parsed: &Stage2Config, written: &[String]) -> Stage2Config {
    let mut v = serde_json::to_value(parsed).expect("json");
    let d = serde_json::to_value(Stage2Config::default()).expect("json");
    for (k, default) in d.as_object().unwrap() {
        if !written.contains(k) {
            v[k] = default.clone();
        }
    }
    serde_json::from_value(v).expect("stage 2 config round-trips through JSON")
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn excerpt(text: &str, line: usize) -> String {
    format!("  {line} | {}", text.lines().nth(line - 1).unwrap_or(""))
}

/// One semantic problem: the dotted key, its line when written in the file, what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: `{}` {}", self.key, self.message),
            None => write!(f, "`{}` {}", self.key, self.message),
        }
    }
}

/// Semantic checks that do not touch the file system; all problems are reported at once.
// `!(x > 0.0)` on purpose: NaN must fail these checks too.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn validate(exp: &Experiment, text: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| {
        out.push(Problem {
            key: key.into(),
            line: key_line(text, key),
            message,
        })
    };
    if exp.name.trim().is_empty() {
        bad("name", "must not be empty".into());
    }
    if !exp
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bad(
            "name",
            format!(
                "{:?} may use only letters, digits, '-', '_' and '.'",
                exp.name
            ),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &exp.seeds {
        if !seen.insert(s) {
            bad("seeds", format!("lists seed {s} twice"));
        }
    }
    if !exp.seeds.is_empty() && key_line(text, "seed").is_some() {
        bad(
            "seed",
            "is set beside `seeds`; a seed list replaces it, so write one of them".into(),
        );
    }
    if exp.devices.is_empty() {
        bad("devices", "must list at least one device".into());
    }
    let m = &exp.model;
    if m.projector_depth < 0 {
        bad(
            "model.projector_depth",
            format!("must be >= 0, got {}", m.projector_depth),
        );
    }
    if m.projector == ProjectorKind::Mlp2xGelu && m.projector_depth != 0 {
        bad(
            "model.projector_depth",
            "applies to the `residual` projector only".into(),
        );
    }
    if m.feature_layer == 0 {
        // hidden_states[0] is the embedding output; allowed, but a typo for -1/-2 is likelier.
    }
    for (key, v) in [("model.vision", &m.vision), ("model.lm", &m.lm)] {
        if v.trim().is_empty() {
            bad(
                key,
                "must name a checkpoint directory or builtin:NAME".into(),
            );
        }
    }
    if exp.data.max_len < 2 {
        bad(
            "data.max_len",
            format!("must be >= 2, got {}", exp.data.max_len),
        );
    }
    if exp.data.pad_to_multiple > exp.data.max_len {
        bad(
            "data.pad_to_multiple",
            format!(
                "must be <= data.max_len ({}), got {}",
                exp.data.max_len, exp.data.pad_to_multiple
            ),
        );
    }
    if !TEMPLATES.contains(&exp.data.template.as_str()) {
        bad(
            "data.template",
            format!(
                "unknown template {:?} ({})",
                exp.data.template,
                TEMPLATES.join(", ")
            ),
        );
    }
    for (prefix, s) in [("stage1", &exp.stage1), ("stage2", &exp.stage2.opt)] {
        check_stage(prefix, s, &mut bad);
    }
    let s2 = &exp.stage2;
    if s2.lora_rank <= 0 {
        bad(
            "stage2.lora_rank",
            format!("must be > 0, got {}", s2.lora_rank),
        );
    }
    if !(s2.lora_alpha > 0.0) {
        bad(
            "stage2.lora_alpha",
            format!("must be > 0, got {}", s2.lora_alpha),
        );
    }
    if !(0.0..1.0).contains(&s2.lora_dropout) {
        bad(
            "stage2.lora_dropout",
            format!("must be in [0, 1), got {}", s2.lora_dropout),
        );
    }
    if !(s2.projector_lr >= 0.0) {
        bad(
            "stage2.projector_lr",
            format!("must be >= 0, got {}", s2.projector_lr),
        );
    }
    if s2.lora_targets.is_empty() {
        bad("stage2.lora_targets", "must name at least one layer".into());
    }
    for t in &s2.lora_targets {
        if !LORA_TARGETS.contains(&t.as_str()) {
            bad(
                "stage2.lora_targets",
                format!("unknown target {t:?} (one of {LORA_TARGETS:?})"),
            );
        }
    }
    if exp.eval.beams == 0 {
        bad("eval.beams", "must be >= 1".into());
    }
    out.extend(validate_bench(&exp.eval.bench, text));
    out
}

/// `[[eval.bench]]` entries: known tasks, each once (answers go to `bench/<task>/`), a
/// data folder, a batch of at least one.
fn validate_bench(bench: &[BenchConfig], text: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, b) in bench.iter().enumerate() {
        let mut bad = |field: &str, message: String| {
            out.push(Problem {
                key: format!("eval.bench[{i}].{field}"),
                line: array_key_line(text, "eval.bench", i, field),
                message,
            })
        };
        if !BENCH_TASKS.contains(&b.task.as_str()) {
            bad(
                "task",
                format!(
                    "unknown benchmark {:?} (one of {})",
                    b.task,
                    BENCH_TASKS.join(", ")
                ),
            );
        } else if let Some(first) = bench[..i].iter().position(|o| o.task == b.task) {
            bad(
                "task",
                format!(
                    "{:?} is already benchmarked by eval.bench[{first}] (each task once: its answers go to bench/{}/)",
                    b.task, b.task
                ),
            );
        }
        if b.data.trim().is_empty() {
            bad("data", "must name the benchmark's folder".into());
        }
        if b.batch == 0 {
            bad("batch", "must be >= 1".into());
        }
    }
    out
}

#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn check_stage(prefix: &str, s: &StageConfig, bad: &mut impl FnMut(&str, String)) {
    let k = |f: &str| format!("{prefix}.{f}");
    if s.max_steps == 0 && !(s.epochs > 0.0) {
        bad(
            &k("epochs"),
            format!("must be > 0 when max_steps is 0, got {}", s.epochs),
        );
    }
    if s.batch == 0 {
        bad(&k("batch"), "must be >= 1".into());
    }
    if s.grad_accum == 0 {
        bad(&k("grad_accum"), "must be >= 1".into());
    }
    if !(s.lr > 0.0) {
        bad(&k("lr"), format!("must be > 0, got {}", s.lr));
    }
    if !(0.0..1.0).contains(&s.warmup) {
        bad(
            &k("warmup"),
            format!("is a fraction of the steps in [0, 1), got {}", s.warmup),
        );
    }
    if !(0.0..=1.0).contains(&s.min_lr_ratio) {
        bad(
            &k("min_lr_ratio"),
            format!("must be in [0, 1], got {}", s.min_lr_ratio),
        );
    }
    if !(s.weight_decay >= 0.0) {
        bad(
            &k("weight_decay"),
            format!("must be >= 0, got {}", s.weight_decay),
        );
    }
    for (f, v) in [("beta1", s.beta1), ("beta2", s.beta2)] {
        if !(0.0..1.0).contains(&v) {
            bad(&k(f), format!("must be in [0, 1), got {v}"));
        }
    }
    if !(s.eps > 0.0) {
        bad(&k("eps"), format!("must be > 0, got {}", s.eps));
    }
    if !(s.clip_grad_norm >= 0.0) {
        bad(
            &k("clip_grad_norm"),
            format!("must be >= 0, got {}", s.clip_grad_norm),
        );
    }
    if s.keep_checkpoints == 0 {
        bad(&k("keep_checkpoints"), "must be >= 1".into());
    }
}

/// The line a dotted key (`section.key` or `key`) is written on, if it is written.
pub fn key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = match dotted.rsplit_once('.') {
        Some((s, k)) => (s, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            // `[table]` and `[[array of tables]]` alike.
            current = line
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string();
            continue;
        }
        let Some((lhs, _)) = line.split_once('=') else {
            continue;
        };
        let lhs = lhs.trim().trim_matches('"');
        let full = if current.is_empty() {
            lhs.to_string()
        } else {
            format!("{current}.{lhs}")
        };
        if full == dotted || (current == section && lhs == key) {
            return Some(i + 1);
        }
    }
    None
}

/// The line of `key` in the `index`-th (0-based) `[[table]]` entry, or of that entry's
/// header when the key is not written there.
pub fn array_key_line(text: &str, table: &str, index: usize, key: &str) -> Option<usize> {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut inside: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            if let Some(h) = inside {
                return Some(h);
            }
            if line.replace(' ', "") == header {
                if seen == index {
                    inside = Some(i + 1);
                }
                seen += 1;
            }
            continue;
        }
        if inside.is_some() {
            if let Some((lhs, _)) = line.split_once('=') {
                if lhs.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    inside
}

/// Paths that must exist when the experiment runs, all checked at once.
pub fn check_paths(exp: &Experiment, stages: &[u8]) -> Vec<String> {
    let mut missing = Vec::new();
    let mut need = |key: &str, p: &str| {
        if !p.starts_with("builtin:") && !Path::new(p).exists() {
            missing.push(format!("`{key}` = {p:?} does not exist"));
        }
    };
    need("model.vision", &exp.model.vision);
    need("model.lm", &exp.model.lm);
    if stages.contains(&1) {
        need("data.coco_root", &exp.data.coco_root);
    }
    if stages.contains(&2) {
        need("data.instruct_json", &exp.data.instruct_json);
        if !exp.data.instruct_val_json.is_empty() {
            need("data.instruct_val_json", &exp.data.instruct_val_json);
        }
        if !exp.data.image_folder.is_empty() {
            need("data.image_folder", &exp.data.image_folder);
        }
        // Benchmarks run after stage 2; a missing folder is better found before training.
        for (i, b) in exp.eval.bench.iter().enumerate() {
            need(&format!("eval.bench[{i}].data"), &b.data);
        }
    }
    missing
}

// ---------------------------------------------------------------------------------------
// Identity

/// The resolved experiment as canonical JSON: keys sorted (serde_json's map is ordered),
/// floats in their shortest round-trip form, defaults present.
pub fn canonical(exp: &Experiment) -> Value {
    let mut v = serde_json::to_value(exp).expect("experiment serializes");
    // A builtin backbone is its recipe: a changed recipe must not reuse stages of the old.
    for key in ["vision", "lm"] {
        let spec = &mut v["model"][key];
        if let Some(k) = spec.as_str().and_then(crate::backbones::spec_key) {
            *spec = Value::String(format!("{}@{k}", spec.as_str().unwrap_or_default()));
        }
    }
    v
}

/// sha256 of a JSON value's compact canonical text, as hex.
pub fn hash_value(v: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(v).expect("json")))
}

/// Stage keys. Each stage has a config key, the hash of what it reads from the experiment
/// (stage 1's: everything stage 1 reads; stage 2's: stage 1's config key plus the stage-2
/// inputs), and a key, which joins the config key with the code fingerprint
/// ([`stage_code_key`]): the key under which a completed stage is stored and reused. Names,
/// backends and eval settings do not change what a stage learns, so they are left out: runs
/// that differ only there share their stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageKeys {
    /// Stage 1's key: its config key and the code.
    pub stage1: String,
    /// Stage 2's key: its config key, the code, and stage 1's key.
    pub stage2: String,
    /// Stage 1's config key, whatever the code (`--reuse config`).
    pub stage1_config: String,
    /// Stage 2's config key (it covers stage 1's), whatever the code.
    pub stage2_config: String,
    /// The code fingerprint in `stage1` and `stage2`.
    pub code: String,
    /// The whole resolved config except the name: identifies the run.
    pub config: String,
}

impl StageKeys {
    /// Stage `n`'s (1 or 2) key and config key.
    pub fn of(&self, n: u8) -> (&str, &str) {
        if n == 1 {
            (&self.stage1, &self.stage1_config)
        } else {
            (&self.stage2, &self.stage2_config)
        }
    }
}

/// The keys of an experiment's stages as trained by this binary's code.
pub fn stage_keys(exp: &Experiment) -> StageKeys {
    stage_keys_for(exp, fingerprint::FINGERPRINT)
}

/// The keys of an experiment's stages as trained by the code with fingerprint `code`.
pub fn stage_keys_for(exp: &Experiment, code: &str) -> StageKeys {
    let v = canonical(exp);
    let d = &v["data"];
    let mut s1 = BTreeMap::new();
    s1.insert("seed", v["seed"].clone());
    s1.insert("model", v["model"].clone());
    s1.insert("stage1", v["stage1"].clone());
    s1.insert(
        "data",
        serde_json::json!({
            "coco_root": d["coco_root"], "stage1_limit": d["stage1_limit"],
            "val_images": d["val_images"], "max_len": d["max_len"],
        }),
    );
    // Workers change the global batch (batch x grad_accum x workers), so what a stage
    // learns; which devices they run on does not. Only when several, so single-device
    // keys stay what they were.
    let workers = exp.devices.len();
    if workers > 1 {
        s1.insert("workers", workers.into());
    }
    let h1 = hash_value(&serde_json::to_value(&s1).unwrap());
    let mut s2 = serde_json::json!({
        "stage1_key": h1,
        "stage2": v["stage2"],
        "data": {
            "instruct_json": d["instruct_json"], "stage2_limit": d["stage2_limit"],
            "stage2_val": d["stage2_val"], "instruct_val_json": d["instruct_val_json"],
            "max_len": d["max_len"], "template": d["template"],
            "coco_root": d["coco_root"],
        },
    });
    if workers > 1 {
        s2["workers"] = workers.into();
    }
    // Only when set, so the keys of experiments without it stay what they were.
    if let Some(f) = d.get("image_folder") {
        s2["data"]["image_folder"] = f.clone();
    }
    let h2 = hash_value(&s2);
    let mut all = v.clone();
    if let Value::Object(m) = &mut all {
        m.remove("name");
    }
    let k1 = stage_code_key(&h1, code, None);
    StageKeys {
        stage2: stage_code_key(&h2, code, Some(&k1)),
        stage1: k1,
        stage1_config: h1,
        stage2_config: h2,
        code: code.to_string(),
        config: hash_value(&all),
    }
}

/// A stage's key: sha256 of its config key, the code fingerprint and, for stage 2, the key
/// of the stage-1 result it starts from (normally stage 1's key under the same code; the
/// key of another code's result when stage 1 was reused across a code change, so such a
/// stage 2 never passes for one trained wholly by this code).
pub fn stage_code_key(config_key: &str, code: &str, stage1: Option<&str>) -> String {
    hash_value(&serde_json::json!({ "config": config_key, "code": code, "stage1": stage1 }))
}

/// `<name>-s<seed>`: the name of the replica of `name` with `seed`.
pub fn replica_name(name: &str, seed: u64) -> String {
    format!("{name}-s{seed}")
}

/// The name a replica was made from: `name` without its `-s<seed>` suffix (unchanged when
/// it has none).
pub fn base_name(name: &str, seed: u64) -> &str {
    name.strip_suffix(&format!("-s{seed}")).unwrap_or(name)
}

/// The replica of `exp` with `seed`: that seed, no seed list, the name suffixed.
pub fn replica(exp: &Experiment, seed: u64) -> Experiment {
    Experiment {
        name: replica_name(&exp.name, seed),
        seed,
        seeds: vec![],
        ..exp.clone()
    }
}

/// The experiments `exp` stands for: itself, or one [`replica`] per seed of `seeds`.
pub fn replicas(exp: &Experiment) -> Vec<Experiment> {
    if exp.seeds.is_empty() {
        return vec![exp.clone()];
    }
    exp.seeds.iter().map(|&s| replica(exp, s)).collect()
}

/// What runs that differ only in their seed share: the hash of the resolved config without
/// name, seed and seed list. (Whether they also ran the same code is the store's business:
/// [`crate::store::groups`].)
pub fn group_key(exp: &Experiment) -> String {
    let mut v = canonical(exp);
    if let Value::Object(m) = &mut v {
        for k in ["name", "seed", "seeds"] {
            m.remove(k);
        }
    }
    hash_value(&v)
}

/// The resolved experiment as TOML (written to `run.toml`).
/// The resolved experiment as TOML, headed by a comment that spells out each stage's global
/// batch.
pub fn to_toml(exp: &Experiment) -> String {
    let n = exp.devices.len();
    let line = |name: &str, o: &StageConfig| {
        format!(
            "# {name}: global batch {} = batch {} x grad_accum {} x {n} device(s)\n",
            o.global_batch(n),
            o.batch,
            o.grad_accum
        )
    };
    let head = line("stage1", &exp.stage1) + &line("stage2", &exp.stage2.opt);
    head + &toml::to_string_pretty(exp).expect("experiment serializes to TOML")
}

/// Dotted keys whose values differ between two experiments, with both values rendered.
pub fn diff(a: &Experiment, b: &Experiment) -> Vec<(String, String, String)> {
    let mut fa = BTreeMap::new();
    let mut fb = BTreeMap::new();
    flatten("", &canonical(a), &mut fa);
    flatten("", &canonical(b), &mut fb);
    let keys: std::collections::BTreeSet<_> = fa.keys().chain(fb.keys()).cloned().collect();
    let mut out = Vec::new();
    for k in keys {
        let va = fa.get(&k).cloned().unwrap_or_else(|| "-".into());
        let vb = fb.get(&k).cloned().unwrap_or_else(|| "-".into());
        if va != vb {
            out.push((k, va, vb));
        }
    }
    out
}

/// Flattens nested JSON objects into dotted keys with rendered values.
pub fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        other => {
            let mut s = String::new();
            let _ = write!(s, "{other}");
            out.insert(prefix.to_string(), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name = \"t\"\n[model]\nvision = \"v\"\nlm = \"l\"\n";

    #[test]
    fn key_line_finds_sections() {
        let t = "name = \"x\"\n[stage2]\n# c\nlora_rank = 0\n";
        assert_eq!(key_line(t, "stage2.lora_rank"), Some(4));
        assert_eq!(key_line(t, "name"), Some(1));
        assert_eq!(key_line(t, "stage1.lr"), None);
    }

    #[test]
    fn defaults_resolve() {
        let e = parse(MIN, "x").unwrap();
        assert_eq!(e.model.feature_layer, -2);
        assert_eq!(e.stage2.lora_targets.len(), 6);
        assert!(validate(&e, MIN).is_empty());
    }
}
