//! The crate's top-level modules depend on each other one way only: a module names
//! (through `crate::` paths in its code, unit tests and comments aside) only modules below it
//! in [`LAYERS`], so there is no loop among them. The list is the architecture of `lib.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the top down; a module may name any module after it.
const LAYERS: [&str; 14] = [
    "cli",
    "sweep",
    "pretrain",
    "report",
    "train",
    "eval",
    "store",
    "data",
    "model",
    "backend",
    "config",
    "backbones",
    "fsutil",
    "rng",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests { .. }`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module a piece of code names through `crate::`, including inside
/// `crate::{a, b::c}` groups.
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn top_level_modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut seen = BTreeSet::new();
    let mut upward = vec![];
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&r) = rank.get(module.as_str()) else {
            panic!("src/{first} is a top-level module missing from LAYERS: place it there");
        };
        seen.insert(module.clone());
        for other in named(&code(&std::fs::read_to_string(f).unwrap())) {
            match rank.get(other.as_str()) {
                Some(&o) if o < r => upward.push(format!("{} names crate::{other}", rel.display())),
                Some(_) => {}
                None if other == module => {}
                None => panic!(
                    "{} names crate::{other}, not a module in LAYERS",
                    rel.display()
                ),
            }
        }
    }
    assert_eq!(
        seen,
        LAYERS.iter().map(|m| m.to_string()).collect(),
        "LAYERS lists modules that do not exist"
    );
    assert!(
        upward.is_empty(),
        "modules name modules above them:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layer_check_sees_groups_and_ignores_comments() {
    let c = code("use crate::{model::phi, data};\n// crate::cli in a comment\nlet x = crate::store::x;\n#[cfg(test)]\nmod tests { use crate::cli; }");
    assert_eq!(
        named(&c),
        ["data", "model", "store"].map(String::from).into()
    );
}
