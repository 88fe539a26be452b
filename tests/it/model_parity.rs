//! Parity with transformers on the tiny random checkpoints written by
//! `scripts/ref_models.py` (tests/fixtures/models/). Each reference was computed by HF
//! loading that same folder, so f16/bf16 cases compare against HF on the same rounded weights.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::Bool;
use harness::backend::Compute;
use harness::model::checkpoint::read_all_f32;
use harness::model::clip::{ClipVision, FeatureSelect};
use harness::model::phi::{KvCache, Phi};
use harness::model::preprocess::{load_image, preprocess, PreprocessConfig};
use harness::model::probe;

type B = Compute;
const TOL: f32 = 1e-4;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn refs(name: &str) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_all_f32(&fixtures().join("ref").join(format!("{name}.safetensors"))).unwrap()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn vals<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// (model dir, case, image, pad to square)
const VISION_CASES: &[(&str, &str, &str, bool)] = &[
    ("clip_vision", "png", "landscape.png", false),
    ("clip_vision", "jpg", "portrait.jpg", false),
    ("clip_vision", "jpg420", "photo420.jpg", false),
    ("clip_vision", "png_square", "landscape.png", true),
    ("clip_full", "png", "landscape.png", false),
    ("clip_full", "jpg", "portrait.jpg", false),
    ("clip_full", "png_square", "landscape.png", true),
];

#[test]
fn model_preprocess_matches_clip_image_processor() {
    for &(model, case, image, pad) in VISION_CASES {
        let dir = fixtures().join(model);
        let mut cfg = PreprocessConfig::load(&dir).unwrap();
        cfg.pad_to_square = pad;
        let img = load_image(&fixtures().join("images").join(image)).unwrap();
        let px = preprocess(&img, &cfg);
        let r = refs(model);
        let (shape, want) = &r[&format!("{case}.pixel_values")];
        let (h, w) = cfg.output_size();
        assert_eq!(shape, &vec![3, h, w]);
        let err = max_abs(&px, want);
        let tv = r
            .get(&format!("{case}.pixel_values_torchvision"))
            .map(|(_, v)| max_abs(&px, v));
        println!("preprocess {model}/{case}: max abs err vs PIL backend {err:e}, vs torchvision backend {tv:?}");
        assert!(err <= 1e-6, "{model}/{case}: pixel values differ by {err}");
    }
}

#[test]
fn model_clip_hidden_states_match_hf() {
    let device = Default::default();
    for model in ["clip_vision", "clip_full"] {
        let (tower, cfg) = ClipVision::<B>::from_dir(&fixtures().join(model), &device).unwrap();
        let r = refs(model);
        for &(m, case, _, _) in VISION_CASES {
            if m != model {
                continue;
            }
            // Reference pixels in, so this checks the tower alone.
            let (_, px) = &r[&format!("{case}.pixel_values")];
            let s = cfg.image_size;
            let x = Tensor::<B, 4>::from_data(TensorData::new(px.clone(), [1, 3, s, s]), &device);
            let hs = tower.hidden_states(x.clone());
            assert_eq!(hs.len(), cfg.num_hidden_layers + 1);
            let n = hs.len();
            for (key, got) in [
                ("hidden_0", hs[0].clone()),
                ("hidden_m2", hs[n - 2].clone()),
                ("hidden_m1", hs[n - 1].clone()),
            ] {
                let err = max_abs(&vals(got), &r[&format!("{case}.{key}")].1);
                println!("clip {model}/{case} {key}: max abs err {err:e}");
                assert!(err <= TOL, "{model}/{case} {key}: {err}");
            }
            let err = max_abs(
                &vals(tower.pooled(x.clone())),
                &r[&format!("{case}.pooled")].1,
            );
            println!("clip {model}/{case} pooled: max abs err {err:e}");
            assert!(err <= TOL);
            // hidden_state(k) and features() agree with the full list.
            let m2 = vals(tower.hidden_state(x.clone(), -2));
            assert_eq!(m2, vals(hs[n - 2].clone()));
            let f = tower.features(x.clone(), &FeatureSelect::new());
            assert_eq!(f.dims(), [1, cfg.num_patches(), cfg.hidden_size]);
            let with_cls =
                tower.features(x, &FeatureSelect::new().with_with_cls(true).with_layer(-1));
            assert_eq!(vals(with_cls), vals(hs[n - 1].clone()));
        }
    }
}

#[test]
fn model_probe_vision_end_to_end() {
    // Rust preprocessing + tower, through the probe library function, against HF end to end.
    for &(model, case, image, pad) in VISION_CASES {
        if pad {
            continue; // the probe uses the checkpoint's own preprocessing (no LLaVA padding)
        }
        let out = probe::probe_vision(
            &fixtures().join(model),
            &fixtures().join("images").join(image),
        )
        .unwrap();
        let r = refs(model);
        for (name, shape, v) in &out {
            let key = format!("{case}.{name}");
            let (want_shape, want) = &r[&key];
            assert_eq!(shape, want_shape, "{key}");
            let err = max_abs(v, want);
            println!("probe vision {model}/{case} {name}: max abs err {err:e}");
            assert!(err <= TOL, "{key}: {err}");
        }
    }
}

const LM_CASES: &[&str] = &["phi_f32", "phi_f16", "phi_sharded_bf16"];

fn ids_tensor(
    ids: &[f32],
    shape: [usize; 2],
    device: &burn::tensor::Device<B>,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

#[test]
fn model_phi_logits_match_hf() {
    let device = Default::default();
    for name in LM_CASES {
        let (lm, cfg) = Phi::<B>::from_dir(&fixtures().join(name), &device).unwrap();
        assert_eq!(cfg.rope_theta, 1000.0, "{name}: config form not read");
        assert_eq!(cfg.rotary_dim(), 4, "{name}");
        let r = refs(name);
        let (_, ids) = &r["ids"];
        let t = ids.len();
        let logits = lm.forward(ids_tensor(ids, [1, t], &device), None);
        let err = max_abs(&vals(logits.clone()), &r["logits"].1);
        println!("phi {name} logits: max abs err {err:e}");
        assert!(err <= TOL, "{name}: {err}");

        // Padded batch with HF's attention mask (right padding).
        let (bs, bids) = &r["batch_ids"];
        let (_, bmask) = &r["batch_mask"];
        let shape = [bs[0], bs[1]];
        let mask: Vec<bool> = bmask.iter().map(|&m| m > 0.5).collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, shape), &device);
        let bl = lm.forward(ids_tensor(bids, shape, &device), Some(mask));
        let err = max_abs(&vals(bl), &r["batch_logits"].1);
        println!("phi {name} padded batch logits: max abs err {err:e}");
        assert!(err <= TOL, "{name} batch: {err}");

        // From input embeddings: the path the VLM uses.
        let emb = lm.embed(ids_tensor(ids, [1, t], &device));
        let le = lm.forward_embeds(emb, None, None);
        assert!(max_abs(&vals(le), &vals(logits)) <= 1e-6);
    }
}

#[test]
fn model_phi_kv_cache_matches_full_forward() {
    let device = Default::default();
    let (lm, cfg) = Phi::<B>::from_dir(&fixtures().join("phi_f32"), &device).unwrap();
    let r = refs("phi_f32");
    let (_, ids) = &r["ids"];
    let t = ids.len();
    let full = vals(lm.forward(ids_tensor(ids, [1, t], &device), None));
    let v = cfg.vocab_size;
    // A 4-token prompt, then one token at a time.
    let mut cache = KvCache::new(cfg.num_hidden_layers);
    let mut got = Vec::new();
    let emb = lm.embed(ids_tensor(&ids[..4], [1, 4], &device));
    got.extend(vals(lm.forward_embeds(emb, None, Some(&mut cache))));
    for i in 4..t {
        assert_eq!(cache.len(), i);
        let emb = lm.embed(ids_tensor(&ids[i..i + 1], [1, 1], &device));
        got.extend(vals(lm.forward_embeds(emb, None, Some(&mut cache))));
    }
    assert_eq!(got.len(), t * v);
    let err = max_abs(&got, &full);
    println!("phi kv cache vs full forward: max abs err {err:e}");
    assert!(err <= 1e-5, "{err}");
    assert!(max_abs(&got, &r["logits"].1) <= TOL);
}

#[test]
fn model_probe_lm_library_and_binary() {
    let r = refs("phi_f16");
    let ids: Vec<i64> = r["ids"].1.iter().map(|&x| x as i64).collect();
    let dir = fixtures().join("phi_f16");
    let out = probe::probe_lm(&dir, &ids).unwrap();
    assert_eq!(out.len(), 1);
    let (name, shape, v) = &out[0];
    assert_eq!(*name, "logits");
    assert_eq!(shape, &vec![ids.len(), 128]);
    assert!(max_abs(v, &r["logits"].1) <= TOL);

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lm.safetensors");
    let ids_arg: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["probe", "lm", "--model"])
        .arg(&dir)
        .args(["--ids", &ids_arg.join(","), "--out"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let written = read_all_f32(&path).unwrap();
    assert_eq!(written["logits"].0, vec![ids.len(), 128]);
    assert!(max_abs(&written["logits"].1, &r["logits"].1) <= TOL);

    let vpath = tmp.path().join("vision.safetensors");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["probe", "vision", "--model"])
        .arg(fixtures().join("clip_vision"))
        .arg("--image")
        .arg(fixtures().join("images/landscape.png"))
        .arg("--out")
        .arg(&vpath)
        .status()
        .unwrap();
    assert!(status.success());
    let written = read_all_f32(&vpath).unwrap();
    let rv = refs("clip_vision");
    for k in ["pixel_values", "hidden_m2", "hidden_m1"] {
        assert_eq!(written[k].0, rv[&format!("png.{k}")].0, "{k}");
        assert!(
            max_abs(&written[k].1, &rv[&format!("png.{k}")].1) <= TOL,
            "{k}"
        );
    }
}

#[test]
fn model_jpeg_decoder_matches_pil() {
    let r = read_all_f32(&fixtures().join("ref/jpeg_decoded.safetensors")).unwrap();
    for (name, (shape, want)) in &r {
        let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
        let img = harness::model::jpeg::decode_rgb(&bytes).unwrap();
        assert_eq!(
            vec![img.height() as usize, img.width() as usize, 3],
            *shape,
            "{name}"
        );
        let got: Vec<f32> = img.as_raw().iter().map(|&x| x as f32).collect();
        let differ = got.iter().zip(want).filter(|(a, b)| a != b).count();
        let err = max_abs(&got, want);
        println!(
            "jpeg {name}: {differ} of {} values differ from PIL, max {err}",
            got.len()
        );
        assert_eq!(differ, 0, "{name}: max level difference {err}");
    }
}

#[test]
fn model_bf16_compute_runs_close_to_f32() {
    // The compute dtype is the run's choice (bf16 on GPU): weights converted while loading.
    use burn::tensor::DType;
    use harness::model::checkpoint::Checkpoint;
    use harness::model::phi::PhiConfig;
    let device = Default::default();
    let dir = fixtures().join("phi_f32");
    let cfg = PhiConfig::load(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap().with_dtype(DType::BF16);
    let lm = Phi::<B>::load(&ckpt, &cfg, &device).unwrap();
    assert_eq!(lm.lm_head.weight.val().dtype(), DType::BF16);
    let r = refs("phi_f32");
    let (_, ids) = &r["ids"];
    let logits = lm.forward(ids_tensor(ids, [1, ids.len()], &device), None);
    assert_eq!(logits.dtype(), DType::BF16);
    let got = vals(logits);
    let want = &r["logits"].1;
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = max_abs(&got, want);
    println!("phi bf16 compute vs HF f32: max abs err {err:e} (logit scale {scale})");
    assert!(err <= 0.05 * scale, "{err} vs scale {scale}");

    let dir = fixtures().join("clip_vision");
    let vcfg = harness::model::clip::ClipVisionConfig::load(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap().with_dtype(DType::BF16);
    let tower = ClipVision::<B>::load(&ckpt, &vcfg, &device).unwrap();
    let r = refs("clip_vision");
    let (_, px) = &r["png.pixel_values"];
    let x = Tensor::<B, 4>::from_data(TensorData::new(px.clone(), [1, 3, 32, 32]), &device);
    let h = vals(tower.hidden_state(x, -2));
    let err = max_abs(&h, &r["png.hidden_m2"].1);
    println!("clip bf16 compute vs HF f32 hidden_m2: max abs err {err:e}");
    assert!(err <= 0.1, "{err}");
}

#[test]
fn model_phi_greedy_generation_uses_the_cache_correctly() {
    let device = Default::default();
    let (lm, _) = Phi::<B>::from_dir(&fixtures().join("phi_f32"), &device).unwrap();
    let prompt = [1i64, 17, 99, 3];
    let emb = lm.embed(Tensor::from_data(
        TensorData::new(prompt.to_vec(), [1, 4]),
        &device,
    ));
    let got = lm.generate_greedy(emb, 6, None);
    assert_eq!(got.len(), 6);
    // The same tokens by recomputing the whole sequence each step (no cache).
    let mut seq = prompt.to_vec();
    for _ in 0..6 {
        let n = seq.len();
        let logits = lm.forward(
            Tensor::from_data(TensorData::new(seq.clone(), [1, n]), &device),
            None,
        );
        let v = logits.dims()[2];
        let last = vals(logits.slice([0..1, n - 1..n, 0..v]));
        let best = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        seq.push(best as i64);
    }
    let want: Vec<u32> = seq[4..].iter().map(|&x| x as u32).collect();
    assert_eq!(got, want);
    // Stops at eos (inclusive).
    let emb = lm.embed(Tensor::from_data(
        TensorData::new(prompt.to_vec(), [1, 4]),
        &device,
    ));
    let stop = lm.generate_greedy(emb, 6, Some(want[1]));
    assert_eq!(stop, want[..2].to_vec());
}

#[test]
fn model_jpeg_decoder_survives_corrupt_files() {
    // Truncated and bit-flipped JPEGs must give an error or an image, never a panic.
    for name in ["photo420.jpg", "progressive.jpg", "photo422.jpg"] {
        let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
        for cut in (0..bytes.len()).step_by(7) {
            let _ = harness::model::jpeg::decode_rgb(&bytes[..cut]);
        }
        let mut rng = 12345u64;
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..3 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (rng >> 33) as usize % b.len();
                b[i] ^= 1 << ((rng >> 29) & 7);
            }
            let _ = harness::model::jpeg::decode_rgb(&b);
        }
    }
}
