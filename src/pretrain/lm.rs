//! `harness pretrain lm`: a tiny Phi trained from scratch on a synthetic world's text, saved
//! as an HF `PhiForCausalLM` folder that the stages load like microsoft/phi-2.
//!
//! The LM must learn to read a scene description in its context: in stages 1/2 the image's
//! projected features sit at the `<image>` slot and the frozen LM answers from them. So
//! every document puts the image's captions where the image goes (`ctx`: its 5 captions,
//! shuffled, joined by a space). A document is drawn from a training conversation and the
//! captions of its image:
//! - p 0.25: `{ctx}\n{one caption}<|endoftext|>`;
//! - p 0.10: `{one caption}<|endoftext|>`;
//! - else the conversation through the `phi` chat template with `ctx` at the image slot:
//!   `USER: {ctx}\n{Q1} ASSISTANT: {A1}<|endoftext|>USER: {Q2} ASSISTANT: {A2}<|endoftext|>`.
//!
//! Documents are tokenized in the pieces [`crate::data::sequence::SequenceBuilder`] uses
//! (text before the image slot, the slot, the question, each answer), so the tokens around
//! `ctx` are exactly those around the image in stage 2 (reference recipe: exp_tmp/pre.py,
//! text-context QA 0.71 at d 128 / 4 layers / 3000 steps). Every token is learned.
//!
//! Tokenizer: byte-level BPE trained on the training captions and conversations,
//! `<|endoftext|>` special with id 0 (bos = eos = pad). Model: [`PhiConfig::init_hf`].
//! Loop: AdamW, linear warmup then cosine to 0, global-norm clipping, right padding with
//! an attention mask, [`summed_loss_at`] (the head only at real tokens), optionally on
//! several data-parallel workers (`workers`, [`parallel::with_peers`]). Evaluation: the
//! first question of every val conversation with its image's captions (file order) as
//! `ctx`, greedy, 5 new tokens, [`qa_exact_match`] per question type.
//!
//! Written to a temporary sibling folder, renamed onto `out` at the end: `config.json`,
//! `model.safetensors`, `tokenizer.json`, `generation_config.json`, `pretrain.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use serde_json::json;

use crate::backbones::LmPretrainOptions;
use crate::backend::{Compute, Train};
use crate::data::coco::load_captions;
use crate::data::images::ImageRoot;
use crate::data::instruct::{load_instruct, Conversation};
use crate::data::sequence::{ChatTemplate, TextCodec, IGNORE};
use crate::eval::generate::{generate, Decoding, GenerateOptions};
use crate::eval::infer::{decode, PromptLayout};
use crate::eval::qa::{qa_exact_match, QaAccuracy};
use crate::model::phi::{Phi, PhiConfig};
use crate::model::tokenizer::Tokenizer;
use crate::model::Activation;
use crate::rng::Rng;
use crate::train::grads;
use crate::train::loss::{summed_loss_at, Targets};
use crate::train::schedule::LrSchedule;
use crate::train::{parallel, Device};

/// The end of every document; a special token with id 0.
pub const EOS: &str = "<|endoftext|>";

impl LmPretrainOptions {
    /// The Phi config for a tokenizer of `vocab_size` tokens (ids 0 special).
    pub fn phi_config(&self, vocab_size: usize) -> PhiConfig {
        PhiConfig::new(
            vocab_size,
            self.d_model,
            4 * self.d_model,
            self.layers,
            self.heads,
            self.heads,
        )
        .with_max_position_embeddings(self.max_position)
        .with_layer_norm_eps(self.layer_norm_eps)
        .with_rope_theta(self.rope_theta)
        .with_partial_rotary_factor(self.partial_rotary)
        .with_hidden_act(Activation::GeluTanh)
        .with_tie_word_embeddings(false)
        .with_bos_token_id(Some(0))
        .with_eos_token_id(Some(0))
        .with_pad_token_id(Some(0))
    }
}

// ---------------------------------------------------------------------------------------
// Corpus and documents

/// Conversations with the captions of their images.
pub struct Corpus {
    pub conversations: Vec<Conversation>,
    /// `captions[i]`: the captions of conversation `i`'s image, in file order.
    pub captions: Vec<Vec<String>>,
    /// Conversations dropped because their image has no caption.
    pub without_captions: usize,
}

impl Corpus {
    /// `{split}2017` images, `captions_{split}2017.json` and the conversations of `instruct`.
    pub fn load(world: &Path, split: &str, instruct: &str) -> Result<Self> {
        let root = ImageRoot::new(&world.join(format!("{split}2017")))?;
        let caps = load_captions(
            &world
                .join("annotations")
                .join(format!("captions_{split}2017.json")),
            &root,
        )?;
        let mut by_image: HashMap<String, Vec<String>> = HashMap::new();
        for s in caps.samples {
            by_image.entry(s.image_name).or_default().push(s.caption);
        }
        let set = load_instruct(&world.join(instruct), &root)?;
        let mut out = Corpus {
            conversations: Vec::new(),
            captions: Vec::new(),
            without_captions: 0,
        };
        for c in set.samples {
            match c.image_name.as_ref().and_then(|n| by_image.get(n)) {
                Some(cs) if !cs.is_empty() => {
                    out.captions.push(cs.clone());
                    out.conversations.push(c);
                }
                _ => out.without_captions += 1,
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.conversations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }

    /// Texts the tokenizer is trained on: every caption once and every conversation
    /// without its image (the end token is added as a special token, not learned as text).
    pub fn tokenizer_texts(&self, template: &ChatTemplate) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (c, cs) in self.conversations.iter().zip(&self.captions) {
            for cap in cs {
                if seen.insert(cap.as_str()) {
                    out.push(cap.clone());
                }
            }
            let doc = Doc::conversation(template, "", c);
            out.push(
                doc.0
                    .iter()
                    .filter_map(|p| match p {
                        Piece::Text(t) => Some(t.as_str()),
                        Piece::End => None,
                    })
                    .collect(),
            );
        }
        out
    }
}

/// A piece of a document, tokenized on its own (no BPE merge crosses a piece boundary).
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    /// `<|endoftext|>`.
    End,
}

/// One training document.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc(pub Vec<Piece>);

impl Doc {
    /// A conversation as stage 2 lays it out with the template, `ctx` at the image slot.
    pub fn conversation(t: &ChatTemplate, ctx: &str, c: &Conversation) -> Self {
        let mut p = Vec::new();
        for (i, turn) in c.turns.iter().enumerate() {
            if i == 0 {
                p.push(Piece::Text(format!("{}{}", t.system, t.user)));
                p.push(Piece::Text(ctx.to_string()));
                p.push(Piece::Text(format!(
                    "{}{}{}",
                    t.image_sep, turn.question, t.assistant
                )));
            } else {
                p.push(Piece::Text(format!(
                    "{}{}{}",
                    t.user, turn.question, t.assistant
                )));
            }
            p.push(Piece::Text(format!("{}{}", t.answer_prefix, turn.answer)));
            p.push(Piece::End);
        }
        Doc(p)
    }

    /// Draws one document for conversation `c` with captions `cs`.
    pub fn draw(
        rng: &mut Rng,
        o: &LmPretrainOptions,
        t: &ChatTemplate,
        c: &Conversation,
        cs: &[String],
    ) -> Self {
        let mut shuffled: Vec<&str> = cs.iter().map(String::as_str).collect();
        rng.shuffle(&mut shuffled);
        let ctx = shuffled.join(" ");
        let r = rng.unit();
        if r < o.p_ctx_caption {
            let cap = rng.pick(cs);
            Doc(vec![
                Piece::Text(ctx),
                Piece::Text(format!("\n{cap}")),
                Piece::End,
            ])
        } else if r < o.p_ctx_caption + o.p_caption {
            Doc(vec![Piece::Text(rng.pick(cs).clone()), Piece::End])
        } else {
            Self::conversation(t, &ctx, c)
        }
    }

    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::End => EOS,
            })
            .collect()
    }

    /// Token ids, piece by piece.
    pub fn ids(&self, tok: &dyn TextCodec) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) if t.is_empty() => {}
                Piece::Text(t) => out.extend(tok.encode(t)?),
                Piece::End => out.push(0),
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Tokenizer

/// A byte-level BPE of `vocab` tokens trained on `texts`: `<|endoftext|>` is id 0, the 256
/// byte symbols follow, then the merges. GPT-2's pre-tokenizer and decoder, no normaliser,
/// so decoding gives back the exact text.
pub fn train_tokenizer(texts: &[String], vocab: usize) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;
    anyhow::ensure!(
        vocab > 257,
        "vocab {vocab} must exceed 257 (the end token and the 256 bytes)"
    );
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_post_processor(Some(ByteLevel::new(false, false, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    anyhow::ensure!(tok.token_to_id(EOS) == Some(0), "{EOS} did not get id 0");
    Ok(tok)
}

// ---------------------------------------------------------------------------------------
// Batches

/// Right-padded ids and attention mask for `docs`, each cut to `max_len` tokens, and the
/// loss targets of labels that are the ids, -100 on padding (from the host: nothing is read
/// back from the device).
pub fn batch<B: Backend>(
    docs: &[Vec<u32>],
    max_len: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>, Targets) {
    let width = docs
        .iter()
        .map(|d| d.len().min(max_len))
        .max()
        .unwrap_or(1)
        .max(2);
    let (mut ids, mut keep, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for d in docs {
        let d = &d[..d.len().min(max_len)];
        for j in 0..width {
            let real = j < d.len();
            let id = if real { d[j] as i64 } else { 0 };
            ids.push(id);
            keep.push(real);
            labels.push(if real { id } else { IGNORE });
        }
    }
    let shape = [docs.len(), width];
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        Tensor::from_data(TensorData::new(keep, shape), device),
        Targets::from_labels(&labels, shape[0], shape[1]),
    )
}

// ---------------------------------------------------------------------------------------
// Evaluation

/// Text-context QA: the first question of every conversation of `val`, its image's
/// captions (file order) at the image slot, greedy.
pub fn text_context_qa<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    tok: &Tokenizer,
    template: &ChatTemplate,
    val: &Corpus,
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<QaAccuracy> {
    let mut prompts: Vec<(Vec<u32>, &str, String)> = Vec::new();
    for (c, cs) in val.conversations.iter().zip(&val.captions) {
        let turn = &c.turns[0];
        let layout = PromptLayout::question(tok, template, &turn.question)?;
        let mut ids = layout.before;
        ids.extend(TextCodec::encode(tok, &cs.join(" "))?);
        ids.extend(layout.after);
        let kind = turn.qtype.clone().unwrap_or_else(|| "unknown".into());
        prompts.push((ids, turn.answer.as_str(), kind));
    }
    // Rows of one generate call share a length (no padding).
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.0.len()).or_default().push(i);
    }
    let opts = GenerateOptions {
        max_new_tokens,
        eos: Some(0),
        decoding: Decoding::Greedy,
        use_cache: true,
    };
    let mut acc = QaAccuracy::default();
    for (len, idx) in by_len {
        for chunk in idx.chunks(64) {
            let flat: Vec<i64> = chunk
                .iter()
                .flat_map(|&i| prompts[i].0.iter().map(|&t| t as i64))
                .collect();
            let ids =
                Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [chunk.len(), len]), device);
            let gens = generate(lm, lm.embed(ids), &opts);
            for (&i, g) in chunk.iter().zip(&gens) {
                let pred = decode(tok, g, opts.eos)?;
                acc.add(&prompts[i].2, qa_exact_match(&pred, prompts[i].1));
            }
        }
    }
    Ok(acc)
}

// ---------------------------------------------------------------------------------------
// Training

/// What `pretrain_lm` made; the model on the inference backend.
pub struct LmPretrained {
    pub lm: Phi<Compute>,
    pub config: PhiConfig,
    pub tokenizer: Tokenizer,
    pub train_conversations: usize,
    pub val_conversations: usize,
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Mean loss over the first and the last `k` steps (k = steps / 4, at most 20).
    pub first_loss: f64,
    pub final_loss: f64,
    pub train_seconds: f64,
    pub total_seconds: f64,
    /// Text-context QA on the val conversations (`None` without a val split).
    pub qa: Option<QaAccuracy>,
}

/// A hidden sibling of `out` (same file system, so renames are atomic).
fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lm".into());
    out.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// The documents of `step`: a function of (seed, step). With `length_groups` g > 1, the
/// g x batch documents of steps g k .. g k + g - 1 are drawn together, sorted by length and
/// cut into g batches taken in a random order: batches of similar lengths pad far less
/// (documents run from about 30 to 220 tokens), and every document is still drawn at random.
pub fn step_docs(
    o: &LmPretrainOptions,
    template: &ChatTemplate,
    train: &Corpus,
    tok: &Tokenizer,
    step: u64,
) -> Result<Vec<Vec<u32>>> {
    let g = o.length_groups.max(1) as u64;
    let (group, within) = (step / g, (step % g) as usize);
    let salt = o.seed ^ 0x4C4D_5052_4554_5241;
    let mut rng = if g == 1 {
        Rng::derive(salt, step)
    } else {
        Rng::derive(salt ^ 0x6C65_6E67, group)
    };
    let mut docs = (0..o.batch * g as usize)
        .map(|_| {
            let i = rng.below(train.len());
            Doc::draw(
                &mut rng,
                o,
                template,
                &train.conversations[i],
                &train.captions[i],
            )
            .ids(tok)
        })
        .collect::<Result<Vec<_>>>()?;
    if g == 1 {
        return Ok(docs);
    }
    docs.sort_by_key(Vec::len);
    let mut order: Vec<usize> = (0..g as usize).collect();
    rng.shuffle(&mut order);
    let chunk = order[within];
    Ok(docs.drain(chunk * o.batch..(chunk + 1) * o.batch).collect())
}

/// One optimizer step of worker `rank` of `workers` on its share of `docs`: its
/// summed loss over its targets divided by the whole batch's target count (so any number
/// of workers makes the update one worker makes with the whole batch, up to the order of
/// float sums), gradients and loss all-reduced, the global norm clipped, AdamW. Returns the
/// model and the batch's mean loss.
#[allow(clippy::too_many_arguments)]
fn lm_step<O: Optimizer<Phi<Train>, Train>>(
    rank: usize,
    workers: usize,
    model: Phi<Train>,
    optim: &mut O,
    docs: &[Vec<u32>],
    o: &LmPretrainOptions,
    lr: f64,
    device: &Device,
) -> (Phi<Train>, f64) {
    // Every real token but a document's first is a target (`batch`'s labels), over the
    // whole batch, not this worker's share.
    let targets: usize = docs
        .iter()
        .map(|d| d.len().min(o.max_len).saturating_sub(1))
        .sum();
    let norm = targets.max(1) as f64;
    // Every `workers`-th document from `rank`: a length-sorted batch (length groups) splits
    // into shares of about equal lengths, so no worker waits long for the others.
    let mine: Vec<Vec<u32>> = docs.iter().skip(rank).step_by(workers).cloned().collect();
    let (g, loss_sum) = if mine.is_empty() {
        (
            GradientsParams::new(),
            Tensor::<Compute, 1>::zeros([1], device),
        )
    } else {
        let (ids, mask, targets) = batch::<Train>(&mine, o.max_len, device);
        let hidden = model.hidden_embeds(model.embed(ids), Some(mask), None);
        let summed = summed_loss_at(hidden, |x| model.head(x), &targets);
        let g = GradientsParams::from_grads((summed.clone() / norm).backward(), &model);
        (g, summed.inner())
    };
    let buffer = Tensor::cat(vec![grads::flatten::<Train, _>(&model, g), loss_sum], 0);
    let r = parallel::reduce(rank, workers, buffer, o.clip_grad_norm);
    let g = grads::unflatten::<Train, _>(&model, r.grads);
    (optim.step(lr, model, g), r.loss_sum / norm)
}

/// Trains the tokenizer and the tiny Phi on `o.world` and writes the HF folder to `o.out`.
pub fn pretrain_lm(o: &LmPretrainOptions) -> Result<LmPretrained> {
    let t_all = Instant::now();
    anyhow::ensure!(
        o.heads > 0 && o.d_model.is_multiple_of(o.heads),
        "d_model {} must be a multiple of heads {}",
        o.d_model,
        o.heads
    );
    anyhow::ensure!(
        o.steps > 0 && o.batch > 0 && o.max_len > 1,
        "need steps > 0, batch > 0, max_len > 1"
    );
    let template = ChatTemplate::default();
    let train = Corpus::load(&o.world, "train", "llava_instruct_150k.json")
        .with_context(|| format!("reading the training text of {}", o.world.display()))?;
    anyhow::ensure!(
        !train.is_empty(),
        "{}: no training conversation with captions",
        o.world.display()
    );
    let val = if o.world.join("llava_instruct_val.json").exists() {
        Some(Corpus::load(&o.world, "val", "llava_instruct_val.json")?)
    } else {
        None
    };

    if let Some(parent) = o.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = sibling(&o.out, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;

    // The tokenizer, saved first and read back through the stages' loader.
    let bpe = train_tokenizer(&train.tokenizer_texts(&template), o.vocab)?;
    let cfg = o.phi_config(bpe.get_vocab_size(true));
    bpe.save(tmp.join("tokenizer.json"), true)
        .map_err(|e| anyhow!("saving the tokenizer: {e}"))?;
    let tok = Tokenizer::from_file(&tmp.join("tokenizer.json"), &cfg)?;

    // The CPU build's workers share its one device; a GPU build puts them all on GPU 0.
    let workers = o.workers.max(1);
    let devices = vec![crate::backend::device(0); workers];
    let device = &devices[0];
    <Train as Backend>::seed(device, o.seed);
    let model: Phi<Train> = cfg.init_hf(device, o.init_std);
    // Every replica starts from these values (burn draws lazy parameters at first use).
    parallel::materialize(&model);
    let sched = LrSchedule::warmup_cosine(o.lr, o.steps, o.warmup);
    let bar = if o.progress {
        indicatif::ProgressBar::new(o.steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "pretrain lm [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let log_lines = o.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t_train = Instant::now();
    let (model, losses) = parallel::with_peers(&devices, |rank, device| -> Result<_> {
        let mut model = model.clone().fork(device);
        let mut optim = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(o.weight_decay as f32)
            .init::<Train, Phi<Train>>();
        let mut losses = Vec::with_capacity(o.steps as usize);
        for step in 0..o.steps {
            // Every worker draws the whole batch (a function of seed and step) and takes its
            // share; the loss it stops on is the all-reduced one, the same on all.
            let docs = step_docs(o, &template, &train, &tok, step)?;
            let lr = sched.lr(step);
            let (next, lv) = lm_step(rank, workers, model, &mut optim, &docs, o, lr, device);
            model = next;
            anyhow::ensure!(lv.is_finite(), "loss is {lv} at step {step}");
            if rank > 0 {
                continue;
            }
            losses.push(lv);
            bar.set_message(format!("loss {lv:.4}"));
            bar.inc(1);
            // The bar is hidden in logs (no terminal): a line every 50 steps instead.
            if log_lines && ((step + 1) % 50 == 0 || step + 1 == o.steps) {
                eprintln!(
                    "pretrain lm: step {}/{} loss {lv:.4} ({:.1}s)",
                    step + 1,
                    o.steps,
                    t_train.elapsed().as_secs_f64()
                );
            }
        }
        Ok((model, losses))
    })?;
    bar.finish_and_clear();
    let train_seconds = t_train.elapsed().as_secs_f64();
    let lm = model.valid();
    let k = (losses.len() / 4).clamp(1, 20);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first_loss, final_loss) = (mean(&losses[..k]), mean(&losses[losses.len() - k..]));

    let qa = match &val {
        Some(v) if !v.is_empty() => Some(text_context_qa(
            &lm,
            &tok,
            &template,
            v,
            o.eval_max_new_tokens,
            device,
        )?),
        _ => None,
    };

    lm.save_hf(&cfg, &tmp)?;
    crate::fsutil::write_atomic(
        &tmp.join("generation_config.json"),
        &serde_json::to_vec_pretty(&json!({
            "_from_model_config": true,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 0,
        }))?,
    )?;
    let total_seconds = t_all.elapsed().as_secs_f64();
    let qa_json = qa.as_ref().map(|a| {
        json!({
            "overall": a.overall(),
            "per_type": a.per_type.iter().map(|(k, &(c, n))| {
                (k.clone(), json!({"correct": c, "total": n, "acc": c as f64 / n.max(1) as f64}))
            }).collect::<serde_json::Map<_, _>>(),
        })
    });
    let report = json!({
        "options": o,
        "config": cfg.to_hf_json(),
        "vocab_size": cfg.vocab_size,
        "train_conversations": train.len(),
        "val_conversations": val.as_ref().map_or(0, Corpus::len),
        "first_loss": first_loss,
        "final_loss": final_loss,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / o.steps as f64,
        "total_seconds": total_seconds,
        "text_context_qa": qa_json,
    });
    crate::fsutil::write_atomic(
        &tmp.join("pretrain.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    crate::fsutil::sync_dir(&tmp);
    // Swap the finished folder in; a previous result is removed only after.
    let old = sibling(&o.out, "old");
    if o.out.exists() {
        std::fs::rename(&o.out, &old)
            .with_context(|| format!("moving the old {} aside", o.out.display()))?;
    }
    std::fs::rename(&tmp, &o.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), o.out.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(LmPretrained {
        lm,
        config: cfg,
        tokenizer: tok,
        train_conversations: train.len(),
        val_conversations: val.as_ref().map_or(0, Corpus::len),
        losses,
        first_loss,
        final_loss,
        train_seconds,
        total_seconds,
        qa,
    })
}
