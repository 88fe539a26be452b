//! Captions and answers for images: prompt layout, projection, splicing and generation in
//! one call, for the training loop's end-of-stage evaluation and for the CLI.

use std::collections::BTreeMap;

use anyhow::Result;
use burn::prelude::*;

use super::generate::{generate_streams, GenerateOptions, Generated};
use crate::data::sequence::{ChatTemplate, TextCodec};
use crate::model::phi::Phi;
use crate::model::projector::Projector;
use crate::model::tokenizer::Tokenizer;

/// Token ids around the image slot of a generation prompt; the model continues after
/// `after`. Built the way [`crate::data::sequence::SequenceBuilder`] lays out training
/// sequences, so generation sees the prompts it was trained on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromptLayout {
    pub before: Vec<u32>,
    pub after: Vec<u32>,
}

impl PromptLayout {
    /// Stage 1 (`[image] caption<eos>`): the image alone; the caption follows it.
    pub fn caption() -> Self {
        Self {
            before: vec![],
            after: vec![],
        }
    }

    /// Stage 2, first turn: `system user [image] image_sep question assistant`, tokenized
    /// in the same two pieces as in training; the answer (with its leading
    /// `answer_prefix`) is what gets generated.
    pub fn question(tok: &dyn TextCodec, template: &ChatTemplate, question: &str) -> Result<Self> {
        let enc = |s: &str| -> Result<Vec<u32>> {
            if s.is_empty() {
                Ok(vec![])
            } else {
                tok.encode(s)
            }
        };
        let before = enc(&format!("{}{}", template.system, template.user))?;
        let after = enc(&format!(
            "{}{}{}",
            template.image_sep, question, template.assistant
        ))?;
        Ok(Self { before, after })
    }

    /// Stage 2 without an image (a text-only conversation's first turn): `system user
    /// question assistant` in one piece, as training encodes it.
    pub fn text_only(
        tok: &dyn TextCodec,
        template: &ChatTemplate,
        question: &str,
    ) -> Result<Vec<u32>> {
        tok.encode(&format!(
            "{}{}{}{}",
            template.system, template.user, question, template.assistant
        ))
    }
}

/// Generates for image `i` with `layouts[i]`. `features`: `[images, patches, d_vision]`
/// CLIP features (what the feature cache holds). Prompts of equal layout lengths run
/// together in batches of at most `batch_size` rows; results come back in input order.
/// `pad_id` fills the image slot before the projected features replace it.
pub fn generate_for_images<B: crate::model::lora::QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    features: Tensor<B, 3>,
    layouts: &[PromptLayout],
    pad_id: u32,
    opts: &GenerateOptions,
    batch_size: usize,
) -> Vec<Generated> {
    let [n, patches, dv] = features.dims();
    assert_eq!(n, layouts.len(), "one prompt layout per image");
    let device = features.device();
    // Group by prompt shape: rows of one batch need the same length (see `generate`).
    let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, l) in layouts.iter().enumerate() {
        groups
            .entry((l.before.len(), l.after.len()))
            .or_default()
            .push(i);
    }
    let mut out: Vec<Option<Generated>> = vec![None; n];
    for ((nb, na), members) in groups {
        for chunk in members.chunks(batch_size.max(1)) {
            let len = nb + patches + na;
            let ids: Vec<i64> = chunk
                .iter()
                .flat_map(|&i| {
                    let l = &layouts[i];
                    l.before
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad_id, patches))
                        .chain(l.after.iter().copied())
                        .map(|t| t as i64)
                        .collect::<Vec<_>>()
                })
                .collect();
            let ids =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), len]), &device);
            let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [chunk.len()]), &device);
            let feats = features.clone().select(0, idx);
            debug_assert_eq!(feats.dims(), [chunk.len(), patches, dv]);
            let starts = vec![Some(nb); chunk.len()];
            // As training builds them: the projector's f32 output cast to the LM's dtype
            // (bf16 on a GPU) before it fills the image slots.
            let embeds = crate::model::vlm::llava_embeds(lm, projector, ids, feats, &starts);
            let streams: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
            let generated = generate_streams(lm, embeds, opts, &streams);
            for (g, &i) in generated.into_iter().zip(chunk) {
                out[i] = Some(g);
            }
        }
    }
    out.into_iter()
        .map(|g| g.expect("every image generated"))
        .collect()
}

/// Generates for text prompts (token ids, no image). Prompts of equal length run together
/// in batches of at most `batch_size` rows; results come back in input order.
pub fn generate_for_text<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    batch_size: usize,
    device: &B::Device,
) -> Vec<Generated> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry(p.len()).or_default().push(i);
    }
    let mut out: Vec<Option<Generated>> = vec![None; prompts.len()];
    for (len, members) in groups {
        for chunk in members.chunks(batch_size.max(1)) {
            let ids: Vec<i64> = chunk
                .iter()
                .flat_map(|&i| prompts[i].iter().map(|&t| t as i64))
                .collect();
            let ids =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), len]), device);
            let streams: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
            for (g, &i) in generate_streams(lm, lm.embed(ids), opts, &streams)
                .into_iter()
                .zip(chunk)
            {
                out[i] = Some(g);
            }
        }
    }
    out.into_iter()
        .map(|g| g.expect("every prompt generated"))
        .collect()
}

/// Decoded text of a generation: eos dropped, special tokens skipped, whitespace trimmed.
pub fn decode(tok: &Tokenizer, g: &Generated, eos: Option<u32>) -> Result<String> {
    Ok(tok.decode(g.text_tokens(eos), true)?.trim().to_string())
}

/// One caption per image (stage-1 layout unless `layout` says otherwise), decoded.
/// `opts.eos` should be the tokenizer's eos (`tok.eos_id`), which ends stage-1 captions.
pub fn caption_images<B: crate::model::lora::QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    tok: &Tokenizer,
    features: Tensor<B, 3>,
    layout: &PromptLayout,
    opts: &GenerateOptions,
    batch_size: usize,
) -> Result<Vec<String>> {
    let n = features.dims()[0];
    let layouts = vec![layout.clone(); n];
    let pad = tok.pad_id.unwrap_or(0);
    generate_for_images(projector, lm, features, &layouts, pad, opts, batch_size)
        .iter()
        .map(|g| decode(tok, g, opts.eos))
        .collect()
}

/// One answer per (image, question) pair through the chat template, decoded; score them
/// with [`super::qa::qa_exact_match`]. `opts.eos` should be the template's end token id.
#[allow(clippy::too_many_arguments)]
pub fn answer_questions<B: crate::model::lora::QLoraBackend>(
    projector: &Projector<B>,
    lm: &Phi<B>,
    tok: &Tokenizer,
    template: &ChatTemplate,
    features: Tensor<B, 3>,
    questions: &[String],
    opts: &GenerateOptions,
    batch_size: usize,
) -> Result<Vec<String>> {
    let layouts = questions
        .iter()
        .map(|q| PromptLayout::question(tok, template, q))
        .collect::<Result<Vec<_>>>()?;
    let pad = tok.pad_id.unwrap_or(0);
    generate_for_images(projector, lm, features, &layouts, pad, opts, batch_size)
        .iter()
        .map(|g| decode(tok, g, opts.eos))
        .collect()
}
