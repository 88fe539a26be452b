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
