//! `harness pretrain clip`: the tower it writes loads back through the ordinary HF loader
//! bit for bit, and contrastive training teaches it colours it was never told to classify.

use std::path::Path;

use burn::prelude::*;
use harness::backbones::ClipPretrainOptions;
use harness::backend::Compute;
use harness::data::synth::{generate, SynthOptions};
use harness::model::clip::{ClipVision, ClipVisionConfig, FeatureSelect};
use harness::model::preprocess::PreprocessConfig;
use harness::pretrain::clip::{load_split, pretrain_clip};

fn world(dir: &Path) {
    generate(
        dir,
        &SynthOptions {
            images: WORLD_IMAGES,
            size: 32,
            seed: 11,
            val_fraction: 0.25,
            threads: 2,
        },
    )
    .unwrap();
}

const WORLD_IMAGES: usize = 800;
const STEPS: u64 = 200;

fn values<const D: usize>(t: Tensor<Compute, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[test]
fn pretrain_clip_round_trips_and_learns_colours() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("w");
    world(&data);
    let out = tmp.path().join("clip");
    let o = ClipPretrainOptions {
        data: data.clone(),
        out: out.clone(),
        steps: STEPS,
        batch: 64,
        lr: 2e-3,
        threads: 2,
        log_every: 0,
        ..Default::default()
    };
    let r = pretrain_clip(&o).unwrap();

    // The folder is an HF CLIPVisionModel: config, weights, preprocessing.
    let dev = Default::default();
    let (tower, cfg) = ClipVision::<Compute>::from_dir(&out, &dev).unwrap();
    assert_eq!(cfg, r.vision_config);
    assert_eq!(ClipVisionConfig::load(&out).unwrap(), o.vision_config());
    assert_eq!(PreprocessConfig::load(&out).unwrap(), o.preprocess_config());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pretrain.json")).unwrap()).unwrap();
    assert!(json["zero_shot"]["color_acc"].is_number());

    // Round trip: the reloaded tower computes exactly what the trained one does, on the
    // LLaVA features (layer -2, patches) and on the pooled output.
    let val = load_split(&data, "val", &o.preprocess_config(), 2).unwrap();
    let idx: Vec<usize> = (0..val.len().min(16)).collect();
    let px = val.pixel_batch::<Compute>(&idx, o.image_size, &dev);
    let sel = FeatureSelect::new();
    let a = values(r.clip.vision.features(px.clone(), &sel));
    let b = values(tower.features(px.clone(), &sel));
    assert_eq!(a, b, "layer -2 features differ after save + load");
    assert_eq!(
        values(r.clip.vision.pooled(px.clone())),
        values(tower.pooled(px))
    );

    // Learning: the loss falls, and zero-shot colour on the val images is above chance.
    // Measured with these settings (`harness pretrain clip --data W --steps 200 --batch 64
    // --lr 2e-3` on this world): loss 4.14 -> 3.11, colour right on 0.470 of the 200 val
    // images where chance is 0.356 (0.280 on the 50 one-shape ones, chance 0.167). A short
    // test gets only that far; the default 300-step run on 2,000 images reaches 0.93 (see
    // pretrain.json). The bound keeps about half the measured margin.
    assert!(
        r.final_loss < r.first_loss - 0.5,
        "{} -> {}",
        r.first_loss,
        r.final_loss
    );
    let z = r.zero_shot.expect("zero-shot on the val split");
    eprintln!("zero-shot after {STEPS} steps: {z:?}");
    assert_eq!(z.images, 200, "{z:?}");
    assert!(z.color_acc_any >= z.color_chance_any + 0.05, "{z:?}");
}
