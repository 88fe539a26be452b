//! LLaVA instruction data (`llava_instruct_150k.json`, `llava_v1_5_mix665k.json`), the
//! stage-2 data.
//!
//! Format: `[{"id": "000000033471", "image": "000000033471.jpg", "conversations":
//! [{"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
//! {"from": "gpt", "value": "The bus in the image is white and red."}, ...]}]`.
//! `image` is relative to an image folder (LLaVA's `image_folder`): COCO's `train2017/`
//! for Instruct150K; for mix665k the folder holding `coco/train2017`, `gqa/images`,
//! `ocr_vqa/images`, `textvqa/train_images` and `vg/VG_100K(_2)`, whose first path
//! component names the record's source ([`source_of`]). A record without `image` is a
//! text-only conversation (mix665k's ShareGPT part). `<image>` sits before or after the first
//! question; like LLaVA's `preprocess_multimodal` it is removed from the text and the image
//! slot is placed at the start of the first question, so both spellings give the same
//! sequence. Extra fields (e.g. the synthetic world's per-question `"type"`) are allowed.
//!
//! Split rule: Instruct150K has no validation split. [`holdout`] holds out whole images,
//! chosen by hashing the *image* name (not the record, and independent of the seed), so
//! every conversation about one image lands on the same side and the split never changes
//! between runs or seeds. Caveat: those
//! images are COCO train2017 images, whose captions stage 1 trained on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::images::ImageRoot;
use super::lenient::{FlexId, Item, Lenient};
use super::skips::{SkipReason, SkipReport};

/// The placeholder LLaVA writes where the image goes.
pub const IMAGE_TOKEN: &str = "<image>";

#[derive(Debug, Deserialize)]
struct RawRecord {
    id: FlexId,
    #[serde(default)]
    image: Option<String>,
    conversations: Vec<RawTurn>,
}

#[derive(Debug, Deserialize)]
struct RawTurn {
    from: String,
    value: String,
    /// Question type (the synthetic world tags each question so evaluation can score per
    /// type); absent in the real data.
    #[serde(default, rename = "type")]
    qtype: Option<String>,
}

/// One question and its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct QaTurn {
    /// The question with `<image>` removed and whitespace trimmed.
    pub question: String,
    pub answer: String,
    pub qtype: Option<String>,
}

/// One stage-2 sample: an image and a multi-turn conversation about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub id: String,
    /// The name as written in the file; `None` for a text-only conversation.
    pub image_name: Option<String>,
    /// The resolved file, inside the image root.
    pub image: Option<PathBuf>,
    pub turns: Vec<QaTurn>,
}

#[derive(Debug, Default)]
pub struct ConversationSet {
    pub samples: Vec<Conversation>,
    pub skips: SkipReport,
    /// Records per source ([`source_of`]): kept and skipped.
    pub sources: Sources,
}

/// Where a record comes from: the first component of its image name (`coco`, `gqa`,
/// `ocr_vqa`, `textvqa`, `vg` in mix665k), [`TOP_LEVEL`] for a bare file name
/// (Instruct150K), [`TEXT_ONLY`] without an image.
pub fn source_of(image: Option<&str>) -> String {
    match image {
        None => TEXT_ONLY.into(),
        Some(name) => match name.split_once('/') {
            Some((first, _)) if !first.is_empty() => first.to_string(),
            _ => TOP_LEVEL.into(),
        },
    }
}

/// The source of records whose image name has no folder.
pub const TOP_LEVEL: &str = "(top level)";
/// The source of records without an image.
pub const TEXT_ONLY: &str = "(text only)";
/// The source of records too malformed to name their image.
pub const UNREADABLE: &str = "(unreadable)";

/// Records of one source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceCount {
    /// Records that became samples.
    pub kept: usize,
    /// Records skipped (any reason).
    pub skipped: usize,
}

/// Record counts by source, sorted by name.
pub type Sources = BTreeMap<String, SourceCount>;

enum Role {
    User,
    Assistant,
}

fn role(from: &str) -> Option<Role> {
    match from {
        "human" | "user" => Some(Role::User),
        "gpt" | "assistant" => Some(Role::Assistant),
        _ => None,
    }
}

/// Reads an Instruct150K-format file, record by record; images are looked up under
/// `images` (e.g. `coco/train2017`). Each bad record is skipped with one reason, checked
/// in this order: malformed, unknown role, bad turn order, no answer, unsafe path, missing
/// image. A trailing question without an answer is dropped from an otherwise good record
/// (there is nothing to learn from it).
pub fn load_instruct(json: &Path, images: &ImageRoot) -> anyhow::Result<ConversationSet> {
    let f = File::open(json).with_context(|| format!("opening {}", json.display()))?;
    let records: Lenient<RawRecord> = serde_json::from_reader(BufReader::new(f))
        .with_context(|| format!("{} is not an instruct JSON array", json.display()))?;
    let mut set = ConversationSet::default();
    for item in records.0 {
        match item {
            Item::Ok(r) => {
                let source = source_of(r.image.as_deref());
                let count = set.sources.entry(source).or_default();
                match convert(r, images) {
                    Ok(c) => {
                        count.kept += 1;
                        set.samples.push(c)
                    }
                    Err((reason, id)) => {
                        count.skipped += 1;
                        set.skips.add(reason, id)
                    }
                }
            }
            Item::Bad { id, .. } => {
                set.sources.entry(UNREADABLE.into()).or_default().skipped += 1;
                set.skips.add(SkipReason::Malformed, id)
            }
        }
    }
    Ok(set)
}

fn convert(r: RawRecord, images: &ImageRoot) -> Result<Conversation, (SkipReason, String)> {
    let id = r.id.0;
    let fail = |reason| Err((reason, id.clone()));
    let mut turns = Vec::new();
    let mut pending: Option<(String, Option<String>)> = None;
    for t in &r.conversations {
        match role(&t.from) {
            None => return fail(SkipReason::UnknownRole),
            Some(Role::User) => {
                if pending.is_some() {
                    return fail(SkipReason::BadTurnOrder);
                }
                pending = Some((strip_image_token(&t.value), t.qtype.clone()));
            }
            Some(Role::Assistant) => {
                let Some((question, qtype)) = pending.take() else {
                    return fail(SkipReason::BadTurnOrder);
                };
                let answer = t.value.trim();
                if answer.is_empty() {
                    return fail(SkipReason::NoAnswer);
                }
                turns.push(QaTurn {
                    question,
                    answer: answer.to_string(),
                    qtype,
                });
            }
        }
    }
    if turns.is_empty() {
        return fail(SkipReason::NoAnswer);
    }
    let image = match &r.image {
        None => None,
        Some(name) => match images.resolve(name) {
            Ok(p) => Some(p),
            Err(reason) => return fail(reason),
        },
    };
    Ok(Conversation {
        id,
        image_name: r.image,
        image,
        turns,
    })
}

/// `"<image>\nQ"` and `"Q\n<image>"` both become `"Q"`.
pub fn strip_image_token(s: &str) -> String {
    s.replace(IMAGE_TOKEN, "").trim().to_string()
}

/// Splits off a validation set of at least `n_val` conversations (fewer only if there are
/// not that many): images are ranked by sha256 of their name and taken lowest first, each
/// with all its conversations (text-only ones rank by their id). Returns (train, val),
/// both in file order.
pub fn holdout(samples: Vec<Conversation>, n_val: usize) -> (Vec<Conversation>, Vec<Conversation>) {
    use std::collections::{BTreeMap, HashSet};
    let key = |c: &Conversation| match &c.image_name {
        Some(n) => format!("image:{n}"),
        None => format!("id:{}", c.id),
    };
    let mut per_key: BTreeMap<[u8; 32], (String, usize)> = BTreeMap::new();
    for c in &samples {
        let k = key(c);
        let h: [u8; 32] = Sha256::digest(k.as_bytes()).as_slice().try_into().unwrap();
        per_key.entry(h).or_insert((k, 0)).1 += 1;
    }
    let mut val_keys = HashSet::new();
    let mut taken = 0;
    for (_, (k, n)) in per_key {
        if taken >= n_val {
            break;
        }
        taken += n;
        val_keys.insert(k);
    }
    samples
        .into_iter()
        .partition(|c| !val_keys.contains(&key(c)))
}
