//! COCO captions (`annotations/captions_{train,val}2017.json`), the stage-1 data.
//!
//! Format: `{"info", "licenses", "images": [{id, file_name, height, width, ...}],
//! "annotations": [{id, image_id, caption}]}`. Each annotation becomes one sample
//! (LLaVA's pretraining uses one caption per sample; COCO has ~5 per image, so every
//! image is seen ~5 times per epoch with different text).
//!
//! Split rule: stage 1 trains on `captions_train2017.json` over `train2017/` and
//! validates on `captions_val2017.json` over `val2017/`; the official split is used as is
//! (the two image sets are disjoint), so no hashing is needed here.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::images::ImageRoot;
use super::lenient::{Item, Lenient};
use super::skips::{SkipReason, SkipReport};

#[derive(Debug, Deserialize)]
struct CaptionsFile {
    #[serde(default)]
    images: Lenient<CocoImage>,
    #[serde(default)]
    annotations: Lenient<CocoAnnotation>,
}

/// One entry of COCO's `images` table (fields not needed here are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub width: u32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CocoAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub caption: String,
}

/// One stage-1 sample: an image and one caption of it.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionSample {
    /// The annotation id, as text (record ids are text everywhere in reports).
    pub id: String,
    pub image_id: u64,
    /// The image name as written in the file (`file_name`).
    pub image_name: String,
    /// The resolved file, inside the image root.
    pub image: PathBuf,
    /// The caption, surrounding whitespace trimmed (COCO has many trailing spaces and
    /// newlines, which would otherwise become learned tokens).
    pub caption: String,
}

#[derive(Debug, Default)]
pub struct CaptionSet {
    pub samples: Vec<CaptionSample>,
    pub skips: SkipReport,
}

/// Reads a COCO captions file; images are looked up under `images` (e.g. `coco/train2017`).
/// File-level problems (missing file, not JSON) are errors; record-level problems are
/// skipped and counted. Image decodability is not checked here (that needs a full decode,
/// done once by the feature cache or `harness data check`): see [`drop_undecodable`].
pub fn load_captions(json: &Path, images: &ImageRoot) -> anyhow::Result<CaptionSet> {
    let f = File::open(json).with_context(|| format!("opening {}", json.display()))?;
    let file: CaptionsFile = serde_json::from_reader(BufReader::new(f))
        .with_context(|| format!("{} is not a COCO captions file", json.display()))?;
    let mut skips = SkipReport::default();
    // image id -> resolved path or the reason it has none; resolved once per image.
    let mut table: HashMap<u64, (String, Result<PathBuf, SkipReason>)> = HashMap::new();
    for item in file.images.0 {
        match item {
            Item::Ok(im) => {
                let r = images.resolve(&im.file_name);
                table.insert(im.id, (im.file_name, r));
            }
            Item::Bad { id, .. } => skips.add(SkipReason::Malformed, format!("image:{id}")),
        }
    }
    let mut samples = Vec::new();
    for item in file.annotations.0 {
        let a = match item {
            Item::Ok(a) => a,
            Item::Bad { id, .. } => {
                skips.add(SkipReason::Malformed, id);
                continue;
            }
        };
        let id = a.id.to_string();
        let Some((name, resolved)) = table.get(&a.image_id) else {
            skips.add(SkipReason::UnknownImageId, id);
            continue;
        };
        let path = match resolved {
            Ok(p) => p.clone(),
            Err(reason) => {
                skips.add(*reason, id);
                continue;
            }
        };
        let caption = a.caption.trim();
        if caption.is_empty() {
            skips.add(SkipReason::EmptyCaption, id);
            continue;
        }
        samples.push(CaptionSample {
            id,
            image_id: a.image_id,
            image_name: name.clone(),
            image: path,
            caption: caption.to_string(),
        });
    }
    Ok(CaptionSet { samples, skips })
}

/// Removes the samples whose image is in `bad` (found undecodable by a decode pass),
/// counting each removed sample as [`SkipReason::UndecodableImage`].
pub fn drop_undecodable(set: &mut CaptionSet, bad: &std::collections::HashSet<PathBuf>) -> usize {
    let before = set.samples.len();
    let skips = &mut set.skips;
    set.samples.retain(|s| {
        let keep = !bad.contains(&s.image);
        if !keep {
            skips.add(SkipReason::UndecodableImage, s.id.clone());
        }
        keep
    });
    before - set.samples.len()
}
