//! The code fingerprint: the sha256 of the source files that can change what a stage
//! computes (the training, model, data and config code, the backbone recipes and their
//! training code, `Cargo.lock`), listed once in `fingerprint.paths` at the repository root
//! and hashed by the build script, so it identifies the code this binary was built from.
//! Every stage key joins its config key with it ([`super::stage_keys`]), so a change to that
//! code retrains instead of silently reusing results of the old code; the per-file hashes go
//! into each run's `provenance.json`, so a later build can say which files differ.

mod list;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use list::{covers, files, manifest, parse, Rule};

/// `fingerprint.paths` as this binary was built with it.
pub const LIST: &str = include_str!("../../fingerprint.paths");

/// The fingerprint of the code this binary was built from (sha256 of [`manifest`] over
/// [`FILES`]).
pub const FINGERPRINT: &str = env!("HARNESS_CODE_FINGERPRINT");

include!(concat!(env!("OUT_DIR"), "/fingerprint_files.rs"));

/// A code fingerprint with the per-file hashes it was computed from, as `provenance.json`
/// records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeFingerprint {
    /// sha256 of the manifest of `files`.
    pub sha256: String,
    /// Path (relative to the repository root) -> sha256 of its contents.
    pub files: BTreeMap<String, String>,
}

impl CodeFingerprint {
    /// The fingerprint of this binary.
    pub fn built() -> Self {
        CodeFingerprint {
            sha256: FINGERPRINT.to_string(),
            files: FILES
                .iter()
                .map(|(f, h)| (f.to_string(), h.to_string()))
                .collect(),
        }
    }

    /// The fingerprint of these per-file hashes (what the build script computes).
    pub fn from_files(files: BTreeMap<String, String>) -> Self {
        CodeFingerprint {
            sha256: combine(&files),
            files,
        }
    }
}

/// sha256 of the manifest of `files` (path -> sha256), as hex.
pub fn combine(files: &BTreeMap<String, String>) -> String {
    let m = manifest(files.iter().map(|(f, h)| (f.as_str(), h.as_str())));
    hex::encode(Sha256::digest(m.as_bytes()))
}

/// The files whose contents differ between two fingerprints (changed, added or removed),
/// sorted.
pub fn differing(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = old
        .iter()
        .filter(|(f, h)| new.get(*f) != Some(h))
        .map(|(f, _)| f.clone())
        .chain(new.keys().filter(|f| !old.contains_key(*f)).cloned())
        .collect();
    out.sort();
    out
}

/// Up to `max` names joined by commas, then how many more.
pub fn name_files(files: &[String], max: usize) -> String {
    let mut s = files
        .iter()
        .take(max)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > max {
        s.push_str(&format!(" and {} more", files.len() - max));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<Rule> {
        parse(LIST).expect("fingerprint.paths parses")
    }

    #[test]
    fn the_list_covers_what_trains_and_leaves_out_reports_cli_store_docs_and_tests() {
        let r = rules();
        for covered in [
            "src/train/loss.rs",
            "src/train/mod.rs",
            "src/train/schedule.rs",
            "src/train/recompute.rs",
            "src/model/phi.rs",
            "src/model/attention.rs",
            "src/model/nf4.rs",
            "src/data/sequence.rs",
            "src/data/samples.rs",
            "src/rng.rs",
            "src/config.rs",
            "src/backend.rs",
            "src/backbones.rs",
            "src/pretrain/lm.rs",
            "Cargo.lock",
        ] {
            assert!(covers(&r, covered), "{covered} must be in the fingerprint");
        }
        for left_out in [
            "src/report/html.rs",
            "src/report/mod.rs",
            "src/cli/run.rs",
            "src/sweep/plan.rs",
            "src/sweep/estimate.rs",
            "src/eval/bench/mme.rs",
            "src/model/probe.rs",
            "src/model/synth_backbone/mod.rs",
            "src/model/synth_backbone/writer.rs",
            "src/data/inspect.rs",
            "src/data/synth_bench.rs",
            "src/store/mod.rs",
            "src/eval/captions.rs",
            "src/train/evaluate.rs",
            "src/train/bench.rs",
            "src/config/fingerprint.rs",
            "src/lib.rs",
            "src/main.rs",
            "tests/it/store_runs.rs",
            "tests/fixtures/eval/refs.json",
            "benches/step.rs",
            "README.md",
            "STATUS.md",
            "Cargo.toml",
            "scripts/ref_train.py",
            "src/train/.loss.rs.swp",
            "src/model/phi.rs~",
        ] {
            assert!(!covers(&r, left_out), "{left_out} must stay out");
        }
        // The files this binary was built from follow the same list.
        assert!(FILES.iter().any(|(f, _)| *f == "src/train/loss.rs"));
        assert!(FILES.iter().any(|(f, _)| *f == "Cargo.lock"));
        for (f, _) in FILES {
            assert!(covers(&r, f), "{f}");
            for out in [
                "src/report/",
                "src/cli/",
                "src/eval/",
                "src/store/",
                "tests/",
            ] {
                assert!(!f.starts_with(out), "{f} is under {out}");
            }
        }
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        for (text, needle) in [
            ("src/train/\n/etc/passwd\n", "line 2"),
            ("src/train/\n!src/model/x.rs\n", "line 2"),
            ("src/../x.rs\n", "line 1"),
            ("src/train/\nsrc/train/ # again\n", "listed twice"),
            ("# nothing\n", "names no path"),
            ("src/train//x\n", "line 1"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/a")).unwrap();
        std::fs::write(d.path().join("src/a/x.rs"), "x").unwrap();
        let e = files(d.path(), &parse("src/a\n").unwrap()).unwrap_err();
        assert!(e.contains("line 1") && e.contains("src/a/"), "{e}");
        let e = files(d.path(), &parse("src/a/x.rs/\n").unwrap()).unwrap_err();
        assert!(e.contains("is a file"), "{e}");
        let e = files(d.path(), &parse("src/b/\n").unwrap()).unwrap_err();
        assert!(e.contains("line 1: src/b/"), "{e}");
    }

    #[test]
    fn folders_are_walked_whole_minus_left_out_paths() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "src/a/x.rs",
            "src/a/deep/y.rs",
            "src/a/skip/z.rs",
            "src/a/.x.rs.swp",
            "src/a/w.rs~",
            "src/b.rs",
            "src/c.rs",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        let r = parse("src/a/\n!src/a/skip/\nsrc/b.rs\n").unwrap();
        assert_eq!(
            files(d.path(), &r).unwrap(),
            ["src/a/deep/y.rs", "src/a/x.rs", "src/b.rs"]
        );
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_a_sha256sum_listing() {
        let files: BTreeMap<String, String> = [("b.rs", "22"), ("a.rs", "11")]
            .into_iter()
            .map(|(f, h)| (f.to_string(), h.to_string()))
            .collect();
        // What `sha256sum a.rs b.rs | sha256sum` hashes.
        let listing = "11  a.rs\n22  b.rs\n";
        assert_eq!(
            combine(&files),
            hex::encode(Sha256::digest(listing.as_bytes()))
        );
        let built = CodeFingerprint::built();
        assert_eq!(
            built.sha256,
            combine(&built.files),
            "build.rs and combine agree"
        );
    }

    #[test]
    fn differing_names_changed_added_and_removed_files() {
        let m = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(f, h)| (f.to_string(), h.to_string()))
                .collect()
        };
        let old = m(&[("a", "1"), ("b", "2"), ("gone", "3")]);
        let new = m(&[("a", "1"), ("b", "9"), ("new", "4")]);
        assert_eq!(differing(&old, &new), ["b", "gone", "new"]);
        assert!(differing(&old, &old).is_empty());
        let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        assert_eq!(name_files(&names, 3), "f0, f1, f2 and 2 more");
        assert_eq!(name_files(&names[..2], 3), "f0, f1");
    }
}
