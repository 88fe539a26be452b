//! LLaVA assembly: projected image features spliced into the LM's token embeddings.
//!
//! A sequence is token ids in which [`IMAGE_TOKEN`] marks where an image goes (LLaVA's
//! `IMAGE_TOKEN_INDEX`, -200: the prompt is tokenized in pieces around each `<image>` and
//! the marker is put between them). Each marker is replaced by all patch embeddings of the
//! next image; rows are right-padded to one length with the pad token's embedding and a
//! false attention mask. [`Spliced::sources`] says where every output position came from, so
//! labels can be laid out on the same positions (image and pad positions get no label).

use burn::prelude::*;
use burn::tensor::Bool;

use super::phi::Phi;

/// Marks an image slot in the token ids (LLaVA's `IMAGE_TOKEN_INDEX`).
pub const IMAGE_TOKEN: i64 = -200;

/// Where an output position's embedding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The input token at this index of the row.
    Token(usize),
    /// Patch `patch` of image `image` (index into the features batch).
    Image {
        image: usize,
        patch: usize,
    },
    Pad,
}

/// The output of [`splice`].
pub struct Spliced<B: crate::model::lora::QLoraBackend> {
    /// `[batch, len, d_lm]`, for [`Phi::forward_embeds`].
    pub embeds: Tensor<B, 3>,
    /// `[batch, len]`, true on real positions (tokens and image patches).
    pub mask: Tensor<B, 2, Bool>,
    /// Per row, the source of every position (`len` entries).
    pub sources: Vec<Vec<Source>>,
}

/// Splices `images` (`[n_images, patches, d_lm]`, already projected) into the embeddings of
/// `rows`. Image markers take images in order across the batch (row 0's first, ...). Panics
/// when the number of markers differs from `n_images`: that is a data bug, not an input.
pub fn splice<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    rows: &[Vec<i64>],
    images: Tensor<B, 3>,
    pad_id: usize,
) -> Spliced<B> {
    let [n_images, patches, d] = images.dims();
    let device = images.device();
    let markers: usize = rows.iter().flatten().filter(|&&t| t == IMAGE_TOKEN).count();
    assert_eq!(
        markers, n_images,
        "{markers} image markers but {n_images} images"
    );
    let len = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|&t| if t == IMAGE_TOKEN { patches } else { 1 })
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);

    // One embedding lookup for the whole batch: markers and padding read the pad embedding.
    // The extra last column is always the pad token, so its embedding is at [0, width - 1].
    let width = rows.iter().map(Vec::len).max().unwrap_or(0) + 1;
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| {
            let mut v: Vec<i64> = r
                .iter()
                .map(|&t| if t == IMAGE_TOKEN { pad_id as i64 } else { t })
                .collect();
            v.resize(width, pad_id as i64);
            v
        })
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), width]), &device);
    let tokens = lm.embed(ids);
    let pad = tokens
        .clone()
        .slice([0..1, width - 1..width, 0..d])
        .reshape([1, d]);

    let mut next_image = 0;
    let mut out_rows = Vec::with_capacity(rows.len());
    let mut sources = Vec::with_capacity(rows.len());
    let mut mask = Vec::with_capacity(rows.len() * len);
    for (r, row) in rows.iter().enumerate() {
        let row_tokens = tokens
            .clone()
            .slice([r..r + 1, 0..width, 0..d])
            .reshape([width, d]);
        let mut parts = Vec::new();
        let mut src = Vec::with_capacity(len);
        let mut i = 0;
        while i < row.len() {
            if row[i] == IMAGE_TOKEN {
                let img = images
                    .clone()
                    .slice([next_image..next_image + 1, 0..patches, 0..d]);
                parts.push(img.reshape([patches, d]));
                src.extend((0..patches).map(|patch| Source::Image {
                    image: next_image,
                    patch,
                }));
                next_image += 1;
                i += 1;
            } else {
                let start = i;
                while i < row.len() && row[i] != IMAGE_TOKEN {
                    i += 1;
                }
                parts.push(row_tokens.clone().slice([start..i, 0..d]));
                src.extend((start..i).map(Source::Token));
            }
        }
        let real = src.len();
        if real < len {
            // The embedding of the pad token (its value is irrelevant under the mask, but a
            // real embedding keeps the numbers ordinary).
            let pad_rows = pad.clone().expand([len - real, d]);
            parts.push(pad_rows);
            src.resize(len, Source::Pad);
        }
        mask.extend((0..len).map(|j| j < real));
        out_rows.push(Tensor::cat(parts, 0).unsqueeze_dim::<3>(0));
        sources.push(src);
    }
    Spliced {
        embeds: Tensor::cat(out_rows, 0),
        mask: Tensor::from_data(TensorData::new(mask, [rows.len(), len]), &device),
        sources,
    }
}

/// The other layout (the data pipeline's `LlavaBatch`): image slots are already expanded in
/// the ids (`patches` positions holding the pad id, starting at `image_start[row]`), so the
/// token embeddings have the right length and the slots are overwritten in place.
///
/// `embeds`: `[batch, len, d]` token embeddings; `images`: `[batch, patches, d]` projected
/// features (rows without an image are ignored). Differentiable w.r.t. both.
pub fn fill_image_slots<B: crate::model::lora::QLoraBackend>(
    embeds: Tensor<B, 3>,
    images: Tensor<B, 3>,
    image_start: &[Option<usize>],
) -> Tensor<B, 3> {
    let [b, len, d] = embeds.dims();
    let [bi, patches, di] = images.dims();
    assert_eq!(
        (b, d),
        (bi, di),
        "embeddings [{b}, _, {d}] vs images [{bi}, _, {di}]"
    );
    assert_eq!(image_start.len(), b, "one image_start per row");
    let mut out = embeds;
    for (r, start) in image_start.iter().enumerate() {
        if let Some(s) = *start {
            assert!(
                s + patches <= len,
                "row {r}: image slot {s}..{} past length {len}",
                s + patches
            );
            let img = images.clone().slice([r..r + 1, 0..patches, 0..d]);
            out = out.slice_assign([r..r + 1, s..s + patches, 0..d], img);
        }
    }
    out
}

/// HF-style `attention_mask` (`1` real, `0` padding) as the bool mask [`Phi`] takes.
pub fn mask_from_int<B: crate::model::lora::QLoraBackend>(
    mask: Tensor<B, 2, Int>,
) -> Tensor<B, 2, Bool> {
    mask.equal_elem(1)
}

/// LLaVA's forward pass on the data pipeline's batch layout: token embeddings, projected
/// image features written into the image slots, then the LM. Returns logits `[batch, len,
/// vocab]`. `image_features` are the vision tower's (`[batch, patches, d_vision]`).
pub fn llava_logits<B: crate::model::lora::QLoraBackend>(
    lm: &Phi<B>,
    projector: &super::projector::Projector<B>,
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Tensor<B, 2, Int>,
    image_features: Tensor<B, 3>,
    image_start: &[Option<usize>],
) -> Tensor<B, 3> {
    let embeds = lm.embed(input_ids);
    let images = projector.forward(image_features);
    let embeds = fill_image_slots(embeds, images, image_start);
    lm.forward_embeds(embeds, Some(mask_from_int(attention_mask)), None)
}
