//! Images: resolving user-supplied names safely under an image root, decoding, and the
//! parallel map the data work runs on. CLIP preprocessing itself is
//! [`crate::model::preprocess`] (PIL-exact), used by the feature cache.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use image::RgbImage;

use super::skips::SkipReason;

/// A directory of images. Names in annotation files come from files a user downloaded, so
/// they are untrusted: [`ImageRoot::resolve`] only ever returns paths that stay inside it.
#[derive(Clone, Debug)]
pub struct ImageRoot {
    root: PathBuf,
}

impl ImageRoot {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("image root {} does not exist", root.display()))?;
        Ok(Self { root })
    }

    /// The canonical root.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Maps an image name to a file under the root, or says why not. Lexical checks come
    /// first (`..`, absolute, drive prefixes, backslashes, NUL), so such names never touch
    /// the file system; then the canonical path (symlinks followed) must still be inside
    /// the root, so a symlink pointing out is rejected before the file is opened.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, SkipReason> {
        if name.is_empty() {
            return Err(SkipReason::MissingImage);
        }
        // A backslash is a plain character on Unix, but a Windows-made name like
        // `..\x.jpg` means escape; nothing in COCO needs one.
        if name.contains('\\') || name.contains('\0') {
            return Err(SkipReason::UnsafePath);
        }
        for c in Path::new(name).components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(SkipReason::UnsafePath)
                }
            }
        }
        let joined = self.root.join(name);
        if joined.symlink_metadata().is_err() {
            return Err(SkipReason::MissingImage);
        }
        // A dangling symlink fails here: it is as good as missing.
        let real = joined
            .canonicalize()
            .map_err(|_| SkipReason::MissingImage)?;
        if !real.starts_with(&self.root) {
            return Err(SkipReason::UnsafePath);
        }
        if !real.is_file() {
            return Err(SkipReason::MissingImage);
        }
        Ok(real)
    }
}

/// Decodes any supported format (by content, not extension: COCO has PNGs named .jpg in
/// the wild) into 8-bit RGB. Grey and RGBA images are converted like PIL's `convert("RGB")`.
/// JPEGs go through the PIL-exact decoder (the `image` crate's differs by a level or two).
pub fn load_rgb(path: &Path) -> anyhow::Result<RgbImage> {
    crate::model::preprocess::load_image(path)
}

/// Runs `f` over `items` on `threads` workers (0 = all cores), results in input order.
/// The data work is embarrassingly parallel (decode, draw, check); scoped threads keep it
/// dependency-free.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let wanted = if threads == 0 { num_threads() } else { threads };
    let threads = wanted.min(items.len()).max(1);
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, R)>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break;
                        }
                        done.push((i, f(&items[i])));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            parts.push(h.join().expect("data worker panicked"));
        }
    });
    let mut all: Vec<(usize, R)> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

pub fn num_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_order() {
        let v: Vec<usize> = (0..1000).collect();
        assert_eq!(
            par_map(&v, 3, |x| x * 2),
            v.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
    }
}
