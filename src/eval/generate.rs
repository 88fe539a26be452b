//! Text generation from prompt embeddings (image features already spliced in), with the
//! KV cache: the prompt is run once, then every new token is one short forward pass.
//!
//! Decoding rules follow Hugging Face `generate`:
//! - greedy: argmax (first index on ties);
//! - sampling: logits / temperature, then top-p (keep the most probable tokens until their
//!   mass reaches `top_p`, at least one), then a draw from a seeded SplitMix64 stream per
//!   row ([`crate::rng::Rng::derive`]`(seed, stream)`: the row's index, or the
//!   image's index in [`super::infer`]), so a seed gives the same text on every run; `temperature <= 0` is greedy. No top-k filter is applied (HF's
//!   `generate` adds top_k = 50 by default; pass that difference on when comparing);
//! - beam search (one prompt at a time): `width` beams, the `2 * width` best continuations
//!   per step; a beam that emits eos among the top `width` is finished with score
//!   `sum log p / generated_len ^ length_penalty` (eos counted in the length); the search
//!   stops when `width` beams are finished and no running beam can beat the worst of them
//!   (HF's `early_stopping=False` heuristic) or at `max_new_tokens`, where running beams
//!   compete with the finished ones. Width 1 gives exactly the greedy tokens.
//!
//! Rows of one call share one prompt length (no padding: Phi numbers positions from 0 for
//! every row, so left padding would shift them); [`super::infer`] groups prompts by length.
//! Logits are pulled to the host once per step (`[rows, vocab]`), where the choice is made.

use burn::prelude::*;

use crate::model::phi::{KvCache, Phi};
use crate::rng::Rng;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoding {
    Greedy,
    Beam {
        width: usize,
        length_penalty: f64,
    },
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation of a row stops after this token (kept in the output).
    pub eos: Option<u32>,
    pub decoding: Decoding,
    /// `false` recomputes the whole sequence every step: slow, the reference the cached
    /// path is tested against.
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            eos: None,
            decoding: Decoding::Greedy,
            use_cache: true,
        }
    }
}

impl GenerateOptions {
    /// The generation settings of an experiment's `[eval]` (in-run evaluation and
    /// `caption`/`chat`): greedy unless `beams > 1`, stopping at `eos`.
    pub fn for_experiment(exp: &crate::config::Experiment, eos: Option<u32>) -> Self {
        GenerateOptions {
            max_new_tokens: exp.eval.max_new_tokens as usize,
            eos,
            decoding: if exp.eval.beams > 1 {
                Decoding::Beam {
                    width: exp.eval.beams as usize,
                    length_penalty: 1.0,
                }
            } else {
                Decoding::Greedy
            },
            use_cache: true,
        }
    }
}

/// One generated continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// New tokens (prompt excluded), ending with eos when it was produced.
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the model's raw distribution (before
    /// temperature and top-p).
    pub logprobs: Vec<f64>,
}

impl Generated {
    /// The tokens without the final eos.
    pub fn text_tokens(&self, eos: Option<u32>) -> &[u32] {
        match (self.tokens.last(), eos) {
            (Some(&t), Some(e)) if t == e => &self.tokens[..self.tokens.len() - 1],
            _ => &self.tokens,
        }
    }
}

/// Generates a continuation for every row of `prompts` (`[rows, tokens, d_lm]`).
/// Greedy and sampling run the rows as one batch; beam search runs them one by one.
pub fn generate<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    prompts: Tensor<B, 3>,
    opts: &GenerateOptions,
) -> Vec<Generated> {
    let streams: Vec<u64> = (0..prompts.dims()[0] as u64).collect();
    generate_streams(lm, prompts, opts, &streams)
}

/// [`generate`] where row `r` samples from random stream `streams[r]` (e.g. the image's
/// index in the whole evaluation set, so its sample does not depend on batching).
pub fn generate_streams<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    prompts: Tensor<B, 3>,
    opts: &GenerateOptions,
    streams: &[u64],
) -> Vec<Generated> {
    assert_eq!(
        streams.len(),
        prompts.dims()[0],
        "one random stream per row"
    );
    let rows = prompts.dims()[0];
    match opts.decoding {
        Decoding::Beam {
            width,
            length_penalty,
        } => (0..rows)
            .map(|r| {
                let [_, t, d] = prompts.dims();
                let p = prompts.clone().slice([r..r + 1, 0..t, 0..d]);
                beam_search(lm, p, width.max(1), length_penalty, opts)
            })
            .collect(),
        _ => batched(lm, prompts, opts, streams),
    }
}

/// The model state of a generation: the KV cache, or the whole sequence without it.
struct Stepper<'a, B: crate::model::lora::QLoraBackend> {
    lm: &'a Phi<B>,
    cache: Option<KvCache<B>>,
    seq: Tensor<B, 3>,
}

impl<'a, B: crate::model::lora::QLoraBackend> Stepper<'a, B> {
    /// Runs the prompt; returns the state and the last position's logits per row.
    fn start(lm: &'a Phi<B>, prompt: Tensor<B, 3>, use_cache: bool) -> (Self, Vec<Vec<f32>>) {
        let mut cache = use_cache.then(|| KvCache::new(lm.layers.len()));
        let logits = lm.forward_embeds(prompt.clone(), None, cache.as_mut());
        let s = Self {
            lm,
            cache,
            seq: prompt,
        };
        (s, last_logits(logits))
    }

    /// Appends one token per row; returns the new last logits per row.
    fn step(&mut self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let device = self.seq.device();
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [tokens.len(), 1]), &device);
        let new = self.lm.embed(ids);
        let logits = match self.cache.as_mut() {
            Some(c) => self.lm.forward_embeds(new, None, Some(c)),
            None => {
                self.seq = Tensor::cat(vec![self.seq.clone(), new], 1);
                self.lm.forward_embeds(self.seq.clone(), None, None)
            }
        };
        last_logits(logits)
    }

    /// Row `i` of the new state is row `rows[i]` of the old one (beam reordering).
    fn select_rows(&mut self, rows: &[usize]) {
        match self.cache.as_mut() {
            Some(c) => c.select_rows(rows),
            None => {
                let device = self.seq.device();
                let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                let idx =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
                self.seq = self.seq.clone().select(0, idx);
            }
        }
    }
}

/// `[rows, t, vocab]` -> the last position's logits per row, on the host in f32.
fn last_logits<B: crate::model::lora::QLoraBackend>(logits: Tensor<B, 3>) -> Vec<Vec<f32>> {
    let [b, t, v] = logits.dims();
    let flat = logits
        .slice([0..b, t - 1..t, 0..v])
        .reshape([b, v])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 logits");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

/// log-softmax in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Temperature then top-p, then one draw (HF's warper order).
fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> usize {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let scaled: Vec<f32> = logits
        .iter()
        .map(|&v| (v as f64 / temperature) as f32)
        .collect();
    let probs: Vec<f64> = log_softmax(&scaled).into_iter().map(f64::exp).collect();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable sort, descending: equal probabilities keep index order.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    // Keep a token while the mass ranked above it is below top_p (always the first).
    let mut kept = Vec::new();
    let mut above = 0.0;
    for &i in &order {
        if !kept.is_empty() && above >= top_p {
            break;
        }
        kept.push(i);
        above += probs[i];
    }
    let total: f64 = kept.iter().map(|&i| probs[i]).sum();
    let mut u = rng.unit() * total;
    for &i in &kept {
        u -= probs[i];
        if u < 0.0 {
            return i;
        }
    }
    *kept.last().expect("at least one token kept")
}

/// Greedy or sampling for all rows at once.
fn batched<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    prompts: Tensor<B, 3>,
    opts: &GenerateOptions,
    streams: &[u64],
) -> Vec<Generated> {
    let rows = prompts.dims()[0];
    let mut out = vec![
        Generated {
            tokens: vec![],
            logprobs: vec![]
        };
        rows
    ];
    if opts.max_new_tokens == 0 || rows == 0 {
        return out;
    }
    let mut rngs: Vec<Rng> = match opts.decoding {
        Decoding::Sample { seed, .. } => streams.iter().map(|&r| Rng::derive(seed, r)).collect(),
        _ => vec![],
    };
    let (mut state, mut logits) = Stepper::start(lm, prompts, opts.use_cache);
    let mut done = vec![false; rows];
    loop {
        let mut next = vec![0u32; rows];
        for r in 0..rows {
            if done[r] {
                // A finished row keeps running (one batch), on its eos; its output is ignored.
                next[r] = out[r].tokens.last().copied().unwrap_or(0);
                continue;
            }
            let tok = match opts.decoding {
                Decoding::Sample {
                    temperature, top_p, ..
                } => sample(&logits[r], temperature, top_p, &mut rngs[r]),
                _ => argmax(&logits[r]),
            };
            let lp = log_softmax(&logits[r])[tok];
            out[r].tokens.push(tok as u32);
            out[r].logprobs.push(lp);
            next[r] = tok as u32;
            if Some(tok as u32) == opts.eos || out[r].tokens.len() >= opts.max_new_tokens {
                done[r] = true;
            }
        }
        if done.iter().all(|&d| d) {
            return out;
        }
        logits = state.step(&next);
    }
}

#[derive(Clone, Debug)]
struct Beam {
    tokens: Vec<u32>,
    logprobs: Vec<f64>,
    sum: f64,
}

/// Beam search for one prompt `[1, tokens, d]`.
fn beam_search<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    prompt: Tensor<B, 3>,
    width: usize,
    length_penalty: f64,
    opts: &GenerateOptions,
) -> Generated {
    let norm = |sum: f64, len: usize| sum / (len as f64).powf(length_penalty);
    let mut running = vec![Beam {
        tokens: vec![],
        logprobs: vec![],
        sum: 0.0,
    }];
    // Finished beams with their normalised scores, best first, at most `width`.
    let mut finished: Vec<(f64, Beam)> = Vec::new();
    if opts.max_new_tokens == 0 {
        return Generated {
            tokens: vec![],
            logprobs: vec![],
        };
    }
    let (mut state, mut logits) = Stepper::start(lm, prompt, opts.use_cache);
    let mut search_done = false;
    for step in 0..opts.max_new_tokens {
        let len = step + 1;
        // The 2k best continuations over all beams: (score, beam, token, logprob).
        let mut cands: Vec<(f64, usize, usize, f64)> = Vec::new();
        for (i, beam) in running.iter().enumerate() {
            let lp = log_softmax(&logits[i]);
            let mut idx: Vec<usize> = (0..lp.len()).collect();
            let k = (2 * width).min(idx.len());
            idx.select_nth_unstable_by(k - 1, |&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
            cands.extend(idx[..k].iter().map(|&v| (beam.sum + lp[v], i, v, lp[v])));
        }
        cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        cands.truncate(2 * width);
        let mut next: Vec<Beam> = Vec::new();
        let mut parents = Vec::new();
        for (rank, &(score, i, v, lp)) in cands.iter().enumerate() {
            let mut b = running[i].clone();
            b.tokens.push(v as u32);
            b.logprobs.push(lp);
            b.sum = score;
            if Some(v as u32) == opts.eos {
                if rank < width {
                    finished.push((norm(score, len), b));
                }
            } else if next.len() < width {
                next.push(b);
                parents.push(i);
            }
        }
        finished.sort_by(|a, b| b.0.total_cmp(&a.0));
        finished.truncate(width);
        running = next;
        let last = step + 1 == opts.max_new_tokens;
        if finished.len() >= width {
            let worst = finished.last().map_or(f64::NEG_INFINITY, |f| f.0);
            let best_running = running
                .first()
                .map_or(f64::NEG_INFINITY, |b| norm(b.sum, len));
            if best_running <= worst {
                search_done = true;
            }
        }
        if search_done || last || running.is_empty() {
            break;
        }
        state.select_rows(&parents);
        let toks: Vec<u32> = running.iter().map(|b| *b.tokens.last().unwrap()).collect();
        logits = state.step(&toks);
    }
    if !search_done {
        for b in running {
            let s = norm(b.sum, b.tokens.len());
            finished.push((s, b));
        }
        finished.sort_by(|a, b| b.0.total_cmp(&a.0));
    }
    let best = finished.into_iter().next().map(|(_, b)| b).expect("a beam");
    Generated {
        tokens: best.tokens,
        logprobs: best.logprobs,
    }
}
