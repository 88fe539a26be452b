//! Splicing image features into token embeddings; the tokenizer wrapper.

use burn::prelude::*;
use harness::backend::Compute;
use harness::model::checkpoint::read_all_f32;
use harness::model::phi::Phi;
use harness::model::projector::{ProjectorConfig, ProjectorKind};
use harness::model::tokenizer::Tokenizer;
use harness::model::vlm::{splice, Source, IMAGE_TOKEN};

use super::model_parity::{fixtures, max_abs};

type B = Compute;

fn vals<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[test]
fn model_splice_places_images_and_pads() {
    let device = Default::default();
    let (lm, _) = Phi::<B>::from_dir(&fixtures().join("phi_f32"), &device).unwrap();
    let (patches, d) = (3, 64);
    let images = Tensor::<B, 3>::random(
        [2, patches, d],
        burn::tensor::Distribution::Default,
        &device,
    );
    let rows = vec![vec![5, 6, IMAGE_TOKEN, 7], vec![IMAGE_TOKEN, 9]];
    let s = splice(&lm, &rows, images.clone(), 0);
    assert_eq!(s.embeds.dims(), [2, 6, d]);
    assert_eq!(
        s.sources[0],
        vec![
            Source::Token(0),
            Source::Token(1),
            Source::Image { image: 0, patch: 0 },
            Source::Image { image: 0, patch: 1 },
            Source::Image { image: 0, patch: 2 },
            Source::Token(3)
        ]
    );
    assert_eq!(s.sources[1][4], Source::Pad);
    assert_eq!(
        s.mask.clone().into_data().to_vec::<bool>().unwrap(),
        vec![true, true, true, true, true, true, true, true, true, true, false, false]
    );
    let e = s.embeds.clone();
    let img1 = vals(images.clone().slice([1..2, 0..patches, 0..d]));
    assert_eq!(vals(e.clone().slice([1..2, 0..3, 0..d])), img1);
    let tok7 = vals(lm.embed(Tensor::from_data(
        TensorData::new(vec![7i64], [1, 1]),
        &device,
    )));
    assert_eq!(vals(e.clone().slice([0..1, 5..6, 0..d])), tok7);

    // Padding does not change the real positions' logits.
    let full = lm.forward_embeds(s.embeds, Some(s.mask), None);
    let alone = splice(&lm, &rows[1..], images.slice([1..2, 0..patches, 0..d]), 0);
    let alone = lm.forward_embeds(alone.embeds, None, None);
    let v = full.dims()[2];
    let err = max_abs(&vals(full.slice([1..2, 0..4, 0..v])), &vals(alone));
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn model_projector_feeds_the_lm() {
    let device = Default::default();
    let (lm, cfg) = Phi::<B>::from_dir(&fixtures().join("phi_f32"), &device).unwrap();
    for kind in [ProjectorKind::Residual, ProjectorKind::Mlp2xGelu] {
        let p = ProjectorConfig::new(32, cfg.hidden_size)
            .with_depth(2)
            .with_kind(kind)
            .init::<B>(&device);
        let feats =
            Tensor::<B, 3>::random([1, 16, 32], burn::tensor::Distribution::Default, &device);
        let s = splice(&lm, &[vec![1, IMAGE_TOKEN, 2]], p.forward(feats), 0);
        let logits = lm.forward_embeds(s.embeds, Some(s.mask), None);
        assert_eq!(logits.dims(), [1, 18, cfg.vocab_size]);
    }
}

#[test]
fn model_tokenizer_matches_hf_tokenizers() {
    let dir = fixtures().join("phi_f32");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.eos_id, Some(0));
    assert_eq!(tok.pad_id, Some(0));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("ref/tokenizer_texts.json")).unwrap(),
    )
    .unwrap();
    let refs = read_all_f32(&fixtures().join("ref/tokenizer.safetensors")).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let ids = tok.encode(t).unwrap();
        let want: Vec<u32> = refs[&format!("text{i}")]
            .1
            .iter()
            .map(|&x| x as u32)
            .collect();
        assert_eq!(ids, want, "{t:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), *t);
    }
}

#[test]
fn model_fill_image_slots_matches_splice() {
    // The two layouts (marker ids vs expanded slots) give the same embeddings and logits.
    use harness::model::vlm::{fill_image_slots, llava_logits};
    let device = Default::default();
    let (lm, cfg) = Phi::<B>::from_dir(&fixtures().join("phi_f32"), &device).unwrap();
    let proj = ProjectorConfig::new(8, cfg.hidden_size)
        .with_depth(1)
        .init::<B>(&device);
    let feats = Tensor::<B, 3>::random([2, 3, 8], burn::tensor::Distribution::Default, &device);
    let projected = proj.forward(feats.clone());
    let marker_rows = vec![vec![5, IMAGE_TOKEN, 7, 8], vec![9, 10, IMAGE_TOKEN]];
    let s = splice(&lm, &marker_rows, projected.clone(), 0);
    // Expanded layout: slots hold the pad id 0, right padding to length 6.
    let ids = vec![5i64, 0, 0, 0, 7, 8, 9, 10, 0, 0, 0, 0];
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 6]), &device);
    let mask = vec![1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [2, 6]), &device);
    let starts = [Some(1), Some(2)];
    let filled = fill_image_slots(lm.embed(ids.clone()), projected, &starts);
    assert_eq!(vals(filled), vals(s.embeds.clone()));
    let a = llava_logits(&lm, &proj, ids, mask, feats, &starts);
    let b = lm.forward_embeds(s.embeds, Some(s.mask), None);
    assert!(max_abs(&vals(a), &vals(b)) <= 1e-6);
}
