//! The CLIP feature cache. The vision tower is frozen in both stages, so an image's
//! features depend only on (encoder weights, feature layer/selection, preprocessing,
//! image bytes). They are computed once and kept on disk, shared by every run, stage and
//! sweep point that uses the same encoder: a sweep over projector depths or LoRA ranks
//! never runs CLIP again.
//!
//! Layout: `<root>/<key>/` where `key` = sha256(extractor id, preprocessing id), holding
//! `meta.json` and shards. A shard is `shard-*.bin` (rows of `tokens x dim` little-endian
//! f16, memory-mapped when read) plus `shard-*.json` (its index). Every file is written to
//! a temporary name, fsynced and renamed, the index after its data, so a killed build
//! leaves only whole shards: the next build keeps them and does the rest. Shards are
//! flushed every `shard_images` images, 256 MiB or `flush_secs` seconds, bounding lost
//! work.
//!
//! Images are identified by content (sha256 of the file), so the same file reached
//! through two roots (COCO `train2017/` for stage 1, Instruct150K's names for stage 2) or
//! copied elsewhere shares its features. To avoid rereading files, each index also maps
//! (canonical path, size, mtime) to the content hash: a second run only stats files.
//! Undecodable images are recorded too (not retried every run; reported as skips).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::images::num_threads;
use crate::model::preprocess::{preprocess, PreprocessConfig};

/// A frozen image encoder, seen from the cache: the real CLIP tower implements it in the
/// model code, tests use a counting fake.
pub trait FeatureExtractor {
    /// Identity of everything that changes the output except preprocessing: weights (e.g.
    /// a hash of the safetensors files), variant, feature layer and selection.
    fn id(&self) -> String;
    /// Feature rows per image (e.g. 49 patches for B/32-224, CLS dropped).
    fn tokens(&self) -> usize;
    /// Width of a row (768 for B/32).
    fn dim(&self) -> usize;
    /// One `tokens x dim` row-major vector per image; `pixels` are the
    /// outputs of [`crate::model::preprocess::preprocess`] (CHW).
    fn extract(&self, pixels: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Meta {
    version: u32,
    extractor: String,
    /// `Debug` of the preprocessing config: every field, so any change is a new cache.
    preprocess: String,
    tokens: usize,
    dim: usize,
    dtype: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// Content hash (hex sha256 of the file, first 32 hex digits).
    hash: String,
    path: String,
    size: u64,
    mtime_ns: u64,
    /// Row in this shard's .bin; `None` with no error: an alias whose features another
    /// shard holds under the same hash.
    #[serde(default)]
    row: Option<usize>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ShardIndex {
    version: u32,
    bin: String,
    rows: usize,
    entries: Vec<Entry>,
}

type StatKey = (String, u64, u64);

/// How to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Images per `extract` call.
    pub batch: usize,
    /// Flush a shard after this many images...
    pub shard_images: usize,
    /// ...or after this long, whichever comes first.
    pub flush_secs: u64,
    /// Decode workers (0 = all cores but one, at least one).
    pub threads: usize,
    pub progress: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            batch: 32,
            shard_images: 1024,
            flush_secs: 30,
            threads: 0,
            progress: true,
        }
    }
}

/// What a build did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BuildReport {
    pub images: usize,
    /// Already in the cache (found by stat, no read).
    pub cached: usize,
    /// Read and hashed, then found in the cache under their content hash.
    pub aliased: usize,
    pub extracted: usize,
    /// Undecodable or unreadable: (path, error).
    pub failed: Vec<(PathBuf, String)>,
    pub extract_calls: usize,
}

/// Where an image's features are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    shard: u32,
    row: u32,
}

pub enum Lookup<'a> {
    Features(&'a [f16]),
    /// The image was recorded as undecodable.
    Failed(&'a str),
    /// Not in the cache (or changed on disk since).
    Missing,
}

pub struct FeatureCache {
    dir: PathBuf,
    tokens: usize,
    dim: usize,
    /// One per loaded shard; `None` for a shard of aliases and failures only.
    shards: Vec<Option<Mmap>>,
    by_hash: HashMap<String, Slot>,
    failed: HashMap<String, String>,
    by_stat: HashMap<StatKey, String>,
}

impl FeatureCache {
    /// The directory for one (extractor, preprocessing) under a cache root.
    pub fn dir_for(root: &Path, extractor_id: &str, preprocess: &PreprocessConfig) -> PathBuf {
        let mut h = Sha256::new();
        h.update(extractor_id.as_bytes());
        h.update(b"\n");
        h.update(preprocess_id(preprocess).as_bytes());
        // The image decoder is part of the pixels: JPEGs decode PIL-exactly since v1.
        h.update(b"\ndecoder=pil-exact-jpeg-v1");
        root.join(&hex::encode(h.finalize())[..16])
    }

    /// Opens (creating if needed) the cache for this extractor and preprocessing.
    pub fn open(
        root: &Path,
        extractor_id: &str,
        preprocess: &PreprocessConfig,
        tokens: usize,
        dim: usize,
    ) -> anyhow::Result<Self> {
        let dir = Self::dir_for(root, extractor_id, preprocess);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let meta = Meta {
            version: 1,
            extractor: extractor_id.to_string(),
            preprocess: preprocess_id(preprocess),
            tokens,
            dim,
            dtype: "f16".into(),
        };
        let meta_path = dir.join("meta.json");
        if meta_path.exists() {
            let found: Meta = serde_json::from_slice(&fs::read(&meta_path)?)
                .with_context(|| format!("reading {}", meta_path.display()))?;
            if found != meta {
                bail!(
                    "feature cache {} was built for {:?} ({}x{}), not {:?} ({}x{})",
                    dir.display(),
                    found.extractor,
                    found.tokens,
                    found.dim,
                    extractor_id,
                    tokens,
                    dim
                );
            }
        } else {
            write_atomic(&meta_path, &serde_json::to_vec_pretty(&meta)?)?;
        }
        let mut cache = Self {
            dir,
            tokens,
            dim,
            shards: Vec::new(),
            by_hash: HashMap::new(),
            failed: HashMap::new(),
            by_stat: HashMap::new(),
        };
        cache.load_shards()?;
        Ok(cache)
    }

    fn load_shards(&mut self) -> anyhow::Result<()> {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with("shard-") && n.ends_with(".json")
            })
            .collect();
        names.sort();
        for idx_path in names {
            let idx: ShardIndex = match fs::read(&idx_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(i) => i,
                // Cannot happen with atomic renames; a hand-damaged index is ignored and
                // its images rebuilt rather than failing every run.
                None => continue,
            };
            self.add_shard(idx)?;
        }
        Ok(())
    }

    fn add_shard(&mut self, idx: ShardIndex) -> anyhow::Result<()> {
        let row_len = self.tokens * self.dim;
        let shard = self.shards.len() as u32;
        if idx.rows > 0 {
            let bin = self.dir.join(&idx.bin);
            let f = File::open(&bin).with_context(|| format!("opening {}", bin.display()))?;
            // SAFETY: shard files are immutable once renamed into place; nothing writes
            // them afterwards.
            let map = unsafe { Mmap::map(&f)? };
            if map.len() != idx.rows * row_len * 2 {
                // Truncated by something outside our control: skip the shard.
                return Ok(());
            }
            self.shards.push(Some(map));
        } else {
            self.shards.push(None);
        }
        for e in idx.entries {
            if let Some(err) = e.error {
                self.failed.entry(e.hash.clone()).or_insert(err);
            } else if let Some(row) = e.row {
                self.by_hash.entry(e.hash.clone()).or_insert(Slot {
                    shard,
                    row: row as u32,
                });
            }
            self.by_stat.insert((e.path, e.size, e.mtime_ns), e.hash);
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of distinct images with features.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Where `image`'s features are, by a stat of the file (no read).
    pub fn lookup(&self, image: &Path) -> Lookup<'_> {
        let Some(key) = stat_key(image) else {
            return Lookup::Missing;
        };
        let Some(hash) = self.by_stat.get(&key) else {
            return Lookup::Missing;
        };
        if let Some(slot) = self.by_hash.get(hash) {
            return Lookup::Features(self.row(*slot));
        }
        match self.failed.get(hash) {
            Some(e) => Lookup::Failed(e),
            None => Lookup::Missing,
        }
    }

    fn row(&self, s: Slot) -> &[f16] {
        let n = self.tokens * self.dim;
        let map = self.shards[s.shard as usize]
            .as_ref()
            .expect("a slot always points into a shard with rows");
        let bytes = &map[s.row as usize * n * 2..][..n * 2];
        assert_eq!(bytes.as_ptr() as usize % 2, 0);
        // SAFETY: in bounds (checked by the slice above), 2-aligned (checked), f16 is a
        // plain 2-byte value for which every bit pattern is valid; files are little-endian
        // and so are the targets we support (asserted at compile time below).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f16, n) }
    }

    /// `image`'s features as f32 (`tokens x dim`), or `None` when not cached.
    pub fn get_f32(&self, image: &Path) -> Option<Vec<f32>> {
        match self.lookup(image) {
            Lookup::Features(h) => {
                let mut out = vec![0f32; h.len()];
                h.convert_to_f32_slice(&mut out);
                Some(out)
            }
            _ => None,
        }
    }

    /// Makes sure every image in `images` has features (or a recorded failure), calling
    /// `extractor` only for images whose content is not cached yet. Decoding and
    /// preprocessing run on worker threads while the extractor runs on this one.
    pub fn build(
        root: &Path,
        extractor: &dyn FeatureExtractor,
        preprocess: &PreprocessConfig,
        images: &[PathBuf],
        opts: &BuildOptions,
    ) -> anyhow::Result<(Self, BuildReport)> {
        let mut cache = Self::open(
            root,
            &extractor.id(),
            preprocess,
            extractor.tokens(),
            extractor.dim(),
        )?;
        let mut report = BuildReport::default();
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<(PathBuf, Option<StatKey>)> = Vec::new();
        for p in images {
            if !seen.insert(p.clone()) {
                continue;
            }
            report.images += 1;
            let key = stat_key(p);
            let known = key
                .as_ref()
                .and_then(|k| cache.by_stat.get(k))
                .is_some_and(|h| cache.by_hash.contains_key(h) || cache.failed.contains_key(h));
            if known {
                report.cached += 1;
            } else {
                todo.push((p.clone(), key));
            }
        }
        if todo.is_empty() {
            return Ok((cache, report));
        }
        let bar = if opts.progress {
            indicatif::ProgressBar::new(todo.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "CLIP features {bar:30} {pos}/{len} images {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let workers = if opts.threads == 0 {
            num_threads().saturating_sub(1).max(1)
        } else {
            opts.threads
        };
        let known_hashes: std::collections::HashSet<String> =
            cache.by_hash.keys().cloned().collect();
        let next = AtomicUsize::new(0);
        let mut writer = ShardWriter::new(&cache.dir, cache.tokens * cache.dim, opts);
        let result: anyhow::Result<()> = std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel::<Decoded>(opts.batch.max(1) * 2);
            for _ in 0..workers {
                let tx = tx.clone();
                let (todo, next, known) = (&todo, &next, &known_hashes);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= todo.len() {
                        break;
                    }
                    let (path, key) = &todo[i];
                    if tx
                        .send(decode(path, key.clone(), preprocess, known))
                        .is_err()
                    {
                        break;
                    }
                });
            }
            drop(tx);
            let mut pending: Vec<(Entry, Vec<f32>)> = Vec::new();
            for d in rx {
                bar.inc(1);
                match d {
                    Decoded::Alias(e) => {
                        report.aliased += 1;
                        writer.entries.push(e);
                    }
                    Decoded::Failed(e) => {
                        report
                            .failed
                            .push((PathBuf::from(&e.path), e.error.clone().unwrap_or_default()));
                        writer.entries.push(e);
                    }
                    Decoded::Unreadable(p, err) => report.failed.push((p, err)),
                    Decoded::Pixels(e, px) => {
                        pending.push((e, px));
                        if pending.len() >= opts.batch.max(1) {
                            extract_into(extractor, &mut pending, &mut writer, &mut report)?;
                        }
                    }
                }
                if writer.due() {
                    if let Some(idx) = writer.flush()? {
                        cache.add_shard(idx)?;
                    }
                }
            }
            extract_into(extractor, &mut pending, &mut writer, &mut report)?;
            if let Some(idx) = writer.flush()? {
                cache.add_shard(idx)?;
            }
            Ok(())
        });
        bar.finish_and_clear();
        result?;
        Ok((cache, report))
    }
}

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the feature cache is little-endian"
);

enum Decoded {
    /// Content already cached under another path: only the stat mapping is new.
    Alias(Entry),
    Pixels(Entry, Vec<f32>),
    Failed(Entry),
    Unreadable(PathBuf, String),
}

fn decode(
    path: &Path,
    key: Option<StatKey>,
    cfg: &PreprocessConfig,
    known: &std::collections::HashSet<String>,
) -> Decoded {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return Decoded::Unreadable(path.to_path_buf(), e.to_string()),
    };
    let Some((p, size, mtime_ns)) = key else {
        return Decoded::Unreadable(path.to_path_buf(), "cannot stat".into());
    };
    let hash = hex::encode(&Sha256::digest(&bytes)[..16]);
    let mut entry = Entry {
        hash,
        path: p,
        size,
        mtime_ns,
        row: None,
        error: None,
    };
    if known.contains(&entry.hash) {
        return Decoded::Alias(entry);
    }
    // The PIL-exact decoder: features must come from the pixels HF/LLaVA would see.
    let img = crate::model::preprocess::decode_image(&bytes).map_err(|e| format!("{e:#}"));
    match img {
        Ok(img) => Decoded::Pixels(entry, preprocess(&img, cfg)),
        Err(e) => {
            entry.error = Some(e);
            Decoded::Failed(entry)
        }
    }
}

fn extract_into(
    extractor: &dyn FeatureExtractor,
    pending: &mut Vec<(Entry, Vec<f32>)>,
    writer: &mut ShardWriter,
    report: &mut BuildReport,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let (entries, pixels): (Vec<Entry>, Vec<Vec<f32>>) =
        std::mem::take(pending).into_iter().unzip();
    let feats = extractor
        .extract(&pixels)
        .context("running the image encoder")?;
    report.extract_calls += 1;
    if feats.len() != entries.len() {
        bail!(
            "encoder returned {} outputs for {} images",
            feats.len(),
            entries.len()
        );
    }
    for (mut e, f) in entries.into_iter().zip(feats) {
        if f.len() != writer.row_len {
            bail!(
                "encoder returned {} values per image, expected {}",
                f.len(),
                writer.row_len
            );
        }
        let start = writer.data.len();
        writer.data.resize(start + f.len(), f16::ZERO);
        writer.data[start..].convert_from_f32_slice(&f);
        e.row = Some(writer.rows);
        writer.rows += 1;
        writer.entries.push(e);
        report.extracted += 1;
    }
    Ok(())
}

/// A shard is also flushed at this size, so the write buffer stays small for big towers
/// (L/14-336 rows are 1.2 MB: ~220 images per shard).
const MAX_SHARD_BYTES: usize = 256 << 20;

struct ShardWriter {
    dir: PathBuf,
    row_len: usize,
    data: Vec<f16>,
    rows: usize,
    entries: Vec<Entry>,
    since: Instant,
    shard_images: usize,
    flush_every: Duration,
    seq: usize,
}

impl ShardWriter {
    fn new(dir: &Path, row_len: usize, opts: &BuildOptions) -> Self {
        Self {
            dir: dir.to_path_buf(),
            row_len,
            data: Vec::new(),
            rows: 0,
            entries: Vec::new(),
            since: Instant::now(),
            shard_images: opts.shard_images.max(1),
            flush_every: Duration::from_secs(opts.flush_secs),
            seq: 0,
        }
    }

    fn due(&self) -> bool {
        self.entries.len() >= self.shard_images
            || self.data.len() * 2 >= MAX_SHARD_BYTES
            || (!self.entries.is_empty() && self.since.elapsed() >= self.flush_every)
    }

    /// Writes the buffered rows and entries as one shard; returns its index (none if
    /// nothing was buffered).
    fn flush(&mut self) -> anyhow::Result<Option<ShardIndex>> {
        self.since = Instant::now();
        if self.entries.is_empty() {
            return Ok(None);
        }
        // Unique per process and call, so concurrent builders never collide; the time
        // prefix keeps `ls` in build order.
        let stamp = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("shard-{stamp:020}-{}-{}", std::process::id(), self.seq);
        self.seq += 1;
        let bin = format!("{name}.bin");
        if self.rows > 0 {
            let bytes: Vec<u8> = self.data.iter().flat_map(|h| h.to_le_bytes()).collect();
            write_atomic(&self.dir.join(&bin), &bytes)?;
        }
        let idx = ShardIndex {
            version: 1,
            bin,
            rows: self.rows,
            entries: std::mem::take(&mut self.entries),
        };
        write_atomic(
            &self.dir.join(format!("{name}.json")),
            &serde_json::to_vec(&idx)?,
        )?;
        self.data.clear();
        self.rows = 0;
        Ok(Some(idx))
    }
}

/// The preprocessing identity in the cache key.
pub fn preprocess_id(cfg: &PreprocessConfig) -> String {
    format!("pil-bicubic-v1 {cfg:?}")
}

fn stat_key(p: &Path) -> Option<StatKey> {
    let real = p.canonicalize().ok()?;
    let m = fs::metadata(&real).ok()?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Some((real.to_string_lossy().into_owned(), m.len(), mtime))
}

/// Temp name, fsync, rename: readers see the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
