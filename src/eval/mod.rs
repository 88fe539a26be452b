//! Evaluation: COCO caption metrics equal to pycocoevalcap, generation with the KV cache,
//! and QA exact match.
//!
//! - [`bench`]: benchmark scoring (POPE, TextVQA, VQAv2, GQA, ScienceQA, MME) by the
//!   official / LLaVA rules, on LLaVA-format answers (`harness eval score`).
//! - [`captions`]: BLEU-1..4, ROUGE-L, CIDEr-D ([`score`] on tokenized text, [`score_raw`]
//!   after [`ptb::tokenize`]); METEOR and SPICE are not implemented.
//! - [`caption_set`]: the caption metrics of a set under resampling weights (bootstrap).
//! - [`coco_files`]: the COCO results / annotation files behind `harness eval captions`.
//! - [`generate`]: greedy, beam search and top-p sampling from prompt embeddings.
//! - [`infer`]: captions and answers for CLIP features (projector + splice + generate).
//! - [`qa`]: exact-match accuracy per question type.
//! - [`stats`]: bootstrap, paired bootstrap and Student t intervals.
//! - [`intervals`]: a run's eval metrics from its items with intervals; paired deltas.
//! - [`session`]: a finished run loaded for inference (`harness caption`, `chat`, `export`).
//! - [`export`]: a run's adapters (PEFT layout), projector and model card (`harness export`).

pub mod bench;
pub mod caption_set;
pub mod captions;
pub mod coco_files;
pub mod export;
pub mod generate;
pub mod infer;
pub mod intervals;
pub mod ptb;
pub mod qa;
pub mod session;
pub mod stats;

pub use captions::{score, score_raw, CaptionScores};
pub use generate::{generate, generate_streams, Decoding, GenerateOptions, Generated};
pub use infer::{answer_questions, caption_images, generate_for_images, PromptLayout};
pub use qa::{normalize_answer, qa_exact_match, QaAccuracy};
pub use session::{chat_layout, Chat, Session};
