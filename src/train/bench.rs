//! Step-time benchmark: stage-1 and stage-2 optimizer steps on a named size, with random
//! weights and data, timed the way `scripts/bench_torch.py` times PyTorch on the same
//! sizes (`scripts/bench.sh` runs both and prints the ratio). Times are measured here,
//! never asserted in tests.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::optim::{AdamWConfig, Optimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Train;
use crate::backend::{host_memory, peak_rss_bytes, PeakAnon};
use crate::data::batch::LlavaBatch;
use crate::model::lora::LoraConfig;
use crate::model::nf4::Nf4Config;
use crate::model::phi::{Phi, PhiConfig};
use crate::model::projector::{Projector, ProjectorConfig};
use crate::train::grads;
use crate::train::recompute::{micro_step, micro_step_plain, Draws};

/// The sizes of one benchmark (a TOML file or flags; `scripts/bench_torch.py` reads the same
/// file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct BenchConfig {
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 0.4)]
    pub partial_rotary: f64,
    #[arg(long, default_value_t = 1024)]
    pub mlp: usize,
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    #[arg(long, default_value_t = 64)]
    pub image_tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub image_dim: usize,
    /// Text tokens after the image.
    #[arg(long, default_value_t = 64)]
    pub text_len: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub projector_depth: usize,
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// Stage 2's frozen base: NF4-packed (QLoRA) or dense f32 (plain LoRA). Set on the
    /// command line by `harness bench --nf4`, which also overrides a config file's value.
    #[arg(skip = true)]
    pub nf4: bool,
    /// Timed steps (after `warmup` untimed ones).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Stage 2: recompute each Phi layer in the backward instead of keeping its
    /// activations (`stage.activation_checkpointing`).
    #[arg(long)]
    pub activation_checkpointing: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            d_model: 256,
            layers: 4,
            heads: 8,
            partial_rotary: 0.4,
            mlp: 1024,
            vocab: 4096,
            image_tokens: 64,
            image_dim: 256,
            text_len: 64,
            batch: 8,
            projector_depth: 2,
            lora_rank: 16,
            nf4: true,
            steps: 10,
            warmup: 2,
            activation_checkpointing: false,
        }
    }
}

impl BenchConfig {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a benchmark config", path.display()))
    }

    fn phi(&self) -> PhiConfig {
        PhiConfig::new(
            self.vocab,
            self.d_model,
            self.mlp,
            self.layers,
            self.heads,
            self.heads,
        )
        .with_partial_rotary_factor(self.partial_rotary)
    }
}

/// Median and mean step time of one stage, and the process's peak memory after it.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub median_ms: f64,
    pub mean_ms: f64,
    pub tokens_per_s: f64,
    pub peak_rss_bytes: f64,
    /// The highest anonymous resident memory sampled during the steps (the process's
    /// working memory without mapped files), bytes.
    pub peak_anon_bytes: f64,
    /// Anonymous resident memory once the model is built, before the first step: the
    /// steps' own memory (activations, gradients, optimizer state) is the difference.
    pub model_anon_bytes: f64,
    /// GPU builds: bytes the device allocator has reserved (its high-water mark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_bytes: Option<f64>,
}

fn batch<B: Backend>(c: &BenchConfig, device: &B::Device) -> LlavaBatch<B> {
    let len = c.image_tokens + c.text_len;
    let mut ids = vec![0i64; c.batch * len];
    let mut labels = vec![-100i64; c.batch * len];
    for r in 0..c.batch {
        for t in c.image_tokens..len {
            let v = ((r * 7919 + t * 104_729) % c.vocab) as i64;
            ids[r * len + t] = v;
            labels[r * len + t] = v;
        }
    }
    let t =
        |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [c.batch, len]), device);
    LlavaBatch {
        input_ids: t(ids),
        labels: t(labels),
        attention_mask: t(vec![1; c.batch * len]),
        image_features: Tensor::random(
            [c.batch, c.image_tokens, c.image_dim],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        ),
        image_start: vec![Some(0); c.batch],
        ids: vec![String::new(); c.batch],
        lengths: vec![len; c.batch],
        target_tokens: c.batch * c.text_len,
    }
}

/// Times stage-1 steps: frozen LM, projector trained with AdamW and clipping.
pub fn stage1(c: &BenchConfig) -> StageTiming {
    let device = crate::backend::device(0);
    <Train as Backend>::seed(&device, 0);
    let lm: Phi<Train> = c.phi().init(&device).no_grad();
    let mut projector: Projector<Train> = ProjectorConfig::new(c.image_dim, c.d_model)
        .with_depth(c.projector_depth)
        .init(&device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.0)
        .init::<Train, Projector<Train>>();
    let b = batch::<Train>(c, &device);
    let model_anon = host_memory().anon as f64;
    let peak = PeakAnon::start();
    let mut times = vec![];
    for i in 0..c.warmup + c.steps {
        let t = Instant::now();
        let n = b.target_tokens as f64;
        let mut g =
            micro_step_plain(&projector, &lm, &b, n, false, i as u64, Draws::default()).projector;
        grads::clip_global_norm::<Train, _>(&projector, &mut g, 1.0);
        projector = optim.step(1e-4, projector, g);
        // Wait for the device: the step ends when its results exist.
        let _ = projector.input.weight.val().into_data();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        // Per step on stderr: on a GPU the first steps include kernel compilation.
        eprintln!("bench stage1 step {}: {ms:.1} ms", i + 1);
        if i >= c.warmup {
            times.push(ms);
        }
    }
    timing("stage1", c, times, model_anon, &peak)
}

/// Times stage-2 steps: LoRA on every Phi linear (NF4 base unless `nf4 = false`), the
/// projector and the adapters each with their own AdamW, one global clipping norm.
pub fn stage2(c: &BenchConfig) -> StageTiming {
    let device = crate::backend::device(0);
    <Train as Backend>::seed(&device, 0);
    let lora = LoraConfig {
        rank: c.lora_rank,
        alpha: 2.0 * c.lora_rank as f64,
        dropout: 0.0,
        quant: c.nf4.then(|| Nf4Config::default().with_double_quant(true)),
        ..LoraConfig::default()
    };
    let mut lm: Phi<Train> = c.phi().init_with(&device, &lora).freeze_base();
    let mut projector: Projector<Train> = ProjectorConfig::new(c.image_dim, c.d_model)
        .with_depth(c.projector_depth)
        .init(&device);
    let mut op = AdamWConfig::new().init::<Train, Projector<Train>>();
    let mut ol = AdamWConfig::new().init::<Train, Phi<Train>>();
    let b = batch::<Train>(c, &device);
    let model_anon = host_memory().anon as f64;
    let peak = PeakAnon::start();
    let mut times = vec![];
    for i in 0..c.warmup + c.steps {
        let t = Instant::now();
        let n = b.target_tokens as f64;
        let m = if c.activation_checkpointing {
            micro_step(&projector, &lm, &b, n, true, i as u64, Draws::default())
        } else {
            micro_step_plain(&projector, &lm, &b, n, true, i as u64, Draws::default())
        };
        let (mut gp, mut gl) = (m.projector, m.lm);
        let np = grads::global_norm::<Train, _>(&projector, &gp);
        let nl = grads::global_norm::<Train, _>(&lm, &gl);
        let norm = (np * np + nl * nl).sqrt();
        if norm > 1.0 {
            grads::scale::<Train, _>(&projector, &mut gp, 1.0 / (norm + 1e-6));
            grads::scale::<Train, _>(&lm, &mut gl, 1.0 / (norm + 1e-6));
        }
        projector = op.step(2e-5, projector, gp);
        lm = ol.step(2e-4, lm, gl);
        let _ = projector.input.weight.val().into_data();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        // Per step on stderr: on a GPU the first steps include kernel compilation.
        eprintln!("bench stage2 step {}: {ms:.1} ms", i + 1);
        if i >= c.warmup {
            times.push(ms);
        }
    }
    timing("stage2", c, times, model_anon, &peak)
}

fn timing(
    stage: &str,
    c: &BenchConfig,
    mut times: Vec<f64>,
    model_anon: f64,
    peak: &PeakAnon,
) -> StageTiming {
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    StageTiming {
        stage: stage.into(),
        median_ms: median,
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        tokens_per_s: (c.batch * (c.image_tokens + c.text_len)) as f64 / (median / 1e3),
        peak_rss_bytes: peak_rss_bytes(),
        peak_anon_bytes: peak.peak() as f64,
        model_anon_bytes: model_anon,
        peak_device_bytes: crate::backend::device_memory(&crate::backend::device(0))
            .map(|(_, reserved)| reserved as f64),
    }
}
