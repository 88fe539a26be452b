//! Step-time benchmark: stage-1 and stage-2 optimizer steps on a named size, with random
//! weights and data, timed the way `scripts/bench_torch.py` times PyTorch on the same
//! sizes (`scripts/bench.sh` runs both and prints the ratio). Times are measured here,
//! never asserted in tests.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Train;
use crate::backend::{host_memory, peak_rss_bytes, PeakAnon};
use crate::data::batch::{LlavaBatch, Targets};
use crate::model::lora::LoraConfig;
use crate::model::nf4::Nf4Config;
use crate::model::phi::{Phi, PhiConfig};
use crate::model::projector::{Projector, ProjectorConfig};
use crate::train::checkpoint::Trained;
use crate::train::parallel::{self, Accumulated};
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
    let targets = Targets::from_labels(&labels, c.batch, len);
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
        targets,
    }
}

/// Times stage-1 steps: frozen LM, projector trained with AdamW and clipping.
pub fn stage1(c: &BenchConfig) -> StageTiming {
    let device = crate::backend::device(0);
    <Train as Backend>::seed(&device, 0);
    let t = Trained {
        lm: c.phi().init(&device).no_grad(),
        projector: projector(c, &device),
        optim_projector: AdamWConfig::new().with_weight_decay(0.0).init(),
        optim_lm: None::<Optim<Phi<Train>>>,
    };
    steps("stage1", c, t, (1e-4, 0.0), &device)
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
    let t = Trained {
        lm: c.phi().init_with(&device, &lora).freeze_base(),
        projector: projector(c, &device),
        optim_projector: AdamWConfig::new().init(),
        optim_lm: Some(AdamWConfig::new().init()),
    };
    steps("stage2", c, t, (2e-5, 2e-4), &device)
}

type Optim<M> = OptimizerAdaptor<AdamW, M, Train>;

fn projector(c: &BenchConfig, device: &Device<Train>) -> Projector<Train> {
    ProjectorConfig::new(c.image_dim, c.d_model)
        .with_depth(c.projector_depth)
        .init(device)
}

/// Times the steps of one stage as the training loop takes them (one micro-batch a step):
/// the micro-step (per-layer recomputation when `activation_checkpointing`), then
/// [`parallel::apply`]'s one buffer, one host read, clipping at 1 and both optimizers.
fn steps(
    stage: &str,
    c: &BenchConfig,
    mut t: Trained<Optim<Projector<Train>>, Optim<Phi<Train>>>,
    lr: (f64, f64),
    device: &Device<Train>,
) -> StageTiming {
    let b = batch::<Train>(c, device);
    let train_lm = t.optim_lm.is_some();
    let model_anon = host_memory().anon as f64;
    let peak = PeakAnon::start();
    let mut times = vec![];
    for i in 0..c.warmup + c.steps {
        let start = Instant::now();
        let n = b.target_tokens() as f64;
        let micro_step = if c.activation_checkpointing && train_lm {
            micro_step
        } else {
            micro_step_plain
        };
        let m = micro_step(
            &t.projector,
            &t.lm,
            &b,
            n,
            train_lm,
            i as u64,
            Draws::default(),
        );
        let acc = Accumulated {
            projector: m.projector,
            lm: m.lm,
            loss_sum: m.loss_sum,
        };
        t = parallel::apply(0, 1, t, acc, n, 1.0, lr).0;
        // Wait for the device: the step ends when its results exist.
        let _ = t.projector.input.weight.val().into_data();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        // Per step on stderr: on a GPU the first steps include kernel compilation.
        eprintln!("bench {stage} step {}: {ms:.1} ms", i + 1);
        if i >= c.warmup {
            times.push(ms);
        }
    }
    timing(stage, c, times, model_anon, &peak)
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
