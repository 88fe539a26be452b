//! `harness caption --run RUN IMAGE...`: one caption per image, `path<TAB>caption`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::eval::Session;
use crate::store::Store;

/// Decoding flags shared by `caption` and `chat` (defaults: the run's `[eval]`).
#[derive(Args, Debug, Clone, Default)]
pub struct DecodeArgs {
    /// Load this stage's weights (default: stage 2 when completed, else stage 1).
    #[arg(long)]
    pub stage: Option<u8>,
    /// Most tokens generated per answer (default: the run's eval.max_new_tokens).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Beam width (default: the run's eval.beams; 1 = greedy).
    #[arg(long)]
    pub beams: Option<usize>,
    /// Sample with this temperature instead of greedy/beam decoding.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus mass kept when sampling.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampling draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodeArgs {
    /// Loads the run and applies the flags to its generation options.
    pub fn session(&self, results: &Path, run: &str) -> anyhow::Result<Session> {
        let mut s = Session::load_stage(&Store::new(results), run, self.stage)?;
        use crate::eval::Decoding;
        if let Some(n) = self.max_new_tokens {
            s.opts.max_new_tokens = n;
        }
        if let Some(k) = self.beams {
            s.opts.decoding = if k > 1 {
                Decoding::Beam {
                    width: k,
                    length_penalty: 1.0,
                }
            } else {
                Decoding::Greedy
            };
        }
        if let Some(t) = self.temperature {
            s.opts.decoding = Decoding::Sample {
                temperature: t,
                top_p: self.top_p,
                seed: self.seed,
            };
        }
        Ok(s)
    }
}

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// Run id, unique id prefix, or experiment name (its latest run).
    #[arg(long)]
    pub run: String,
    /// Image files (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Ask for the caption through the chat template with this instruction (e.g.
    /// "Describe the image.") instead of the stage-1 caption layout.
    #[arg(long)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

pub fn caption(results: &Path, a: CaptionArgs) -> anyhow::Result<()> {
    let s = a.decode.session(results, &a.run)?;
    eprintln!("run {} (stage {} weights)", s.run_id, s.stage);
    let out = match &a.prompt {
        Some(p) => s.caption_with_prompt(&a.images, p)?,
        None => s.caption(&a.images)?,
    };
    for (p, c) in a.images.iter().zip(out) {
        println!("{}\t{}", p.display(), one_line(&c));
    }
    Ok(())
}

/// Text on one line (newlines and tabs as spaces), for line-oriented output.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}
