//! Generation: KV cache vs recomputation, beam width 1 vs greedy, seeded sampling, and
//! the caption helper over projected image features.

use burn::prelude::*;
use burn::tensor::Distribution;
use harness::backend::Compute;
use harness::eval::{caption_images, generate, Decoding, GenerateOptions, PromptLayout};
use harness::model::phi::Phi;
use harness::model::projector::ProjectorConfig;
use harness::model::tokenizer::Tokenizer;

use super::common::repo_path;

type B = Compute;

fn model() -> (Phi<B>, Tokenizer) {
    let dir = repo_path("tests/fixtures/train/phi");
    let (lm, _) = Phi::<B>::from_dir(&dir, &Default::default()).unwrap();
    (lm, Tokenizer::from_dir(&dir).unwrap())
}

/// Prompt embeddings `[rows, t, d]` of equal-length token prompts.
fn prompts(lm: &Phi<B>, tok: &Tokenizer, texts: &[&str]) -> Tensor<B, 3> {
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let t = ids.iter().map(Vec::len).min().unwrap();
    let flat: Vec<i64> = ids
        .iter()
        .flat_map(|r| r[..t].iter().map(|&x| x as i64))
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(flat, [texts.len(), t]),
        &Default::default(),
    );
    lm.embed(ids)
}

fn opts(decoding: Decoding, use_cache: bool, eos: Option<u32>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 12,
        eos,
        decoding,
        use_cache,
    }
}

#[test]
fn eval_kv_cache_equals_recomputation() {
    let (lm, tok) = model();
    let p = prompts(
        &lm,
        &tok,
        &["a red circle", "two blue squares", "a small green"],
    );
    for d in [
        Decoding::Greedy,
        Decoding::Beam {
            width: 3,
            length_penalty: 1.0,
        },
        Decoding::Sample {
            temperature: 1.0,
            top_p: 0.9,
            seed: 5,
        },
    ] {
        // No eos, so every row runs the full length and every step is compared.
        let cached = generate(&lm, p.clone(), &opts(d.clone(), true, None));
        let full = generate(&lm, p.clone(), &opts(d.clone(), false, None));
        for (a, b) in cached.iter().zip(&full) {
            assert_eq!(a.tokens, b.tokens, "{d:?}");
            assert_eq!(a.tokens.len(), 12);
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4, "{d:?}: logprob {x} vs {y}");
            }
        }
    }
}

#[test]
fn eval_beam_width_one_is_greedy_and_batching_changes_nothing() {
    let (lm, tok) = model();
    let eos = tok.eos_id;
    let p = prompts(
        &lm,
        &tok,
        &["a red circle", "two blue squares", "a small green"],
    );
    let greedy = generate(&lm, p.clone(), &opts(Decoding::Greedy, true, eos));
    let beam1 = generate(
        &lm,
        p.clone(),
        &opts(
            Decoding::Beam {
                width: 1,
                length_penalty: 1.0,
            },
            true,
            eos,
        ),
    );
    // Beam search runs one prompt at a time, greedy the whole batch: the same tokens, and
    // log-probabilities equal up to batched-matmul rounding.
    for (g, b) in greedy.iter().zip(&beam1) {
        assert_eq!(g.tokens, b.tokens);
        for (x, y) in g.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    // Each row alone gives what it gave in the batch.
    let [_, t, d] = p.dims();
    for (r, g) in greedy.iter().enumerate() {
        let one = generate(
            &lm,
            p.clone().slice([r..r + 1, 0..t, 0..d]),
            &opts(Decoding::Greedy, true, eos),
        );
        assert_eq!(one[0].tokens, g.tokens);
    }
}

#[test]
fn eval_sampling_is_deterministic_for_a_seed() {
    let (lm, tok) = model();
    let p = prompts(&lm, &tok, &["a red circle", "two blue squares"]);
    let s = |seed, top_p| {
        opts(
            Decoding::Sample {
                temperature: 1.5,
                top_p,
                seed,
            },
            true,
            None,
        )
    };
    let a = generate(&lm, p.clone(), &s(1, 1.0));
    assert_eq!(a, generate(&lm, p.clone(), &s(1, 1.0)));
    let others: Vec<_> = (2..6)
        .map(|seed| generate(&lm, p.clone(), &s(seed, 1.0)))
        .collect();
    assert!(
        others.iter().any(|o| o != &a),
        "different seeds should give different samples"
    );
    // A vanishing top-p keeps only the most probable token: greedy.
    let greedy = generate(&lm, p.clone(), &opts(Decoding::Greedy, true, None));
    let narrow = generate(&lm, p, &s(3, 1e-12));
    assert_eq!(
        greedy.iter().map(|g| &g.tokens).collect::<Vec<_>>(),
        narrow.iter().map(|g| &g.tokens).collect::<Vec<_>>()
    );
}

#[test]
fn eval_caption_images_batches_like_single_images() {
    let (lm, tok) = model();
    let device = Default::default();
    <B as Backend>::seed(&device, 3);
    let proj = ProjectorConfig::new(8, 64).with_depth(1).init::<B>(&device);
    let feats = Tensor::<B, 3>::random([5, 4, 8], Distribution::Normal(0.0, 1.0), &device);
    let o = GenerateOptions {
        max_new_tokens: 8,
        eos: tok.eos_id,
        ..Default::default()
    };
    let layout = PromptLayout::caption();
    let batched = caption_images(&proj, &lm, &tok, feats.clone(), &layout, &o, 4).unwrap();
    let single = caption_images(&proj, &lm, &tok, feats.clone(), &layout, &o, 1).unwrap();
    assert_eq!(batched.len(), 5);
    assert_eq!(batched, single);
    assert!(batched.iter().all(|c| !c.contains("<|endoftext|>")));
    // Sampling draws from one stream per image, so batching does not change samples.
    let o = GenerateOptions {
        decoding: Decoding::Sample {
            temperature: 1.0,
            top_p: 0.95,
            seed: 9,
        },
        ..o
    };
    let batched = caption_images(&proj, &lm, &tok, feats.clone(), &layout, &o, 4).unwrap();
    let single = caption_images(&proj, &lm, &tok, feats, &layout, &o, 1).unwrap();
    assert_eq!(batched, single);
}

#[test]
fn eval_question_prompt_is_the_training_prompt() {
    use harness::data::instruct::{Conversation, QaTurn};
    use harness::data::sequence::{ChatTemplate, SequenceBuilder, IGNORE};
    let (_, tok) = model();
    let pad = tok.pad_id.unwrap();
    for name in ["phi", "llava_v1"] {
        let template = ChatTemplate::named(name).unwrap();
        let b = SequenceBuilder::new(&tok, template.clone(), "<|endoftext|>", 4, 512, pad).unwrap();
        let conv = Conversation {
            id: "c".into(),
            image_name: Some("x.png".into()),
            image: Some("x.png".into()),
            turns: vec![QaTurn {
                question: "What colour is the circle?".into(),
                answer: "red".into(),
                qtype: Some("colour".into()),
            }],
        };
        let seq = b.conversation(&conv).unwrap();
        let layout = PromptLayout::question(&tok, &template, "What colour is the circle?").unwrap();
        let answer_at = seq.labels.iter().position(|&l| l != IGNORE).unwrap();
        let mut want = layout.before.clone();
        want.extend(std::iter::repeat_n(pad, 4));
        want.extend(&layout.after);
        assert_eq!(&seq.input_ids[..answer_at], &want[..], "{name}");
        assert_eq!(seq.image_start, Some(layout.before.len()));
    }
}
