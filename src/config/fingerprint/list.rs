//! `fingerprint.paths`, the list of the paths in the code fingerprint: parsed and walked
//! here, by the build script (which hashes the files) and by the library (which checks the
//! list), so both read it the same way. Only `std`: the build script compiles this file too.

use std::path::Path;

/// One line of the list: a path to cover, or (`!PATH`) one to leave out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Relative to the repository root, `/`-separated; a folder ends in `/`.
    pub path: String,
    /// `!PATH`: leave this file or folder out of a folder listed elsewhere.
    pub exclude: bool,
    /// 1-based line in the list, for errors.
    pub line: usize,
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        if self.path.ends_with('/') {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }
}

/// Parses the list; errors name the line.
pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules: Vec<Rule> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let (exclude, path) = match l.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, l),
        };
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.contains('\\')
            || path.contains(char::is_whitespace)
            || path
                .trim_end_matches('/')
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(format!(
                "line {line}: {l:?} is not a relative path (a file, or a folder ending in `/`)"
            ));
        }
        if exclude
            && !rules
                .iter()
                .any(|r| !r.exclude && r.path.ends_with('/') && r.matches(path))
        {
            return Err(format!(
                "line {line}: {l:?} leaves out a path that no listed folder above it covers"
            ));
        }
        if rules.iter().any(|r| r.path == path) {
            return Err(format!("line {line}: {path} is listed twice"));
        }
        rules.push(Rule {
            path: path.to_string(),
            exclude,
            line,
        });
    }
    if !rules.iter().any(|r| !r.exclude) {
        return Err("the list names no path".into());
    }
    Ok(rules)
}

/// Whether the list covers `path` (relative, `/`-separated): under a listed path and under
/// no left-out one.
pub fn covers(rules: &[Rule], path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !skipped(name)
        && rules.iter().any(|r| !r.exclude && r.matches(path))
        && !rules.iter().any(|r| r.exclude && r.matches(path))
}

/// Names never hashed, even inside a listed folder: editor swap files, `.DS_Store`, `~`
/// backups, which come and go without changing the code.
fn skipped(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~')
}

/// Every file the list covers under `root`, sorted. Errors name the line of a listed path
/// that does not exist or is of the wrong kind (a folder without its `/`, a file with one).
pub fn files(root: &Path, rules: &[Rule]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for r in rules {
        let p = root.join(r.path.trim_end_matches('/'));
        let meta =
            std::fs::metadata(&p).map_err(|e| format!("line {}: {}: {e}", r.line, r.path))?;
        match (meta.is_dir(), r.path.ends_with('/')) {
            (true, false) => {
                return Err(format!(
                    "line {}: {} is a folder: write it as {}/",
                    r.line, r.path, r.path
                ))
            }
            (false, true) => {
                return Err(format!(
                    "line {}: {} is a file: write it without the `/`",
                    r.line, r.path
                ))
            }
            _ => {}
        }
        if r.exclude {
            continue;
        }
        if meta.is_dir() {
            walk(&p, r.path.trim_end_matches('/'), &mut out)?;
        } else {
            out.push(r.path.clone());
        }
    }
    out.retain(|f| covers(rules, f));
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| format!("{}: a file name that is not UTF-8: {n:?}", dir.display()))?;
        if skipped(&name) {
            continue;
        }
        let path = format!("{rel}/{name}");
        let meta = std::fs::metadata(e.path()).map_err(|err| format!("{path}: {err}"))?;
        if meta.is_dir() {
            walk(&e.path(), &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The listing the fingerprint is the sha256 of: one `HASH  PATH` line per file, sorted by
/// path, as `sha256sum` prints it (so `sha256sum FILES | sha256sum` recomputes it).
pub fn manifest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut lines: Vec<(&str, &str)> = files.into_iter().collect();
    lines.sort();
    lines
        .into_iter()
        .map(|(path, hash)| format!("{hash}  {path}\n"))
        .collect()
}
