//! One optimizer step of stage 1 and of stage 2 against PyTorch + transformers (+ peft for
//! stage 2) (scripts/ref_train.py): same tiny Phi, same projector and adapter weights, same
//! batch.

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;

use harness::backend::Train;
use harness::data::batch::{LlavaBatch, Targets};
use harness::model::checkpoint::{read_all_f32, Checkpoint};
use harness::model::lora::{LoraAdapter, LoraConfig};
use harness::model::nf4::Nf4Config;
use harness::model::phi::{Phi, PhiConfig};
use harness::model::projector::{Projector, ProjectorConfig};
use harness::train::{forward, grads, loss::masked_lm_loss};

const DIR: &str = "tests/fixtures/train";

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

use harness::model::checkpoint::F32Tensors as Refs;

/// A `[b, l]` integer tensor of the fixture (ids, labels, masks are stored as f32).
fn ints(refs: &Refs, k: &str, dev: &burn::tensor::Device<Train>) -> Tensor<Train, 2, Int> {
    let (s, v) = &refs[k];
    Tensor::from_data(
        TensorData::new(
            v.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            [s[0], s[1]],
        ),
        dev,
    )
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn stage1_step_matches_pytorch() {
    let dev = Default::default();
    let refs = read_all_f32(std::path::Path::new(&format!("{DIR}/step1.safetensors"))).unwrap();
    let hp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/step1.json")).unwrap())
            .unwrap();
    let (lm, lm_cfg) = Phi::<Train>::from_dir(format!("{DIR}/phi").as_ref(), &dev).unwrap();
    let lm = lm.no_grad();
    let (fshape, feats) = &refs["features"];
    let cfg = ProjectorConfig::new(fshape[2], lm_cfg.hidden_size).with_depth(1);
    let ckpt = Checkpoint::open_file(format!("{DIR}/step1.safetensors")).unwrap();
    let projector: Projector<Train> = Projector::load(&ckpt, "projector", &cfg, &dev).unwrap();

    let ints = |k: &str| ints(&refs, k, &dev);
    let [b, l] = [refs["input_ids"].0[0], refs["input_ids"].0[1]];
    let batch = LlavaBatch::<Train> {
        input_ids: ints("input_ids"),
        targets: Targets::of(&ints("labels")),
        labels: ints("labels"),
        attention_mask: ints("attention_mask"),
        image_features: Tensor::from_data(
            TensorData::new(feats.clone(), [fshape[0], fshape[1], fshape[2]]),
            &dev,
        ),
        image_start: vec![Some(0); b],
        ids: vec![String::new(); b],
        lengths: vec![l; b],
    };
    let (loss, _) = masked_lm_loss(forward(&projector, &lm, &batch), batch.labels.clone());
    let loss_v = loss.clone().into_scalar().elem::<f32>();
    let ref_loss = refs["loss"].1[0];
    assert!(
        (loss_v - ref_loss).abs() <= 1e-4,
        "loss {loss_v} vs PyTorch {ref_loss}"
    );

    let mut g = GradientsParams::from_grads(loss.backward(), &projector);
    let norm = grads::clip_global_norm::<Train, _>(
        &projector,
        &mut g,
        hp["clip_grad_norm"].as_f64().unwrap(),
    );
    let ref_norm = refs["grad_norm"].1[0] as f64;
    assert!(
        (norm - ref_norm).abs() <= 1e-4 * ref_norm.max(1.0),
        "grad norm {norm} vs {ref_norm}"
    );
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
        (
            "input.bias",
            values(after.input.bias.clone().unwrap().val()),
        ),
        (
            "blocks.0.norm.weight",
            values(after.blocks[0].norm.gamma.val()),
        ),
        (
            "blocks.0.norm.bias",
            values(after.blocks[0].norm.beta.clone().unwrap().val()),
        ),
        ("blocks.0.w1.weight", t(after.blocks[0].w1.weight.val())),
        (
            "blocks.0.w1.bias",
            values(after.blocks[0].w1.bias.clone().unwrap().val()),
        ),
        ("blocks.0.w2.weight", t(after.blocks[0].w2.weight.val())),
        (
            "blocks.0.w2.bias",
            values(after.blocks[0].w2.bias.clone().unwrap().val()),
        ),
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
    eprintln!(
        "stage-1 step parity: loss err {:.2e}, grad norm err {:.2e}, worst weight err {worst:.2e}",
        (loss_v - ref_loss).abs(),
        (norm - ref_norm).abs()
    );
}

/// One stage-2 step as `train::run_stage` takes it (one micro-batch): forward, masked loss,
/// backward, the projector's and the adapters' gradients split, one global norm over both for
/// clipping, then each through its own AdamW with its own learning rate. The reference is
/// peft's LoRA on the same Phi (`case` "nf4": on bitsandbytes' NF4 round trip of its linears).
fn stage2_step(case: &str) {
    let dev = Default::default();
    let file = format!("{DIR}/step2_{case}.safetensors");
    let refs = read_all_f32(std::path::Path::new(&file)).unwrap();
    let hp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/step2_{case}.json")).unwrap())
            .unwrap();
    let num = |k: &str| {
        hp[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in step2_{case}.json"))
    };

    let quant = match hp["quant"].as_str().unwrap() {
        "lora" => None,
        "nf4" => Some(Nf4Config {
            blocksize: num("blocksize") as usize,
            double_quant: hp["double_quant"].as_bool().unwrap(),
            ..Nf4Config::default()
        }),
        other => panic!("unknown quant {other}"),
    };
    let lora = LoraConfig {
        rank: num("rank") as usize,
        alpha: num("alpha"),
        dropout: num("dropout"),
        targets: hp["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect(),
        quant,
    };
    assert_eq!(lora.dropout, 0.0, "parity needs dropout off");

    let phi_dir = format!("{DIR}/phi");
    let lm_cfg = PhiConfig::load(phi_dir.as_ref()).unwrap();
    let lm = Phi::<Train>::load_with(&Checkpoint::open(&phi_dir).unwrap(), &lm_cfg, &dev, &lora)
        .unwrap();

    // The NF4 base dequantizes to bitwise what bitsandbytes' round trip gave the reference.
    if lora.quant.is_some() {
        for (i, layer) in lm.layers.iter().enumerate() {
            for (name, lin) in layer.linears() {
                let q = lin
                    .base
                    .nf4()
                    .unwrap_or_else(|| panic!("layer {i} {name} is not NF4"));
                let theirs = &refs[&format!("deq.model.layers.{i}.{name}")].1;
                let ours = q.dequantize();
                let differ = ours
                    .iter()
                    .zip(theirs)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "layer {i} {name}: {differ} dequantized weights differ from bitsandbytes'"
                );
            }
        }
    }

    // The reference's adapters (seeded random A and B), then everything else frozen.
    let mut adapters = lm.adapters();
    for (i, layer) in adapters.layers.iter_mut().enumerate() {
        for (name, slot) in layer.slots_mut() {
            let key = format!("lora.model.layers.{i}.{name}");
            let (sa, a) = &refs[&format!("{key}.A")];
            let (sb, b) = &refs[&format!("{key}.B")];
            assert!(slot.is_some(), "{key} has no adapter");
            *slot = Some(LoraAdapter::from_peft(a, b, sa[1], sb[0], &lora, &dev));
        }
    }
    let lm = lm.with_adapters(adapters).freeze_base();

    let (fshape, feats) = &refs["features"];
    let cfg = ProjectorConfig::new(fshape[2], lm_cfg.hidden_size).with_depth(num("depth") as usize);
    let projector: Projector<Train> = Projector::load(
        &Checkpoint::open_file(&file).unwrap(),
        "projector",
        &cfg,
        &dev,
    )
    .unwrap();

    let ints = |k: &str| ints(&refs, k, &dev);
    let [b, l] = [refs["input_ids"].0[0], refs["input_ids"].0[1]];
    let starts: Vec<Option<usize>> = refs["image_start"]
        .1
        .iter()
        .map(|&s| Some(s as usize))
        .collect();
    assert_eq!(starts.len(), b);
    let lengths = refs["attention_mask"]
        .1
        .chunks(l)
        .map(|r| r.iter().filter(|&&m| m == 1.0).count())
        .collect();
    let batch = LlavaBatch::<Train> {
        input_ids: ints("input_ids"),
        targets: Targets::of(&ints("labels")),
        labels: ints("labels"),
        attention_mask: ints("attention_mask"),
        image_features: Tensor::from_data(
            TensorData::new(feats.clone(), [fshape[0], fshape[1], fshape[2]]),
            &dev,
        ),
        image_start: starts,
        ids: vec![String::new(); b],
        lengths,
    };
    let (loss, _) = masked_lm_loss(forward(&projector, &lm, &batch), batch.labels.clone());
    let loss_v = loss.clone().into_scalar().elem::<f32>();
    let ref_loss = refs["loss"].1[0];
    let loss_err = (loss_v - ref_loss).abs();
    assert!(
        loss_err <= 1e-4,
        "{case}: loss {loss_v} vs PyTorch {ref_loss}"
    );

    let mut g = loss.backward();
    let mut gp = GradientsParams::from_module(&mut g, &projector);
    let mut gl = GradientsParams::from_module(&mut g, &lm);
    let n_adapters = 6 * lm_cfg.num_hidden_layers;
    assert_eq!(
        gl.len(),
        2 * n_adapters,
        "{case}: only the adapters' A and B get gradients in Phi"
    );
    let np = grads::global_norm::<Train, _>(&projector, &gp);
    let nl = grads::global_norm::<Train, _>(&lm, &gl);
    let norm = (np * np + nl * nl).sqrt();
    let ref_norm = refs["grad_norm"].1[0] as f64;
    let norm_err = (norm - ref_norm).abs();
    assert!(
        norm_err <= 1e-4 * ref_norm.max(1.0),
        "{case}: grad norm {norm} vs {ref_norm}"
    );
    let clip = num("clip_grad_norm");
    assert!(norm > clip, "the fixture's step must clip");
    let f = clip / (norm + 1e-6);
    grads::scale::<Train, _>(&projector, &mut gp, f);
    grads::scale::<Train, _>(&lm, &mut gl, f);

    let adamw = || {
        AdamWConfig::new()
            .with_beta_1(num("beta1") as f32)
            .with_beta_2(num("beta2") as f32)
            .with_epsilon(num("eps") as f32)
            .with_weight_decay(num("weight_decay") as f32)
    };
    let after_p =
        adamw()
            .init::<Train, Projector<Train>>()
            .step(num("projector_lr"), projector, gp);
    let after_l = adamw().init::<Train, Phi<Train>>().step(num("lr"), lm, gl);

    let t = |w: Tensor<Train, 2>| values(w.transpose());
    let p = &after_p;
    let mut pairs: Vec<(String, Vec<f32>)> = vec![
        ("projector.input.weight".into(), t(p.input.weight.val())),
        (
            "projector.input.bias".into(),
            values(p.input.bias.clone().unwrap().val()),
        ),
        (
            "projector.blocks.0.norm.weight".into(),
            values(p.blocks[0].norm.gamma.val()),
        ),
        (
            "projector.blocks.0.norm.bias".into(),
            values(p.blocks[0].norm.beta.clone().unwrap().val()),
        ),
        (
            "projector.blocks.0.w1.weight".into(),
            t(p.blocks[0].w1.weight.val()),
        ),
        (
            "projector.blocks.0.w1.bias".into(),
            values(p.blocks[0].w1.bias.clone().unwrap().val()),
        ),
        (
            "projector.blocks.0.w2.weight".into(),
            t(p.blocks[0].w2.weight.val()),
        ),
        (
            "projector.blocks.0.w2.bias".into(),
            values(p.blocks[0].w2.bias.clone().unwrap().val()),
        ),
    ];
    for (i, layer) in after_l.layers.iter().enumerate() {
        for (name, lin) in layer.linears() {
            let (a, b) = lin.lora.as_ref().unwrap().to_peft();
            pairs.push((format!("lora.model.layers.{i}.{name}.A"), a));
            pairs.push((format!("lora.model.layers.{i}.{name}.B"), b));
        }
    }
    let (mut worst, mut worst_key) = (0f32, String::new());
    for (k, ours) in pairs {
        let before = &refs[&k].1;
        let theirs = &refs[&format!("after.{k}")].1;
        assert!(max_abs(before, theirs) > 1e-4, "{k} must move in one step");
        let e = max_abs(&ours, theirs);
        if e > worst {
            (worst, worst_key) = (e, k.clone());
        }
        assert!(
            e <= 1e-5,
            "{case}: {k}: max abs error {e} after one AdamW step"
        );
    }
    eprintln!(
        "stage-2 step parity ({case}): loss err {loss_err:.2e}, grad norm err {norm_err:.2e}, worst weight err {worst:.2e} ({worst_key})"
    );
}

#[test]
fn stage2_step_matches_pytorch_lora() {
    stage2_step("lora");
}

#[test]
fn stage2_step_matches_pytorch_nf4() {
    stage2_step("nf4");
}

/// A small random Phi with adapters (NF4 base when `nf4`), a projector and a padded batch
/// whose rows have their image at different places.
fn recompute_case(nf4: bool, dropout: f64) -> (Projector<Train>, Phi<Train>, LlavaBatch<Train>) {
    let dev = Default::default();
    <Train as Backend>::seed(&dev, 7);
    let mut cfg = PhiConfig::new(64, 32, 64, 3, 4, 4).with_partial_rotary_factor(0.5);
    cfg.resid_pdrop = dropout;
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        quant: nf4.then(|| Nf4Config::default().with_double_quant(true)),
        ..LoraConfig::default()
    };
    let mut lm: Phi<Train> = cfg.init_with(&dev, &lora).freeze_base();
    // B starts at zero; give the adapters weight so their gradients flow back to x.
    for l in &mut lm.layers {
        for (_, x) in l.linears_mut() {
            if let Some(a) = &mut x.lora {
                let [r, o] = a.b.dims();
                a.b = burn::module::Param::from_tensor(
                    Tensor::random([r, o], burn::tensor::Distribution::Normal(0.0, 0.1), &dev)
                        .require_grad(),
                );
            }
        }
    }
    let projector: Projector<Train> = ProjectorConfig::new(8, 32).with_depth(1).init(&dev);
    let (b, l, p) = (3, 12, 4);
    let ids: Vec<i64> = (0..b * l).map(|i| (i * 7 % 60) as i64 + 1).collect();
    let mut labels = ids.clone();
    let mut mask = vec![1i64; b * l];
    let starts = vec![Some(1), Some(0), None];
    for r in 0..b {
        if let Some(s) = starts[r] {
            for j in s..s + p {
                labels[r * l + j] = -100;
            }
        }
        // Row 2 is padded after 8 tokens.
        if r == 2 {
            for j in 8..l {
                mask[r * l + j] = 0;
                labels[r * l + j] = -100;
            }
        }
    }
    let t = |v: Vec<i64>| Tensor::<Train, 2, Int>::from_data(TensorData::new(v, [b, l]), &dev);
    let batch = LlavaBatch {
        input_ids: t(ids),
        targets: Targets::of(&t(labels.clone())),
        labels: t(labels),
        attention_mask: t(mask),
        image_features: Tensor::random([b, p, 8], burn::tensor::Distribution::Default, &dev),
        image_start: starts,
        ids: vec![String::new(); b],
        lengths: vec![l; b],
    };
    (projector, lm, batch)
}

/// Every gradient of `a` and `b`, flattened in parameter order.
fn grad_values<M: burn::module::AutodiffModule<Train>>(
    m: &M,
    g: &GradientsParams,
) -> Vec<Vec<f32>> {
    struct Collect<'a> {
        g: &'a GradientsParams,
        out: Vec<Vec<f32>>,
    }
    impl burn::module::ModuleVisitor<Train> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<Train, D>>) {
            if let Some(t) = self.g.get::<harness::backend::Compute, D>(p.id) {
                self.out.push(values(t));
            }
        }
    }
    let mut c = Collect { g, out: vec![] };
    m.visit(&mut c);
    c.out
}

#[test]
fn per_layer_recomputation_gives_the_plain_gradients() {
    use harness::train::recompute::{micro_step, micro_step_plain, Draws};
    for (nf4, train_lm) in [(false, false), (false, true), (true, true)] {
        let (projector, lm, batch) = recompute_case(nf4, 0.0);
        let plain = micro_step_plain(&projector, &lm, &batch, 2.0, train_lm, 11, Draws::default());
        let lean = micro_step(&projector, &lm, &batch, 2.0, train_lm, 11, Draws::default());
        // Summed over the target tokens; compared as means, as before.
        let n = batch
            .labels
            .clone()
            .slice_dim(1, 1..)
            .not_equal_elem(-100)
            .int()
            .sum()
            .into_scalar() as f64;
        assert!(n > 0.0);
        assert!((plain.loss() - lean.loss()).abs() / n < 1e-6, "loss");
        let pairs = [
            (
                grad_values(&projector, &plain.projector),
                grad_values(&projector, &lean.projector),
            ),
            (grad_values(&lm, &plain.lm), grad_values(&lm, &lean.lm)),
        ];
        for (what, (a, b)) in ["projector", "adapters"].iter().zip(pairs) {
            assert_eq!(
                a.len(),
                b.len(),
                "{what}: the same parameters get gradients"
            );
            if *what == "adapters" {
                assert_eq!(
                    !a.is_empty(),
                    train_lm,
                    "adapters get gradients in stage 2 only"
                );
            } else {
                assert!(!a.is_empty());
            }
            for (x, y) in a.iter().zip(&b) {
                let err = max_abs(x, y);
                let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    err <= 1e-5 * scale.max(1.0),
                    "{what} nf4={nf4}: {err} (scale {scale})"
                );
            }
        }
    }
}

#[test]
fn per_layer_recomputation_draws_the_same_dropout_twice() {
    use harness::train::recompute::{micro_step, Draws};
    let (projector, lm, batch) = recompute_case(false, 0.3);
    let a = micro_step(&projector, &lm, &batch, 1.0, true, 5, Draws::default());
    let b = micro_step(&projector, &lm, &batch, 1.0, true, 5, Draws::default());
    let c = micro_step(&projector, &lm, &batch, 1.0, true, 6, Draws::default());
    let (ga, gb, gc) = (
        grad_values(&lm, &a.lm),
        grad_values(&lm, &b.lm),
        grad_values(&lm, &c.lm),
    );
    assert_eq!(ga, gb, "the same seed gives the same masks and gradients");
    assert_ne!(ga, gc, "another seed, other masks");
    // Had the recomputation drawn other masks than the forward, the gradients would not be
    // those of the loss it reports. With the seed fixing the masks, the loss along the
    // projector's gradient g must change at |g|^2 per unit step (central difference).
    let g = &a.projector;
    let norm2: f64 = grad_values(&projector, g)
        .iter()
        .flatten()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    let eps = 1e-2 / norm2.sqrt();
    let moved = |sign: f64| {
        struct Step<'a> {
            g: &'a GradientsParams,
            by: f64,
        }
        impl burn::module::ModuleMapper<Train> for Step<'_> {
            fn map_float<const D: usize>(
                &mut self,
                p: burn::module::Param<Tensor<Train, D>>,
            ) -> burn::module::Param<Tensor<Train, D>> {
                let id = p.id;
                match self.g.get::<harness::backend::Compute, D>(id) {
                    Some(d) => p.map(|t| t + Tensor::from_inner(d) * self.by),
                    None => p,
                }
            }
        }
        let p = projector.clone().map(&mut Step { g, by: sign * eps });
        micro_step(&p, &lm, &batch, 1.0, true, 5, Draws::default()).loss()
    };
    let slope = (moved(1.0) - moved(-1.0)) / (2.0 * eps);
    assert!(
        (slope - norm2).abs() <= 0.02 * norm2,
        "directional derivative {slope} vs |g|^2 {norm2}"
    );
    assert!(a.loss().is_finite() && a.loss() == b.loss());
}

/// The summed loss of a padded batch is the sum of its rows' losses, each alone and
/// unpadded: what lets data-parallel workers split a batch and add their sums.
#[test]
fn a_batchs_summed_loss_is_the_sum_over_its_rows_unpadded() {
    use harness::train::loss::summed_lm_loss;
    // On the autodiff backend, as training runs (its attention is its own op).
    let (projector, lm, batch) = recompute_case(false, 0.0);
    let whole =
        summed_lm_loss(forward(&projector, &lm, &batch), batch.labels.clone()).into_scalar() as f64;
    let mut rows = 0.0;
    for (r, len) in [(0usize, 12usize), (1, 12), (2, 8)] {
        let row = |t: &Tensor<Train, 2, Int>| t.clone().slice([r..r + 1, 0..len]);
        let b = LlavaBatch {
            input_ids: row(&batch.input_ids),
            targets: Targets::of(&row(&batch.labels)),
            labels: row(&batch.labels),
            attention_mask: row(&batch.attention_mask),
            image_features: batch.image_features.clone().slice_dim(0, r..r + 1),
            image_start: vec![batch.image_start[r]],
            ids: vec![String::new()],
            lengths: vec![len],
        };
        rows += summed_lm_loss(forward(&projector, &lm, &b), b.labels.clone()).into_scalar() as f64;
    }
    assert!(
        (whole - rows).abs() <= 1e-5 * whole.abs(),
        "whole batch {whole} vs rows {rows}"
    );
}
