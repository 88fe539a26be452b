//! Loading errors name the file, the tensor and both shapes.

use std::collections::BTreeMap;
use std::path::Path;

use harness::backend::Compute;
use harness::model::checkpoint::{read_all_f32, write_f32_safetensors};
use harness::model::clip::ClipVision;
use harness::model::phi::Phi;

use super::model_parity::fixtures;

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    let device = Default::default();
    match Phi::<Compute>::from_dir(dir, &device) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn model_missing_config_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("config.json") && msg.contains("missing"),
        "{msg}"
    );
    let device = Default::default();
    let msg = format!(
        "{:#}",
        ClipVision::<Compute>::from_dir(tmp.path(), &device).unwrap_err()
    );
    assert!(
        msg.contains(&tmp.path().join("config.json").display().to_string()),
        "{msg}"
    );
}

#[test]
fn model_missing_weights_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("phi_f32/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn model_missing_key_and_wrong_shape_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("phi_f32"), tmp.path());
    let all = read_all_f32(&tmp.path().join("model.safetensors")).unwrap();

    // Drop one tensor.
    let kept: BTreeMap<_, _> = all
        .iter()
        .filter(|(k, _)| k.as_str() != "model.layers.1.mlp.fc2.bias")
        .collect();
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = kept
        .iter()
        .map(|(k, (s, v))| (k.as_str(), s.clone(), v.clone()))
        .collect();
    write_f32_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("model.layers.1.mlp.fc2.bias") && msg.contains("not found"),
        "{msg}"
    );

    // Wrong shape: the config says 100 but the weights have 128.
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = all
        .iter()
        .map(|(k, (s, v))| (k.as_str(), s.clone(), v.clone()))
        .collect();
    write_f32_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let cfg_path = tmp.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 100"),
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("model.layers.0.mlp.fc1.weight")
            && msg.contains("[128, 64]")
            && msg.contains("[100, 64]"),
        "{msg}"
    );
}

#[test]
fn model_wrong_dtype_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("phi_f32"), tmp.path());
    let all = read_all_f32(&tmp.path().join("model.safetensors")).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = all
        .iter()
        .map(|(k, (s, v))| {
            if k == "model.final_layernorm.weight" {
                // Stored as int32: not a float checkpoint.
                (
                    k.clone(),
                    s.clone(),
                    v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
                    safetensors::Dtype::I32,
                )
            } else {
                (
                    k.clone(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::F32,
                )
            }
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("model.final_layernorm.weight") && msg.contains("I32"),
        "{msg}"
    );
}

#[test]
fn phi_configs_we_would_compute_wrongly_are_refused() {
    use harness::model::phi::PhiConfig;
    let text = std::fs::read_to_string(fixtures().join("phi_f32/config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        PhiConfig::from_hf_json(&c)
    };
    let err = format!(
        "{:#}",
        with(
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0})
        )
        .unwrap_err()
    );
    assert!(
        err.contains("rope_scaling") && err.contains("linear"),
        "{err}"
    );
    assert!(with("rope_scaling", serde_json::Value::Null).is_ok());
    let err = format!("{:#}", with("attention_dropout", 0.1.into()).unwrap_err());
    assert!(err.contains("attention_dropout"), "{err}");
    let err = format!("{:#}", with("resid_pdrop", 1.5.into()).unwrap_err());
    assert!(err.contains("resid_pdrop"), "{err}");
    // microsoft/phi-2's dropout settings are read, and written back.
    let c = with("resid_pdrop", 0.1.into()).unwrap();
    assert_eq!((c.resid_pdrop, c.embd_pdrop), (0.1, 0.0));
    assert_eq!(c.to_hf_json()["resid_pdrop"], 0.1);
}

#[test]
fn phi_residual_dropout_applies_while_training_only() {
    use burn::module::AutodiffModule;
    use burn::prelude::*;
    use harness::backend::Train;
    use harness::model::phi::PhiConfig;
    let device = Default::default();
    let dir = fixtures().join("phi_f32");
    let mut cfg = PhiConfig::load(&dir).unwrap();
    let ckpt = harness::model::checkpoint::Checkpoint::open(&dir).unwrap();
    let plain = Phi::<Train>::load(&ckpt, &cfg, &device).unwrap();
    cfg.resid_pdrop = 0.5;
    let dropped = Phi::<Train>::load(&ckpt, &cfg, &device).unwrap();
    let ids =
        Tensor::<Train, 2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 3], [1, 4]), &device);
    let vals = |t: Tensor<Train, 3>| t.into_data().to_vec::<f32>().unwrap();
    let reference = vals(plain.forward(ids.clone(), None));
    // Training (autodiff): the branches are dropped, so the logits move.
    let train = vals(dropped.forward(ids.clone(), None));
    let moved = reference.iter().zip(&train).filter(|(a, b)| a != b).count();
    assert!(
        moved > reference.len() / 2,
        "{moved} of {} moved",
        reference.len()
    );
    // Evaluation (`valid()`, no autodiff): dropout is the identity (the inner backend's
    // kernels round differently from the autodiff ones in the 7th digit).
    let inner = ids.inner();
    let eval = dropped
        .valid()
        .forward(inner, None)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let err = eval
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err <= 1e-5, "{err}");
}
