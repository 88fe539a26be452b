//! `harness pretrain lm`: the folder it writes loads through the ordinary HF loaders and
//! computes what the trained model does; its tokenizer round-trips text; the loss falls;
//! documents are laid out exactly as stage 2 lays out the conversation.

use burn::prelude::*;
use harness::backbones::LmPretrainOptions;
use harness::backend::Compute;
use harness::data::sequence::{ChatTemplate, SequenceBuilder};
use harness::data::synth::{generate, SynthOptions};
use harness::model::checkpoint::{read_all_f32, Checkpoint};
use harness::model::lora::LoraConfig;
use harness::model::phi::{Phi, PhiConfig};
use harness::model::tokenizer::Tokenizer;
use harness::pretrain::lm::{pretrain_lm, step_docs, Corpus, Doc, EOS};

fn values(t: Tensor<Compute, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// A synthetic world of `images` 32-px images in `dir/w`.
fn world(dir: &std::path::Path, images: usize, seed: u64) -> std::path::PathBuf {
    let world = dir.join("w");
    generate(
        &world,
        &SynthOptions {
            images,
            size: 32,
            seed,
            val_fraction: 0.25,
            threads: 2,
        },
    )
    .unwrap();
    world
}

/// A 1-layer d-32 Phi with a 300-token vocabulary, `steps` steps of 8 documents.
fn tiny(world: &std::path::Path, out: &std::path::Path, steps: u64) -> LmPretrainOptions {
    LmPretrainOptions {
        world: world.to_path_buf(),
        out: out.to_path_buf(),
        d_model: 32,
        layers: 1,
        heads: 4,
        vocab: 300,
        steps,
        batch: 8,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn pretrain_lm_round_trips_and_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let world = world(tmp.path(), 60, 5);
    let out = tmp.path().join("lm");
    let o = tiny(&world, &out, 30);
    let r = pretrain_lm(&o).unwrap();

    // Only the finished folder is left (the temporary one was renamed).
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["lm", "w"]);

    // The stages' loaders read it like an HF Phi checkpoint.
    let cfg = PhiConfig::load(&out).unwrap();
    assert_eq!(cfg, r.config);
    assert_eq!(cfg.vocab_size, 300);
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id),
        (Some(0), Some(0), Some(0))
    );
    let dev = Default::default();
    let lm = Phi::<Compute>::load_with(
        &Checkpoint::open(&out).unwrap(),
        &cfg,
        &dev,
        &LoraConfig::frozen(),
    )
    .unwrap();
    let tensors = read_all_f32(&out.join("model.safetensors")).unwrap();
    assert_eq!(tensors.len(), 1 + 14 + 2 + 2, "{:?}", tensors.keys());
    assert_eq!(tensors["model.layers.0.mlp.fc1.weight"].0, vec![128, 32]);
    assert_eq!(tensors["lm_head.weight"].0, vec![300, 32]);
    assert!(tensors.contains_key("model.layers.0.input_layernorm.bias"));

    // The tokenizer: id 0 is the end token, and text comes back exactly.
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.token_to_id(EOS), Some(0));
    assert_eq!(tok.vocab_size(), 300);
    let train = Corpus::load(&world, "train", "llava_instruct_150k.json").unwrap();
    let template = ChatTemplate::default();
    let caption = &train.captions[0][0];
    let ctx = train.captions[0].join(" ");
    let conv = Doc::conversation(&template, &ctx, &train.conversations[0]);
    for text in [
        caption.clone(),
        conv.text(),
        format!("  two\n\nspaces \t{EOS}x"),
    ] {
        let ids = tok.encode(&text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(
        tok.decode(&conv.ids(&tok).unwrap(), false).unwrap(),
        conv.text()
    );

    // A conversation document is stage 2's sequence with the captions at the image slot.
    let builder = SequenceBuilder::new(&tok, template.clone(), EOS, 1, 100_000, 0).unwrap();
    let c = &train.conversations[0];
    let seq = builder.conversation(c).unwrap();
    let slot = seq.image_positions();
    let mut expect = seq.input_ids[..slot.start].to_vec();
    expect.extend(tok.encode(&ctx).unwrap());
    expect.extend(&seq.input_ids[slot.end..]);
    assert_eq!(conv.ids(&tok).unwrap(), expect);

    // Length groups: the 4 steps of a group share one draw of 4 x 8 documents, cut by
    // length into batches that do not overlap; without groups a step draws its own 8.
    let g = LmPretrainOptions {
        length_groups: 4,
        ..o.clone()
    };
    let mut group: Vec<Vec<Vec<u32>>> = (0..4)
        .map(|s| step_docs(&g, &template, &train, &tok, s).unwrap())
        .collect();
    assert!(group.iter().all(|b| b.len() == 8));
    group.sort_by_key(|b| b.iter().map(Vec::len).min());
    for w in group.windows(2) {
        let longest = w[0].iter().map(Vec::len).max().unwrap();
        assert!(longest <= w[1].iter().map(Vec::len).min().unwrap());
    }
    assert_ne!(
        step_docs(&g, &template, &train, &tok, 4).unwrap(),
        group[0],
        "the next group draws anew"
    );
    let plain = step_docs(&o, &template, &train, &tok, 0).unwrap();
    assert_eq!(plain.len(), 8);
    assert_eq!(plain, step_docs(&o, &template, &train, &tok, 0).unwrap());

    // Reloaded logits equal the trained model's.
    let ids = conv.ids(&tok).unwrap();
    let n = ids.len();
    let ids = Tensor::<Compute, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
        &dev,
    );
    let a = values(r.lm.forward(ids.clone(), None));
    let b = values(lm.forward(ids, None));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-6, "logits differ by {diff} after save + load");

    // Learning, and the report.
    assert!(
        r.final_loss < r.first_loss,
        "loss {} -> {}",
        r.first_loss,
        r.final_loss
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pretrain.json")).unwrap()).unwrap();
    assert_eq!(json["options"]["d_model"], 32);
    assert!(json["final_loss"].is_number());
    assert!(json["text_context_qa"]["overall"].is_number());
    assert!(out.join("generation_config.json").exists());
}

/// Data-parallel pretraining: 2 and 3 workers (shares of 4 and 3/3/2 documents) make the
/// updates one worker makes with the whole batch, up to the order of float sums.
#[test]
fn pretraining_on_several_workers_equals_one_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let world = world(tmp.path(), 40, 7);
    let run = |workers: usize| {
        let out = tmp.path().join(format!("lm{workers}"));
        let o = LmPretrainOptions {
            length_groups: 2,
            workers,
            ..tiny(&world, &out, 8)
        };
        let r = pretrain_lm(&o).unwrap();
        (
            r.losses,
            read_all_f32(&out.join("model.safetensors")).unwrap(),
        )
    };
    let (losses1, weights1) = run(1);
    assert_eq!(losses1.len(), 8);
    for workers in [2, 3] {
        let (losses, weights) = run(workers);
        for (step, (a, b)) in losses1.iter().zip(&losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs(),
                "{workers} workers, step {step}: loss {a} vs {b}"
            );
        }
        assert_eq!(
            weights.keys().collect::<Vec<_>>(),
            weights1.keys().collect::<Vec<_>>()
        );
        for (name, (shape, w)) in &weights {
            let (shape1, w1) = &weights1[name];
            assert_eq!(shape, shape1, "{name}");
            let diff = w
                .iter()
                .zip(w1)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "{workers} workers: {name} differs by {diff}");
        }
    }
}
