//! Token sequences with label masks, exactly as LLaVA builds them (DESIGN.md section 2).
//!
//! Stage 1: `[image] caption <eos>`; only the caption tokens and eos are targets.
//! Stage 2: a [`ChatTemplate`]; with the default,
//! `USER: [image]\nQ1 ASSISTANT: A1<|endoftext|>USER: Q2 ASSISTANT: A2<|endoftext|>`,
//! where every answer (with the space before it) and its end token are targets and
//! everything else is ignored (-100).
//!
//! Text is tokenized in pieces: the text before the image slot, after it, each answer are
//! encoded separately, so no BPE merge can cross the image slot or the prompt/answer
//! boundary and the label mask is exact by construction (LLaVA's `tokenizer_image_token`
//! does the same around `<image>`). The answer piece starts with the space that separates
//! it from `ASSISTANT:`, because GPT-2 BPE folds a leading space into the next word's
//! token: ` red` is one token, and the target decodes to ` red<|endoftext|>`.
//!
//! The image slot is `image_tokens` positions (the vision encoder's patch count) holding
//! `pad_id` in `input_ids`; the model overwrites those embeddings with the projected image
//! features. Labels are aligned with `input_ids` (HF convention: the loss compares
//! `logits[t]` with `labels[t + 1]`).

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

use super::coco::CaptionSample;
use super::instruct::Conversation;
use super::skips::{SkipReason, SkipReport};

/// What sequence building needs from a tokenizer. Implemented for the `tokenizers` crate's
/// `Tokenizer` and for the model's wrapper ([`crate::model::tokenizer::Tokenizer`]).
pub trait TextCodec {
    /// Ids of `text`, nothing added around it (no BOS: Phi-2 uses none).
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    /// Text of `ids`, special tokens kept.
    fn decode(&self, ids: &[u32]) -> String;
    fn token_to_id(&self, token: &str) -> Option<u32>;
}

impl TextCodec for tokenizers::Tokenizer {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(tokenizers::TokenizerImpl::encode(self, text, false)
            .map_err(|e| anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }
    fn decode(&self, ids: &[u32]) -> String {
        tokenizers::TokenizerImpl::decode(self, ids, false).unwrap_or_default()
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        tokenizers::TokenizerImpl::token_to_id(self, token)
    }
}

impl TextCodec for crate::model::tokenizer::Tokenizer {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        crate::model::tokenizer::Tokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        crate::model::tokenizer::Tokenizer::decode(self, ids, false).unwrap_or_default()
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        crate::model::tokenizer::Tokenizer::token_to_id(self, token)
    }
}

/// The ignored label (PyTorch's `CrossEntropyLoss` default `ignore_index`).
pub const IGNORE: i64 = -100;

/// How a conversation becomes text. Each turn is
/// `[system on the first turn] user [image slot + image_sep on the first turn] question
/// assistant` (ignored) then `answer_prefix answer end` (learned).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatTemplate {
    pub system: String,
    pub user: String,
    pub image_sep: String,
    pub assistant: String,
    pub answer_prefix: String,
    /// A special token name (one id) or text to tokenize; learned after every answer.
    pub end: String,
}

impl Default for ChatTemplate {
    /// Phi-2 friendly: `USER: <image>\nQ ASSISTANT: A<|endoftext|>`.
    fn default() -> Self {
        Self {
            system: String::new(),
            user: "USER: ".into(),
            image_sep: "\n".into(),
            assistant: " ASSISTANT:".into(),
            answer_prefix: " ".into(),
            end: "<|endoftext|>".into(),
        }
    }
}

impl ChatTemplate {
    /// The templates an experiment can name (`data.template`, [`crate::config::TEMPLATES`]):
    /// `phi` (the default above) and `llava_v1` (LLaVA-1.5's Vicuna v1 system prompt and
    /// roles, ending answers with `<|endoftext|>` since that is Phi-2's eos).
    pub fn named(name: &str) -> anyhow::Result<Self> {
        match name {
            "phi" => Ok(Self::default()),
            "llava_v1" => Ok(Self {
                system: "A chat between a curious human and an artificial intelligence \
                         assistant. The assistant gives helpful, detailed, and polite answers \
                         to the human's questions. "
                    .into(),
                ..Self::default()
            }),
            other => Err(anyhow!(
                "unknown conversation template {other:?} (known: {})",
                crate::config::TEMPLATES.join(", ")
            )),
        }
    }
}

/// One training sequence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sequence {
    /// The source record's id (COCO annotation id or Instruct150K id).
    pub id: String,
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; [`IGNORE`] where nothing is learned.
    pub labels: Vec<i64>,
    /// First position of the image slot; it covers `image_start..image_start + image_tokens`.
    pub image_start: Option<usize>,
    pub image_tokens: usize,
    /// Tokens cut off the end by `max_len` (0 when it fit).
    pub truncated: usize,
    #[serde(skip)]
    pub image: Option<PathBuf>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The target tokens the loss counts: labels at positions 1.. (position t predicts
    /// label t + 1) that are not ignored.
    pub fn loss_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }

    pub fn targets(&self) -> Vec<u32> {
        self.labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect()
    }

    pub fn image_positions(&self) -> std::ops::Range<usize> {
        match self.image_start {
            Some(s) => s..s + self.image_tokens,
            None => 0..0,
        }
    }
}

/// Truncation counts, for the run's metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Truncation {
    pub sequences: usize,
    pub truncated_sequences: usize,
    pub truncated_tokens: usize,
}

pub struct SequenceBuilder<'a> {
    tok: &'a dyn TextCodec,
    pub template: ChatTemplate,
    pub image_tokens: usize,
    pub max_len: usize,
    pub pad_id: u32,
    eos: Vec<u32>,
    end: Vec<u32>,
}

/// Tokens under construction: ids and labels side by side.
#[derive(Default)]
struct Draft {
    ids: Vec<u32>,
    labels: Vec<i64>,
    image_start: Option<usize>,
}

impl<'a> SequenceBuilder<'a> {
    /// `eos` is the stage-1 end token name (`<|endoftext|>` for Phi-2); `pad_id` fills the
    /// image slot and padding.
    pub fn new(
        tok: &'a dyn TextCodec,
        template: ChatTemplate,
        eos: &str,
        image_tokens: usize,
        max_len: usize,
        pad_id: u32,
    ) -> anyhow::Result<Self> {
        let eos_ids = special_or_text(tok, eos)?;
        let end = special_or_text(tok, &template.end)?;
        Ok(Self {
            tok,
            template,
            image_tokens,
            max_len,
            pad_id,
            eos: eos_ids,
            end,
        })
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        // `<|endoftext|>` written inside a caption still maps to its id, as in HF.
        // Encoding plain text does not fail with a BPE model; if it ever does, an empty
        // piece is safer than a crash mid-epoch (the sample then has fewer targets).
        self.tok.encode(text).unwrap_or_default()
    }

    fn push(&self, d: &mut Draft, ids: &[u32], learn: bool) {
        d.ids.extend_from_slice(ids);
        if learn {
            d.labels.extend(ids.iter().map(|&i| i as i64));
        } else {
            d.labels.extend(std::iter::repeat_n(IGNORE, ids.len()));
        }
    }

    fn push_image(&self, d: &mut Draft) {
        d.image_start = Some(d.ids.len());
        d.ids
            .extend(std::iter::repeat_n(self.pad_id, self.image_tokens));
        d.labels
            .extend(std::iter::repeat_n(IGNORE, self.image_tokens));
    }

    /// Stage 1: `[image] caption <eos>`.
    pub fn caption(&self, s: &CaptionSample) -> Result<Sequence, SkipReason> {
        let mut d = Draft::default();
        self.push_image(&mut d);
        self.push(&mut d, &self.encode(&s.caption), true);
        self.push(&mut d, &self.eos, true);
        self.finish(s.id.clone(), Some(s.image.clone()), d)
    }

    /// Stage 2: the conversation through the template.
    pub fn conversation(&self, c: &Conversation) -> Result<Sequence, SkipReason> {
        let t = &self.template;
        let mut d = Draft::default();
        for (i, turn) in c.turns.iter().enumerate() {
            let first = i == 0;
            let mut before = String::new();
            if first {
                before.push_str(&t.system);
            }
            before.push_str(&t.user);
            let mut prompt = String::new();
            if first && c.image.is_some() {
                self.push(&mut d, &self.encode(&before), false);
                self.push_image(&mut d);
                prompt.push_str(&t.image_sep);
            } else {
                prompt = before;
            }
            prompt.push_str(&turn.question);
            prompt.push_str(&t.assistant);
            self.push(&mut d, &self.encode(&prompt), false);
            let answer = format!("{}{}", t.answer_prefix, turn.answer);
            self.push(&mut d, &self.encode(&answer), true);
            self.push(&mut d, &self.end, true);
        }
        self.finish(c.id.clone(), c.image.clone(), d)
    }

    /// Truncates to `max_len`. A sequence that loses all its targets, or part of its image
    /// slot (the model cannot splice half an image), is skipped as
    /// [`SkipReason::TruncatedAway`].
    fn finish(
        &self,
        id: String,
        image: Option<PathBuf>,
        mut d: Draft,
    ) -> Result<Sequence, SkipReason> {
        let mut truncated = 0;
        if d.ids.len() > self.max_len {
            truncated = d.ids.len() - self.max_len;
            d.ids.truncate(self.max_len);
            d.labels.truncate(self.max_len);
            if let Some(s) = d.image_start {
                if s + self.image_tokens > self.max_len {
                    return Err(SkipReason::TruncatedAway);
                }
            }
        }
        if d.labels.iter().all(|&l| l == IGNORE) {
            return Err(SkipReason::TruncatedAway);
        }
        Ok(Sequence {
            id,
            input_ids: d.ids,
            labels: d.labels,
            image_start: d.image_start,
            image_tokens: if d.image_start.is_some() {
                self.image_tokens
            } else {
                0
            },
            truncated,
            image,
        })
    }

    /// Builds every sample, counting skips and truncations.
    pub fn build_all<T>(
        &self,
        samples: &[T],
        one: impl Fn(&Self, &T) -> Result<Sequence, SkipReason>,
        id_of: impl Fn(&T) -> String,
    ) -> (Vec<Sequence>, SkipReport, Truncation) {
        let mut out = Vec::with_capacity(samples.len());
        let mut skips = SkipReport::default();
        let mut tr = Truncation::default();
        for s in samples {
            match one(self, s) {
                Ok(seq) => {
                    tr.sequences += 1;
                    if seq.truncated > 0 {
                        tr.truncated_sequences += 1;
                        tr.truncated_tokens += seq.truncated;
                    }
                    out.push(seq);
                }
                Err(r) => skips.add(r, id_of(s)),
            }
        }
        (out, skips, tr)
    }

    /// Decodes ids to text (special tokens kept, so `<|endoftext|>` shows).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids)
    }

    /// A human-readable view: ignored text as is, the image slot as `<image x N>`, learned
    /// text inside `[[...]]`. What `harness data show` prints.
    pub fn render(&self, s: &Sequence) -> String {
        let img = s.image_positions();
        let mut out = String::new();
        let mut i = 0;
        while i < s.len() {
            if img.contains(&i) {
                out.push_str(&format!("<image x {}>", img.len()));
                i = img.end;
                continue;
            }
            let learn = s.labels[i] != IGNORE;
            let mut j = i;
            while j < s.len() && !img.contains(&j) && (s.labels[j] != IGNORE) == learn {
                j += 1;
            }
            let text = self.decode(&s.input_ids[i..j]);
            if learn {
                out.push_str(&format!("[[{text}]]"));
            } else {
                out.push_str(&text);
            }
            i = j;
        }
        out
    }
}

/// The ids of `s`: its id when it is one token of the vocabulary (a special token such as
/// `<|endoftext|>`), else its tokenization.
fn special_or_text(tok: &dyn TextCodec, s: &str) -> anyhow::Result<Vec<u32>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(id) = tok.token_to_id(s) {
        return Ok(vec![id]);
    }
    tok.encode(s)
        .with_context(|| format!("tokenizing end marker {s:?}"))
}
