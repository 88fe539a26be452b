//! LLaVA sequences from the fixtures, through a real GPT-2 style byte-level BPE tokenizer:
//! targets decode to exactly the captions/answers plus the end token, everything else
//! is ignored, the image slot sits where `<image>` was, truncation is counted.

use harness::data::coco::load_captions;
use harness::data::images::ImageRoot;
use harness::data::instruct::{load_instruct, Conversation};
use harness::data::sequence::{ChatTemplate, Sequence, SequenceBuilder, TextCodec, IGNORE};
use harness::data::SkipReason;

use super::data_loaders::fixtures;

const IMG: usize = 4;
const EOT: &str = "<|endoftext|>";

pub fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(fixtures().join("tokenizer.json")).unwrap()
}

fn conversations() -> Vec<Conversation> {
    let root = ImageRoot::new(&fixtures().join("coco/train2017")).unwrap();
    load_instruct(&fixtures().join("coco/llava_instruct_150k.json"), &root)
        .unwrap()
        .samples
}

/// Maximal runs of target positions, decoded.
fn target_spans(tok: &tokenizers::Tokenizer, s: &Sequence) -> Vec<String> {
    let mut spans = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for &l in &s.labels {
        if l == IGNORE {
            if !cur.is_empty() {
                spans.push(TextCodec::decode(tok, &cur));
                cur.clear();
            }
        } else {
            cur.push(l as u32);
        }
    }
    if !cur.is_empty() {
        spans.push(TextCodec::decode(tok, &cur));
    }
    spans
}

fn check_invariants(s: &Sequence, pad: u32) {
    assert_eq!(s.input_ids.len(), s.labels.len());
    for (i, (&id, &l)) in s.input_ids.iter().zip(&s.labels).enumerate() {
        if s.image_positions().contains(&i) {
            assert_eq!((id, l), (pad, IGNORE), "image slot at {i}");
        } else if l != IGNORE {
            assert_eq!(l, id as i64, "a target is the token itself at {i}");
        }
    }
}

#[test]
fn stage1_targets_are_the_caption_and_eos() {
    let tok = tokenizer();
    let eot = tok.token_to_id(EOT).unwrap();
    let b = SequenceBuilder::new(&tok, ChatTemplate::default(), EOT, IMG, 512, eot).unwrap();
    let root = ImageRoot::new(&fixtures().join("coco/train2017")).unwrap();
    let set = load_captions(
        &fixtures().join("coco/annotations/captions_train2017.json"),
        &root,
    )
    .unwrap();
    for c in &set.samples {
        let s = b.caption(c).unwrap();
        check_invariants(&s, eot);
        assert_eq!(s.image_start, Some(0));
        assert_eq!(s.image_tokens, IMG);
        // Nothing but the image is ignored in stage 1.
        assert!(s.labels[IMG..].iter().all(|&l| l != IGNORE));
        assert_eq!(target_spans(&tok, &s), [format!("{}{EOT}", c.caption)]);
        assert_eq!(*s.input_ids.last().unwrap(), eot);
        assert_eq!(s.id, c.id);
    }
}

#[test]
fn stage2_every_answer_and_end_token_is_learned_and_nothing_else() {
    let tok = tokenizer();
    let eot = tok.token_to_id(EOT).unwrap();
    let b = SequenceBuilder::new(&tok, ChatTemplate::default(), EOT, IMG, 512, eot).unwrap();
    for c in conversations() {
        let s = b.conversation(&c).unwrap();
        check_invariants(&s, eot);
        let want: Vec<String> = c
            .turns
            .iter()
            .map(|t| format!(" {}{EOT}", t.answer))
            .collect();
        assert_eq!(target_spans(&tok, &s), want, "{}", c.id);
        assert_eq!(s.image_start.is_some(), c.image.is_some());
    }
    // The whole multi-turn, unicode, image-after-question record, as the model sees it.
    let c = conversations()
        .into_iter()
        .find(|c| c.id == "000000000025")
        .unwrap();
    let s = b.conversation(&c).unwrap();
    assert_eq!(
        b.render(&s),
        "USER: <image x 4>\nWhat is the dog doing? ASSISTANT:[[ The dog is catching a \
         frisbee.<|endoftext|>]]USER: Where does this take place? ASSISTANT:[[ In a park — \
         公園で、晴れた日に。<|endoftext|>]]USER: Is it sunny? ASSISTANT:[[ Yes, it appears to \
         be a sunny day.<|endoftext|>]]"
    );
    // The slot follows the tokens of "USER: ", whatever side of the question `<image>` was.
    let user = TextCodec::encode(&tok, "USER: ").unwrap().len();
    assert_eq!(s.image_start, Some(user));
    let first = conversations().into_iter().next().unwrap();
    assert_eq!(b.conversation(&first).unwrap().image_start, Some(user));
}

#[test]
fn text_only_conversation_has_no_image_slot() {
    let tok = tokenizer();
    let eot = tok.token_to_id(EOT).unwrap();
    let b = SequenceBuilder::new(&tok, ChatTemplate::default(), EOT, IMG, 512, eot).unwrap();
    let c = conversations()
        .into_iter()
        .find(|c| c.id == "text-only")
        .unwrap();
    let s = b.conversation(&c).unwrap();
    assert_eq!(s.image_start, None);
    assert_eq!(s.image_positions(), 0..0);
    assert_eq!(
        b.render(&s),
        "USER: What is 2 + 2? ASSISTANT:[[ 4<|endoftext|>]]"
    );
}

#[test]
fn truncation_is_counted_and_never_leaves_a_useless_sequence() {
    let tok = tokenizer();
    let eot = tok.token_to_id(EOT).unwrap();
    let convs = conversations();
    let full = SequenceBuilder::new(&tok, ChatTemplate::default(), EOT, IMG, 10_000, eot)
        .unwrap()
        .conversation(&convs[1])
        .unwrap();
    let n = full.len();
    let first_target = full.labels.iter().position(|&l| l != IGNORE).unwrap();

    // Cut inside the second answer: a prefix, counted.
    let cut = n - 20;
    let b = SequenceBuilder::new(&tok, ChatTemplate::default(), EOT, IMG, cut, eot).unwrap();
    let s = b.conversation(&convs[1]).unwrap();
    assert_eq!(s.len(), cut);
    assert_eq!(s.truncated, 20);
    assert_eq!(s.input_ids[..], full.input_ids[..cut]);
    assert_eq!(s.labels[..], full.labels[..cut]);
    let (seqs, skips, tr) = b.build_all(&convs, |b, c| b.conversation(c), |c| c.id.clone());
    assert_eq!(tr.sequences, seqs.len());
    assert!(tr.truncated_sequences >= 1);
    assert_eq!(
        tr.truncated_tokens,
        seqs.iter().map(|s| s.truncated).sum::<usize>()
    );
    assert_eq!(skips.total(), 0);

    // No target left, or half an image: skipped, with the reason.
    for max_len in [first_target, IMG - 1] {
        let b =
            SequenceBuilder::new(&tok, ChatTemplate::default(), EOT, IMG, max_len, eot).unwrap();
        assert_eq!(b.conversation(&convs[1]), Err(SkipReason::TruncatedAway));
    }
}

#[test]
fn templates_are_configurable() {
    let tok = tokenizer();
    let eot = tok.token_to_id(EOT).unwrap();
    let c = conversations().into_iter().next().unwrap();
    let t = ChatTemplate::named("llava_v1").unwrap();
    let b = SequenceBuilder::new(&tok, t, EOT, IMG, 512, eot).unwrap();
    let r = b.render(&b.conversation(&c).unwrap());
    assert!(r.starts_with("A chat between a curious human"), "{r}");
    assert!(ChatTemplate::named("nope").is_err());

    let custom = ChatTemplate {
        user: "Q: ".into(),
        assistant: "\nA:".into(),
        end: "\n".into(),
        ..ChatTemplate::default()
    };
    let b = SequenceBuilder::new(&tok, custom, EOT, IMG, 512, eot).unwrap();
    let s = b.conversation(&c).unwrap();
    assert_eq!(
        b.render(&s),
        "Q: <image x 4>\nWhat is the person in the image doing?\nA:[[ The person in the \
         image is riding a wave on a surfboard.\n]]"
    );
}

#[test]
fn the_template_an_experiment_names_is_the_one_its_sequences_use() {
    // Every name validation accepts is one the data side builds, and only those.
    let tmp = tempfile::tempdir().unwrap();
    let exp = |template: &str| {
        let p = tmp.path().join(format!("{template}.toml"));
        std::fs::write(
            &p,
            format!(
                "name = \"t\"\n[model]\nvision = \"v\"\nlm = \"l\"\n[data]\ntemplate = \"{template}\"\n"
            ),
        )
        .unwrap();
        harness::config::load(&p)
    };
    for name in harness::config::TEMPLATES {
        let e = exp(name).unwrap().exp;
        let spec = harness::data::samples::DataSpec::from_experiment(&e, IMG, 0).unwrap();
        assert_eq!(spec.template, ChatTemplate::named(name).unwrap());
    }
    let tok = tokenizer();
    let eot = tok.token_to_id(EOT).unwrap();
    let e = exp("llava_v1").unwrap().exp;
    let spec = harness::data::samples::DataSpec::from_experiment(&e, IMG, eot).unwrap();
    let b = harness::data::samples::builder(&spec, &tok).unwrap();
    let c = conversations().into_iter().next().unwrap();
    let r = b.render(&b.conversation(&c).unwrap());
    assert!(r.starts_with("A chat between a curious human"), "{r}");
    // `vicuna` was accepted by validation once and then failed at data preparation.
    let err = format!("{:#}", exp("vicuna").unwrap_err());
    assert!(
        err.contains("data.template") && err.contains("phi, llava_v1"),
        "{err}"
    );
}
