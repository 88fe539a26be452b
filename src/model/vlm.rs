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

use super::lora::QLoraBackend;
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
pub struct Spliced<B: QLoraBackend> {
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
pub fn splice<B: QLoraBackend>(
    lm: &Phi<B>,
    rows: &[Vec<i64>],
    images: Tensor<B, 3>,
    pad_id: usize,
) -> Spliced<B> {
    let [n_images, patches, _] = images.dims();
    let device = images.device();
    let markers: usize = rows.iter().flatten().filter(|&&t| t == IMAGE_TOKEN).count();
    assert_eq!(
        markers, n_images,
        "{markers} image markers but {n_images} images"
    );
    // Expand each marker into `patches` slots holding the pad id (the layout the data
    // pipeline's batches have), right-pad every row to one length, then fill the slots.
    let mut sources: Vec<Vec<Source>> = Vec::with_capacity(rows.len());
    let mut slots = Vec::with_capacity(n_images);
    for (r, row) in rows.iter().enumerate() {
        let mut src = Vec::new();
        for (i, &t) in row.iter().enumerate() {
            if t == IMAGE_TOKEN {
                let image = slots.len();
                slots.push(Slot {
                    image,
                    row: r,
                    start: src.len(),
                });
                src.extend((0..patches).map(|patch| Source::Image { image, patch }));
            } else {
                src.push(Source::Token(i));
            }
        }
        sources.push(src);
    }
    let len = sources.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * len);
    for (row, src) in rows.iter().zip(&mut sources) {
        mask.extend((0..len).map(|j| j < src.len()));
        src.resize(len, Source::Pad);
        ids.extend(src.iter().map(|s| match *s {
            Source::Token(i) => row[i],
            // Image slots and padding read the pad token's embedding (irrelevant under the
            // mask or overwritten, but real embeddings keep the numbers ordinary).
            _ => pad_id as i64,
        }));
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), len]), &device);
    Spliced {
        embeds: place_images(lm.embed(ids), images, &slots),
        mask: Tensor::from_data(TensorData::new(mask, [rows.len(), len]), &device),
        sources,
    }
}

/// The data pipeline's layout (`LlavaBatch`): image slots are already expanded in the ids
/// (`patches` positions holding the pad id, starting at `image_start[row]`), so the token
/// embeddings have the right length and row `r`'s image overwrites its slot.
///
/// `embeds`: `[batch, len, d]` token embeddings; `images`: `[batch, patches, d]` projected
/// features (rows without an image are ignored). Differentiable w.r.t. both.
pub fn fill_image_slots<B: Backend>(
    embeds: Tensor<B, 3>,
    images: Tensor<B, 3>,
    image_start: &[Option<usize>],
) -> Tensor<B, 3> {
    let [b, _, d] = embeds.dims();
    let [bi, _, di] = images.dims();
    assert_eq!(
        (b, d),
        (bi, di),
        "embeddings [{b}, _, {d}] vs images [{bi}, _, {di}]"
    );
    assert_eq!(image_start.len(), b, "one image_start per row");
    let slots: Vec<Slot> = image_start
        .iter()
        .enumerate()
        .filter_map(|(r, s)| {
            s.map(|start| Slot {
                image: r,
                row: r,
                start,
            })
        })
        .collect();
    place_images(embeds, images, &slots)
}

/// Where one image goes: image `image` of the features batch replaces positions
/// `start .. start + patches` of row `row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub image: usize,
    pub row: usize,
    pub start: usize,
}

/// The one splice: every slot's image (of `images`, `[n, patches, d]`) replaces its
/// positions of `embeds` (`[batch, len, d]`). Slots of one row are in position order and do
/// not overlap. Built from slices and concatenations (exact copies forward and backward);
/// one batched concatenation when every row holds its own image at the same place
/// (training's common case).
pub fn place_images<B: Backend>(
    embeds: Tensor<B, 3>,
    images: Tensor<B, 3>,
    slots: &[Slot],
) -> Tensor<B, 3> {
    let [b, l, d] = embeds.dims();
    let [n, p, _] = images.dims();
    for s in slots {
        assert!(
            s.image < n && s.row < b && s.start + p <= l,
            "image {} at row {} slot {}..{}: past [{b}, {l}] or {n} images",
            s.image,
            s.row,
            s.start,
            s.start + p
        );
    }
    // `e`'s positions with each (start, image) of `pieces` put in place.
    let around = |e: Tensor<B, 3>, pieces: Vec<(usize, Tensor<B, 3>)>| {
        let rows = e.dims()[0];
        let mut parts = vec![];
        let mut at = 0;
        for (s, img) in pieces {
            if s > at {
                parts.push(e.clone().slice([0..rows, at..s, 0..d]));
            }
            parts.push(img);
            at = s + p;
        }
        if at < l {
            parts.push(e.slice([0..rows, at..l, 0..d]));
        }
        Tensor::cat(parts, 1)
    };
    if let Some(first) = slots.first() {
        let own = |i: usize, s: &Slot| s.image == i && s.row == i && s.start == first.start;
        if n == b && slots.len() == b && slots.iter().enumerate().all(|(i, s)| own(i, s)) {
            return around(embeds, vec![(first.start, images)]);
        }
    }
    let rows = (0..b)
        .map(|r| {
            let pieces: Vec<(usize, Tensor<B, 3>)> = slots
                .iter()
                .filter(|s| s.row == r)
                .map(|s| {
                    (
                        s.start,
                        images.clone().slice([s.image..s.image + 1, 0..p, 0..d]),
                    )
                })
                .collect();
            let e = embeds.clone().slice([r..r + 1, 0..l, 0..d]);
            if pieces.is_empty() {
                e
            } else {
                around(e, pieces)
            }
        })
        .collect();
    Tensor::cat(rows, 0)
}

/// HF-style `attention_mask` (`1` real, `0` padding) as the bool mask [`Phi`] takes.
pub fn mask_from_int<B: QLoraBackend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 2, Bool> {
    mask.equal_elem(1)
}

/// LLaVA's forward pass on the data pipeline's batch layout: token embeddings, projected
/// image features written into the image slots, then the LM. Returns logits `[batch, len,
/// vocab]`. `image_features` are the vision tower's (`[batch, patches, d_vision]`).
pub fn llava_logits<B: QLoraBackend>(
    lm: &Phi<B>,
    projector: &super::projector::Projector<B>,
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Tensor<B, 2, Int>,
    image_features: Tensor<B, 3>,
    image_start: &[Option<usize>],
) -> Tensor<B, 3> {
    let h = llava_hidden(
        lm,
        projector,
        input_ids,
        attention_mask,
        image_features,
        image_start,
    );
    lm.head(h)
}

/// [`llava_logits`] before the LM's head: the last layer's output `[b, L, d]`.
pub fn llava_hidden<B: QLoraBackend>(
    lm: &Phi<B>,
    projector: &super::projector::Projector<B>,
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Tensor<B, 2, Int>,
    image_features: Tensor<B, 3>,
    image_start: &[Option<usize>],
) -> Tensor<B, 3> {
    let embeds = llava_embeds(lm, projector, input_ids, image_features, image_start);
    lm.hidden_embeds(embeds, Some(mask_from_int(attention_mask)), None)
}

/// The LM's input embeddings of a batch: token embeddings with the projected image features
/// written into the image slots (what [`llava_logits`] feeds the LM).
pub fn llava_embeds<B: QLoraBackend>(
    lm: &Phi<B>,
    projector: &super::projector::Projector<B>,
    input_ids: Tensor<B, 2, Int>,
    image_features: Tensor<B, 3>,
    image_start: &[Option<usize>],
) -> Tensor<B, 3> {
    let embeds = lm.embed(input_ids);
    // The projector keeps f32 weights; its output joins the LM's compute dtype (bf16 on GPU).
    let images = projector.forward(image_features).cast(embeds.dtype());
    fill_image_slots(embeds, images, image_start)
}
