//! Inference on finished runs: `harness caption`, `harness chat`, `harness export`, and the
//! exported adapter against transformers + peft (fixture from scripts/ref_export.py).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use burn::prelude::*;
use harness::backend::Compute;
use harness::data::instruct::{Conversation, QaTurn};
use harness::data::sequence::{ChatTemplate, SequenceBuilder};
use harness::data::synth::{generate, SynthOptions};
use harness::eval::session::chat_layout;
use harness::eval::Session;
use harness::model::checkpoint::{read_all_f32, Checkpoint, F32Tensors};
use harness::model::lora::LoraConfig;
use harness::model::peft;
use harness::model::phi::{Phi, PhiConfig};
use harness::model::probe::probe_lm_adapted;
use harness::model::projector::{Projector, ProjectorConfig};
use harness::model::tokenizer::Tokenizer;
use harness::store::Store;

use crate::common::{harness_train, repo_path, succeed, write};

const FIXTURE: &str = "tests/fixtures/export/tiny";
const LM: &str = "tests/fixtures/train/phi";

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn reference() -> F32Tensors {
    read_all_f32(&repo_path(FIXTURE).join("reference.safetensors")).unwrap()
}

fn fixture_projector_config() -> ProjectorConfig {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path(FIXTURE).join("projector_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["kind"], "residual");
    ProjectorConfig::new(
        v["d_vision"].as_u64().unwrap() as usize,
        v["d_lm"].as_u64().unwrap() as usize,
    )
    .with_depth(v["depth"].as_u64().unwrap() as usize)
}

/// The exported adapter, loaded back into the harness's Phi (f32 base), reproduces the
/// logits transformers + peft compute for it; so does the base without it, and the adapter
/// moves the logits far more than the tolerance (the check has teeth).
#[test]
fn exported_adapter_matches_peft_logits() {
    let r = reference();
    let ids: Vec<i64> = r["ids"].1.iter().map(|&x| x as i64).collect();
    let adapted = probe_lm_adapted(&repo_path(LM), Some(&repo_path(FIXTURE)), &ids).unwrap();
    let base = probe_lm_adapted(&repo_path(LM), None, &ids).unwrap();
    assert_eq!(adapted[0].1, r["logits"].0);
    let err = max_abs(&adapted[0].2, &r["logits"].1);
    let err_base = max_abs(&base[0].2, &r["base_logits"].1);
    let effect = max_abs(&r["logits"].1, &r["base_logits"].1);
    eprintln!(
        "peft parity: adapted max |err| {err:.3e}, base {err_base:.3e}, adapter effect {effect:.3}"
    );
    assert!(err <= 1e-4, "adapted logits differ from peft by {err}");
    assert!(
        err_base <= 1e-4,
        "base logits differ from transformers by {err_base}"
    );
    assert!(effect > 0.1, "the fixture adapter barely changes the logits ({effect}); the check would not see a broken import");
}

/// The exported projector (PyTorch layout) loads back and computes what torch computes.
#[test]
fn exported_projector_matches_torch() {
    let r = reference();
    let dev = Default::default();
    let ckpt = Checkpoint::open_file(repo_path(FIXTURE).join("projector.safetensors")).unwrap();
    let p: Projector<Compute> =
        Projector::load(&ckpt, "", &fixture_projector_config(), &dev).unwrap();
    let (shape, feats) = &r["features"];
    let x = Tensor::<Compute, 3>::from_data(
        TensorData::new(feats.clone(), [shape[0], shape[1], shape[2]]),
        &dev,
    );
    let y = p.forward(x).into_data().to_vec::<f32>().unwrap();
    let err = max_abs(&y, &r["projector_out"].1);
    eprintln!("projector parity: max |err| {err:.3e}");
    assert!(err <= 1e-5, "{err}");
}

/// Import then export gives back the same files' tensors bit for bit, and the same config.
#[test]
fn peft_import_export_round_trips_exactly() {
    let dev = Default::default();
    let dir = repo_path(FIXTURE);
    let (lm, _) = Phi::<Compute>::from_dir(&repo_path(LM), &dev).unwrap();
    let lm = peft::load_adapter(lm, &dir, &dev).unwrap();
    let cfg = peft::read_config(&dir).unwrap();
    let lora = cfg.to_lora().unwrap();
    let out = tempfile::tempdir().unwrap();
    let written = peft::write_adapter(
        out.path(),
        &lm.adapters(),
        &lora,
        cfg.base_model_name_or_path.as_deref().unwrap(),
    )
    .unwrap();
    assert_eq!(written, cfg);
    let a = read_all_f32(&dir.join(peft::WEIGHTS_FILE)).unwrap();
    let b = read_all_f32(&out.path().join(peft::WEIGHTS_FILE)).unwrap();
    assert_eq!(a.len(), 2 * 6 * 2, "2 layers x 6 targets x (A, B)");
    assert!(a.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(a.contains_key("base_model.model.model.layers.1.mlp.fc2.lora_B.weight"));
    assert_eq!(
        a["base_model.model.model.layers.0.mlp.fc1.lora_A.weight"].0,
        vec![8, 64]
    );
    assert_eq!(
        a["base_model.model.model.layers.0.mlp.fc1.lora_B.weight"].0,
        vec![128, 8]
    );
    assert_eq!(a, b);
    // The projector, too.
    let ckpt = Checkpoint::open_file(dir.join("projector.safetensors")).unwrap();
    let p: Projector<Compute> =
        Projector::load(&ckpt, "", &fixture_projector_config(), &dev).unwrap();
    let back: F32Tensors = p
        .to_torch()
        .into_iter()
        .map(|(k, s, v)| (k, (s, v)))
        .collect();
    assert_eq!(
        back,
        read_all_f32(&dir.join("projector.safetensors")).unwrap()
    );
}

#[test]
fn peft_import_rejects_what_it_cannot_reproduce() {
    let dev = Default::default();
    let (lm, _) = Phi::<Compute>::from_dir(&repo_path(LM), &dev).unwrap();
    let d = tempfile::tempdir().unwrap();
    for f in [peft::WEIGHTS_FILE, peft::CONFIG_FILE] {
        std::fs::copy(repo_path(FIXTURE).join(f), d.path().join(f)).unwrap();
    }
    let cfg_path = d.path().join(peft::CONFIG_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["use_dora"] = true.into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = peft::load_adapter(lm.clone(), d.path(), &dev).unwrap_err();
    assert!(format!("{e:#}").contains("use_dora"), "{e:#}");
    // A target list that misses modules the file has adapters for.
    v["use_dora"] = false.into();
    v["target_modules"] = serde_json::json!(["q_proj"]);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = peft::load_adapter(lm, d.path(), &dev).unwrap_err();
    assert!(format!("{e:#}").contains("fc1.lora_A"), "{e:#}");
}

/// The multi-turn chat prompt is the training sequence's prefix, token for token.
#[test]
fn chat_layout_is_the_training_layout() {
    let tok = Tokenizer::from_dir(&repo_path(LM)).unwrap();
    let image_tokens = 5;
    let pad = 0;
    for name in ["phi", "llava_v1"] {
        let template = ChatTemplate::named(name).unwrap();
        let b = SequenceBuilder::new(
            &tok,
            template.clone(),
            "<|endoftext|>",
            image_tokens,
            4096,
            pad,
        )
        .unwrap();
        let turns = [
            ("What color is the circle?", "red"),
            ("How many shapes are there?", "2"),
            ("Where is it?", "top left"),
        ];
        let conv = Conversation {
            id: "c".into(),
            image_name: Some("x.jpg".into()),
            image: Some(PathBuf::from("x.jpg")),
            turns: turns
                .iter()
                .map(|(q, a)| QaTurn {
                    question: q.to_string(),
                    answer: a.to_string(),
                    qtype: None,
                })
                .collect(),
        };
        let seq = b.conversation(&conv).unwrap();
        let end = vec![tok.token_to_id(&template.end).unwrap()];
        let mut past = vec![];
        for (i, (q, a)) in turns.iter().enumerate() {
            let l = chat_layout(&tok, &template, &end, &past, q).unwrap();
            let ids: Vec<u32> = l
                .before
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, image_tokens))
                .chain(l.after.iter().copied())
                .collect();
            // The prompt ends where turn i's answer starts (its first target).
            let starts: Vec<usize> = (1..seq.labels.len())
                .filter(|&t| seq.labels[t] >= 0 && seq.labels[t - 1] < 0)
                .collect();
            assert_eq!(
                ids.as_slice(),
                &seq.input_ids[..starts[i]],
                "{name}, turn {i}"
            );
            past.push((
                q.to_string(),
                tok.encode(&format!("{}{a}", template.answer_prefix))
                    .unwrap(),
            ));
        }
    }
}

fn world(dir: &Path) {
    let o = SynthOptions {
        images: 96,
        size: 32,
        seed: 3,
        val_fraction: 0.1,
        threads: 2,
    };
    generate(&dir.join("synth"), &o).unwrap();
}

fn exp(dir: &Path) -> PathBuf {
    let text = format!(
        r#"name = "infer"
seed = 5
[model]
vision = "{vision}"
lm = "{lm}"
projector_depth = 1
[data]
coco_root = "{root}/synth"
instruct_json = "{root}/synth/llava_instruct_150k.json"
val_images = 4
stage2_val = 8
max_len = 96
[stage1]
max_steps = 30
batch = 16
lr = 1e-2
warmup = 0.05
checkpoint_every = 0
[stage2]
max_steps = 4
batch = 8
lr = 1e-2
projector_lr = 1e-3
lora_rank = 8
lora_alpha = 16
checkpoint_every = 0
[eval]
caption_images = 2
qa_samples = 4
max_new_tokens = 12
gallery = 2
"#,
        vision = repo_path("tests/fixtures/models/clip_vision").display(),
        lm = repo_path(LM).display(),
        root = dir.display(),
    );
    write(dir, "infer.toml", &text)
}

fn run_ok(mut c: std::process::Command) -> String {
    let out = succeed(&mut c);
    String::from_utf8(out.stdout).unwrap()
}

fn chat_stdin(d: &Path, results: &Path, cache: &Path, image: &Path, input: &str) -> String {
    let mut child = harness_train(d, results, cache)
        .args(["chat", "--run", "infer", "--image"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Caption, chat (one question and multi-turn from stdin) and export on a tiny trained run:
/// outputs non-empty and deterministic, the CLI equal to the library, the multi-turn prompt
/// carrying the conversation, and the export equal to the run's checkpoint bit for bit.
#[test]
fn caption_chat_and_export_on_a_trained_run() {
    let d = tempfile::tempdir().unwrap();
    world(d.path());
    let (results, cache) = (d.path().join("results"), d.path().join("cache"));
    let f = exp(d.path());
    run_ok({
        let mut c = harness_train(d.path(), &results, &cache);
        c.arg("run").arg(&f);
        c
    });
    let val = d.path().join("synth/val2017");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&val)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let images = &images[..2];

    // caption: one `path<TAB>caption` line per image, twice the same.
    let caption = || {
        let mut c = harness_train(d.path(), &results, &cache);
        c.args(["caption", "--run", "infer"]).args(images);
        run_ok(c)
    };
    let out = caption();
    assert_eq!(out, caption(), "captions are deterministic");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (l, img) in lines.iter().zip(images) {
        let (p, text) = l
            .split_once('\t')
            .unwrap_or_else(|| panic!("no tab in {l:?}"));
        assert_eq!(p, img.display().to_string());
        assert!(!text.trim().is_empty(), "empty caption for {p}");
    }
    let store = Store::new(&results);
    let s = Session::load(&store, "infer").unwrap();
    assert_eq!(s.stage, 2);
    let lib = s.caption(images).unwrap();
    let cli: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once('\t').unwrap().1)
        .collect();
    assert_eq!(cli, lib.iter().map(String::as_str).collect::<Vec<_>>());
    // Stage 1's weights on request.
    let mut c = harness_train(d.path(), &results, &cache);
    c.args(["caption", "--run", "infer", "--stage", "1"])
        .arg(&images[0]);
    assert!(!run_ok(c).trim().is_empty());

    // chat: one question.
    let (q1, q2) = ("What color is the circle?", "How many shapes can you see?");
    let one = || {
        let mut c = harness_train(d.path(), &results, &cache);
        c.args(["chat", "--run", "infer", "--question", q1, "--image"])
            .arg(&images[0]);
        run_ok(c)
    };
    let a1 = one();
    assert_eq!(a1, one(), "answers are deterministic");
    assert!(!a1.trim().is_empty());
    assert_eq!(a1.lines().count(), 1);

    // chat: two turns from stdin (a blank line is skipped), ending at EOF.
    let input = format!("{q1}\n\n{q2}\n");
    let multi = chat_stdin(d.path(), &results, &cache, &images[0], &input);
    assert_eq!(
        multi,
        chat_stdin(d.path(), &results, &cache, &images[0], &input)
    );
    let answers: Vec<&str> = multi.lines().collect();
    assert_eq!(answers.len(), 2, "{multi:?}");
    assert_eq!(
        answers[0],
        a1.trim_end(),
        "the first turn is the single question"
    );
    assert!(!answers[1].trim().is_empty());
    let mut chat = s.chat(&images[0]).unwrap();
    let fresh = chat.layout(q2).unwrap();
    assert_eq!(chat.ask(q1).unwrap(), answers[0]);
    let second = chat.layout(q2).unwrap();
    assert!(
        second.after.len() > fresh.after.len()
            && second
                .after
                .ends_with(&fresh.after[fresh.after.len() - 3..]),
        "the second prompt carries the first turn"
    );
    assert_eq!(
        chat.ask(q2).unwrap(),
        answers[1],
        "CLI multi-turn equals the library's"
    );

    // export: the adapters and projector equal the run's checkpoint bit for bit.
    let ex = d.path().join("export");
    let mut c = harness_train(d.path(), &results, &cache);
    c.args(["export", "--run", "infer", "--out"]).arg(&ex);
    run_ok(c);
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "projector.safetensors",
        "projector_config.json",
        "README.md",
        "harness_run.toml",
    ] {
        assert!(ex.join(f).exists(), "{f} missing");
    }
    let card = std::fs::read_to_string(ex.join("README.md")).unwrap();
    assert!(
        card.contains(&s.run_id) && card.contains("stage2/eval/qa_acc"),
        "{card}"
    );
    let dev = Default::default();
    let cfg = PhiConfig::load(&repo_path(LM)).unwrap();
    let base = Phi::<Compute>::load_with(
        &Checkpoint::open(repo_path(LM)).unwrap(),
        &cfg,
        &dev,
        &LoraConfig::frozen(),
    )
    .unwrap();
    let imported = peft::load_adapter(base, &ex, &dev).unwrap();
    let a = peft::adapter_tensors(&imported.adapters());
    let b = peft::adapter_tensors(&s.lm.adapters());
    assert_eq!(a.len(), 24);
    assert_eq!(a, b, "export -> import gives the trained adapters exactly");
    let pc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ex.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(pc["peft_type"], "LORA");
    assert_eq!(pc["r"], 8);
    assert_eq!(pc["lora_alpha"], 16);
    assert_eq!(
        pc["base_model_name_or_path"],
        repo_path(LM).display().to_string()
    );
    let ckpt = Checkpoint::open_file(ex.join("projector.safetensors")).unwrap();
    let pcfg = ProjectorConfig::new(32, 64).with_depth(1);
    let p: Projector<Compute> = Projector::load(&ckpt, "", &pcfg, &dev).unwrap();
    assert_eq!(p.to_torch(), s.projector.to_torch());
}
