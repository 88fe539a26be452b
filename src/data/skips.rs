//! What was left out of a data set and why. Every loader returns one of these next to its
//! samples; the counts go into the run's metrics and the offending record ids into
//! `harness data check`, so a researcher can find and fix the records.

use std::collections::BTreeMap;

use serde::Serialize;

/// Why a record (or a sample built from it) was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The image file does not exist under the image root.
    MissingImage,
    /// The image file exists but does not decode.
    UndecodableImage,
    /// The image name escapes the image root (`../`, absolute, a symlink out of it); the
    /// file is never opened.
    UnsafePath,
    /// A caption that is empty or only whitespace.
    EmptyCaption,
    /// A caption annotation whose `image_id` is not in the `images` table.
    UnknownImageId,
    /// A conversation with no answered question (or an empty answer).
    NoAnswer,
    /// A turn whose `from` is neither human/user nor gpt/assistant.
    UnknownRole,
    /// Turns that do not alternate question, answer, question, answer...
    BadTurnOrder,
    /// A record that is not in the expected shape (missing or mistyped fields).
    Malformed,
    /// After truncation to `max_len` nothing was left to learn.
    TruncatedAway,
}

impl SkipReason {
    pub const ALL: [SkipReason; 10] = [
        SkipReason::MissingImage,
        SkipReason::UndecodableImage,
        SkipReason::UnsafePath,
        SkipReason::EmptyCaption,
        SkipReason::UnknownImageId,
        SkipReason::NoAnswer,
        SkipReason::UnknownRole,
        SkipReason::BadTurnOrder,
        SkipReason::Malformed,
        SkipReason::TruncatedAway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SkipReason::MissingImage => "missing_image",
            SkipReason::UndecodableImage => "undecodable_image",
            SkipReason::UnsafePath => "unsafe_path",
            SkipReason::EmptyCaption => "empty_caption",
            SkipReason::UnknownImageId => "unknown_image_id",
            SkipReason::NoAnswer => "no_answer",
            SkipReason::UnknownRole => "unknown_role",
            SkipReason::BadTurnOrder => "bad_turn_order",
            SkipReason::Malformed => "malformed",
            SkipReason::TruncatedAway => "truncated_away",
        }
    }
}

/// Offending ids kept per reason; the counts stay exact beyond this, the id lists do not
/// (a broken download can make 100k records fail the same way).
pub const MAX_IDS_PER_REASON: usize = 1000;

/// Counts per reason plus (up to [`MAX_IDS_PER_REASON`]) the record ids.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SkipReport {
    pub counts: BTreeMap<SkipReason, usize>,
    pub ids: BTreeMap<SkipReason, Vec<String>>,
}

impl SkipReport {
    pub fn add(&mut self, reason: SkipReason, id: impl Into<String>) {
        *self.counts.entry(reason).or_default() += 1;
        let ids = self.ids.entry(reason).or_default();
        if ids.len() < MAX_IDS_PER_REASON {
            ids.push(id.into());
        }
    }

    pub fn count(&self, reason: SkipReason) -> usize {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    pub fn ids(&self, reason: SkipReason) -> &[String] {
        self.ids.get(&reason).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn merge(&mut self, other: &SkipReport) {
        for (r, c) in &other.counts {
            *self.counts.entry(*r).or_default() += c;
        }
        for (r, ids) in &other.ids {
            let mine = self.ids.entry(*r).or_default();
            let room = MAX_IDS_PER_REASON.saturating_sub(mine.len());
            mine.extend(ids.iter().take(room).cloned());
        }
    }

    /// `("skipped/<reason>", count)` for every reason, zeros included, so a metrics table
    /// has the same columns for every run.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        SkipReason::ALL
            .iter()
            .map(|r| (format!("skipped/{}", r.name()), self.count(*r) as f64))
            .collect()
    }
}
