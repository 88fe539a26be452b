//! `harness synth backbone`: the CLI writes a Phi-2-shaped checkpoint (cut to one layer and a
//! 512-row vocabulary with the testing aids, every width real, sharded small so the index
//! path runs) that the harness's own loaders take as a Phi with Phi-2's dimensions; and the
//! world form `harness synth --out DIR` still works beside the new subcommand.

use burn::prelude::*;
use harness::backend::Compute;
use harness::model::checkpoint::Checkpoint;
use harness::model::phi::{Phi, PhiConfig};
use harness::model::tokenizer::Tokenizer;

use super::common::succeed;

#[test]
fn cli_writes_a_phi2_the_harness_loads_with_phi2s_dims() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phi-2");
    let run = succeed(
        std::process::Command::new(env!("CARGO_BIN_EXE_harness")).args([
            "synth",
            "backbone",
            "--like",
            "microsoft/phi-2",
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "1",
            "--shrink-layers",
            "1",
            "--shrink-vocab",
            "512",
            "--max-shard-size",
            "100MB",
            "--threads",
            "2",
        ]),
    );
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("wrote microsoft/phi-2 (19 tensors"), "{said}");

    // f16 bytes in state-dict order: embedding 2.6 MB, q/k/v/dense 13.1 MB each, fc1 and
    // fc2 52.4 MB, then small ones and lm_head 2.6 MB: 100 MB shards cut before fc1 and fc2.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for f in [
        "config.json",
        "generation_config.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} missing from {names:?}");
    }
    assert_eq!(names.len(), 12, "{names:?}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["weight_map"]["model.layers.0.mlp.fc1.weight"],
        "model-00002-of-00003.safetensors"
    );
    assert_eq!(
        index["weight_map"]["lm_head.weight"],
        "model-00003-of-00003.safetensors"
    );
    // f16 bytes of 2 x 512 x 2560 + 512 (embedding, lm_head) + 78,671,360 (the layer,
    // counted by hand for Phi-2) + 2 x 2560 (final LayerNorm) parameters.
    assert_eq!(index["metadata"]["total_size"], 162_596_864u64);

    let cfg = PhiConfig::load(&out).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (2560, 10240, 32, 32)
    );
    assert_eq!((cfg.num_hidden_layers, cfg.vocab_size), (1, 512));
    assert_eq!(cfg.partial_rotary_factor, 0.4);
    assert_eq!(cfg.rotary_dim(), 32);
    assert_eq!(cfg.eos_token_id, Some(50256));

    let ck = Checkpoint::open(&out).unwrap();
    assert_eq!(ck.names().len(), 19);
    let ln = ck
        .read_f32("model.layers.0.input_layernorm.weight", &[2560])
        .unwrap();
    assert!(ln.iter().all(|&x| x == 1.0));
    let w = ck
        .read_f32("model.layers.0.mlp.fc1.weight", &[10240, 2560])
        .unwrap();
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sd = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 26 M draws of N(0, 0.02), stored in f16.
    assert!(
        mean.abs() < 2e-5 && (sd - 0.02).abs() < 2e-5,
        "mean {mean} sd {sd}"
    );

    let dev = Default::default();
    let (lm, _) = Phi::<Compute>::from_dir(&out, &dev).unwrap();
    assert_eq!(lm.layers.len(), 1);
    assert_eq!(lm.rotary_dim, 32);
    assert_eq!(lm.embed_tokens.weight.val().dims(), [512, 2560]);
    assert_eq!(lm.lm_head.weight.val().dims(), [2560, 512]);
    let l = &lm.layers[0];
    assert_eq!((l.fc1.base.d_in(), l.fc1.base.d_out()), (2560, 10240));
    assert_eq!((l.q_proj.base.d_in(), l.q_proj.base.d_out()), (2560, 2560));
    let tok = Tokenizer::from_dir(&out).unwrap();
    let ids = tok.encode("Hello world").unwrap();
    assert_eq!(ids, [15496, 995]);
    assert_eq!(tok.eos_id, Some(50256));
    // One forward pass at the real width is finite.
    let ids =
        Tensor::<Compute, 2, Int>::from_data(TensorData::new(vec![1i64, 7, 300], [1, 3]), &dev);
    let logits = lm.forward(ids, None);
    assert_eq!(logits.dims(), [1, 3, 512]);
    let finite: Vec<f32> = logits.into_data().to_vec().unwrap();
    assert!(finite.iter().all(|x| x.is_finite()));
}

#[test]
fn synth_world_form_still_works_and_refuses_mixing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    succeed(
        std::process::Command::new(env!("CARGO_BIN_EXE_harness")).args([
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--images",
            "4",
            "--size",
            "32",
        ]),
    );
    assert!(out.join("annotations/captions_train2017.json").exists());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["synth", "backbone", "--like", "phi-3", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("unknown --like `phi-3`"), "{err}");
    assert!(!dir.path().join("x").exists());
}
