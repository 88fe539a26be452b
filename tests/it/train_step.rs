//! One optimizer step of stage 1 against PyTorch + transformers (scripts/ref_train.py):
//! same tiny Phi, same projector weights, same batch.

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;

use harness::backend::Train;
use harness::data::batch::LlavaBatch;
use harness::model::checkpoint::{read_all_f32, Checkpoint};
use harness::model::phi::Phi;
use harness::model::projector::{Projector, ProjectorConfig};
use harness::train::{forward, grads, loss::masked_lm_loss};

const DIR: &str = "tests/fixtures/train";

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn stage1_step_matches_pytorch() {
    let dev = Default::default();
    let refs = read_all_f32(std::path::Path::new(&format!("{DIR}/step1.safetensors"))).unwrap();
    let hp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/step1.json")).unwrap()).unwrap();
    let (lm, lm_cfg) = Phi::<Train>::from_dir(format!("{DIR}/phi").as_ref(), &dev).unwrap();
    let lm = lm.no_grad();
    let (fshape, feats) = &refs["features"];
    let cfg = ProjectorConfig::new(fshape[2], lm_cfg.hidden_size).with_depth(1);
    let ckpt = Checkpoint::open_file(format!("{DIR}/step1.safetensors")).unwrap();
    let projector: Projector<Train> = Projector::load(&ckpt, "projector", &cfg, &dev).unwrap();

    let ints = |k: &str| -> Tensor<Train, 2, Int> {
        let (s, v) = &refs[k];
        Tensor::from_data(TensorData::new(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), [s[0], s[1]]), &dev)
    };
    let [b, l] = [refs["input_ids"].0[0], refs["input_ids"].0[1]];
    let batch = LlavaBatch::<Train> {
        input_ids: ints("input_ids"),
        labels: ints("labels"),
        attention_mask: ints("attention_mask"),
        image_features: Tensor::from_data(TensorData::new(feats.clone(), [fshape[0], fshape[1], fshape[2]]), &dev),
        image_start: vec![Some(0); b],
        ids: vec![String::new(); b],
        lengths: vec![l; b],
        target_tokens: 0,
    };
    let (loss, _) = masked_lm_loss(forward(&projector, &lm, &batch), batch.labels.clone());
    let loss_v = loss.clone().into_scalar().elem::<f32>();
    let ref_loss = refs["loss"].1[0];
    assert!((loss_v - ref_loss).abs() <= 1e-4, "loss {loss_v} vs PyTorch {ref_loss}");

    let mut g = GradientsParams::from_grads(loss.backward(), &projector);
    let norm = grads::clip_global_norm::<Train, _>(&projector, &mut g, hp["clip_grad_norm"].as_f64().unwrap());
    let ref_norm = refs["grad_norm"].1[0] as f64;
    assert!((norm - ref_norm).abs() <= 1e-4 * ref_norm.max(1.0), "grad norm {norm} vs {ref_norm}");
    let mut optim = AdamWConfig::new()
        .with_beta_1(hp["beta1"].as_f64().unwrap() as f32)
        .with_beta_2(hp["beta2"].as_f64().unwrap() as f32)
        .with_epsilon(hp["eps"].as_f64().unwrap() as f32)
        .with_weight_decay(hp["weight_decay"].as_f64().unwrap() as f32)
        .init::<Train, Projector<Train>>();
    let after = optim.step(hp["lr"].as_f64().unwrap(), projector, g);

    // PyTorch Linear weights are [out, in]; burn's are [in, out].
    let t = |w: Tensor<Train, 2>| values(w.transpose());
    let pairs: Vec<(&str, Vec<f32>)> = vec![
        ("input.weight", t(after.input.weight.val())),
        ("input.bias", values(after.input.bias.clone().unwrap().val())),
        ("blocks.0.norm.weight", values(after.blocks[0].norm.gamma.val())),
        ("blocks.0.norm.bias", values(after.blocks[0].norm.beta.clone().unwrap().val())),
        ("blocks.0.w1.weight", t(after.blocks[0].w1.weight.val())),
        ("blocks.0.w1.bias", values(after.blocks[0].w1.bias.clone().unwrap().val())),
        ("blocks.0.w2.weight", t(after.blocks[0].w2.weight.val())),
        ("blocks.0.w2.bias", values(after.blocks[0].w2.bias.clone().unwrap().val())),
    ];
    let mut worst = 0f32;
    for (k, ours) in pairs {
        let before = &refs[&format!("projector.{k}")].1;
        let theirs = &refs[&format!("after.{k}")].1;
        assert!(max_abs(before, theirs) > 1e-5, "{k} must move in one step");
        let e = max_abs(&ours, theirs);
        worst = worst.max(e);
        assert!(e <= 1e-5, "{k}: max abs error {e} after one AdamW step");
    }
    eprintln!("stage-1 step parity: loss err {:.2e}, grad norm err {:.2e}, worst weight err {worst:.2e}", (loss_v - ref_loss).abs(), (norm - ref_norm).abs());
}
