//! The streaming safetensors writer: a checkpoint is a list of [`TensorSpec`]s, split into
//! shards the way transformers splits a state dict, and each shard file is written header
//! first (offsets follow from the shapes alone) and then tensor by tensor, block by block,
//! the blocks drawn on several threads. Only a few blocks are ever in memory, whatever the
//! model's size.
//!
//! The bytes are those `safetensors.torch.save_file` writes: tensors ordered by dtype
//! alignment (largest first) then name, the header built with the `safetensors` crate's own
//! metadata type (`{"__metadata__": {"format": "pt"}, ...}`, what `save_pretrained` puts
//! there), padded with spaces to a multiple of 8 bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use serde_json::{json, Value};

use super::draw::{fill_block, name_key, Init, BLOCK};

/// One tensor of a checkpoint: HF name, PyTorch shape, stored dtype, how it is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub init: Init,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[usize], dtype: Dtype, init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            init,
        }
    }

    /// Number of elements (1 for a scalar, shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of data in the file.
    pub fn nbytes(&self) -> u64 {
        (self.numel() * self.dtype.bitsize() / 8) as u64
    }
}

/// How values are drawn: the seed, the normal's standard deviation, worker threads.
#[derive(Debug, Clone, Copy)]
pub struct DrawOptions {
    pub seed: u64,
    pub std: f32,
    /// Threads drawing blocks (0 = all cores).
    pub threads: usize,
}

impl DrawOptions {
    fn workers(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Groups of tensor indices, one per shard, as huggingface_hub's
/// `split_torch_state_dict_into_shards` (what `save_pretrained` calls) makes them: walk the
/// state dict in order, start a new shard when the next tensor would take the current one
/// past `max_shard_bytes`, and give a tensor bigger than the limit a shard of its own.
pub fn plan_shards(tensors: &[TensorSpec], max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.nbytes();
        if n > max_shard_bytes {
            shards.push(vec![i]);
            continue;
        }
        if size + n > max_shard_bytes && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += n;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// File names for `n` shards: `model.safetensors` alone, else `model-00001-of-0000n...`.
pub fn shard_names(n: usize) -> Vec<String> {
    if n == 1 {
        return vec!["model.safetensors".into()];
    }
    (1..=n)
        .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
        .collect()
}

/// The order tensors take inside one file: dtype alignment descending, then name (the
/// `safetensors` crate's order, which PyTorch's `save_file` goes through).
pub fn file_order(tensors: &[&TensorSpec]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (tensors[a], tensors[b]);
        tb.dtype.cmp(&ta.dtype).then(ta.name.cmp(&tb.name))
    });
    order
}

/// The start of a safetensors file: the 8-byte little-endian header length and the JSON
/// header (space-padded to 8 bytes), for tensors in `order`.
pub fn header(tensors: &[&TensorSpec], order: &[usize]) -> Result<Vec<u8>> {
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    for &i in order {
        let t = tensors[i];
        let n = t.nbytes() as usize;
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(meta), infos).context("building the safetensors header")?;
    let mut json = serde_json::to_vec(&metadata)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// `values` in `dtype`'s little-endian bytes, appended to `out`.
fn encode(values: &[f32], dtype: Dtype, out: &mut Vec<u8>) -> Result<()> {
    match dtype {
        Dtype::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F16 => {
            for v in values {
                out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for v in values {
                out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        other => bail!("synthetic tensors are float: dtype {other:?} is not supported"),
    }
    Ok(())
}

/// Per-thread buffers reused across blocks, so the writer allocates once.
struct Scratch {
    values: Vec<f32>,
    bytes: Vec<u8>,
}

/// Writes one tensor's data, `workers` blocks at a time, in block order.
fn stream_tensor(
    f: &mut impl Write,
    t: &TensorSpec,
    draw: &DrawOptions,
    scratch: &mut [Scratch],
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let key = name_key(&t.name);
    let numel = t.numel();
    let blocks = numel.div_ceil(BLOCK);
    let mut first = 0;
    while first < blocks {
        let window = (blocks - first).min(scratch.len());
        let fill = |k: usize, s: &mut Scratch| -> Result<()> {
            let b = first + k;
            let len = BLOCK.min(numel - b * BLOCK);
            s.values.resize(len, 0.0);
            fill_block(t.init, draw.seed, key, b as u64, draw.std, &mut s.values);
            s.bytes.clear();
            encode(&s.values, t.dtype, &mut s.bytes)
        };
        if window == 1 {
            fill(0, &mut scratch[0])?;
        } else {
            std::thread::scope(|sc| -> Result<()> {
                let handles: Vec<_> = scratch[..window]
                    .iter_mut()
                    .enumerate()
                    .map(|(k, s)| sc.spawn(move || fill(k, s)))
                    .collect();
                for h in handles {
                    h.join().expect("a block-drawing thread panicked")?;
                }
                Ok(())
            })?;
        }
        for s in &scratch[..window] {
            f.write_all(&s.bytes)?;
            on_bytes(s.bytes.len() as u64);
        }
        first += window;
    }
    Ok(())
}

/// Writes one safetensors file holding `tensors` (any order given; the file's own order is
/// [`file_order`]) and fsyncs it. `on_bytes` hears of every data block written. Returns the
/// file's size.
pub fn write_safetensors(
    path: &Path,
    tensors: &[&TensorSpec],
    draw: &DrawOptions,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64> {
    let order = file_order(tensors);
    let head = header(tensors, &order)?;
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut scratch: Vec<Scratch> = (0..draw.workers())
        .map(|_| Scratch {
            values: Vec::new(),
            bytes: Vec::new(),
        })
        .collect();
    let result = (|| -> Result<u64> {
        f.write_all(&head)?;
        let mut total = head.len() as u64;
        for &i in &order {
            stream_tensor(&mut f, tensors[i], draw, &mut scratch, on_bytes)?;
            total += tensors[i].nbytes();
        }
        f.sync_all()?;
        Ok(total)
    })();
    result.with_context(|| format!("writing {}", path.display()))
}

/// `model.safetensors.index.json` as transformers writes it: `metadata.total_size` (bytes of
/// tensor data, headers excluded) and the `weight_map` from each name to its shard file.
pub fn index_json(tensors: &[TensorSpec], shards: &[Vec<usize>], names: &[String]) -> Value {
    let total: u64 = tensors.iter().map(TensorSpec::nbytes).sum();
    let mut map = serde_json::Map::new();
    for (shard, file) in shards.iter().zip(names) {
        for &i in shard {
            map.insert(tensors[i].name.clone(), Value::String(file.clone()));
        }
    }
    json!({"metadata": {"total_size": total}, "weight_map": map})
}

/// Writes the weight files of a checkpoint into the existing folder `dir`: one
/// `model.safetensors`, or shards of at most `max_shard_bytes` plus their index. Returns
/// (file name, size) of each file written.
pub fn write_checkpoint(
    dir: &Path,
    tensors: &[TensorSpec],
    max_shard_bytes: u64,
    draw: &DrawOptions,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Vec<(String, u64)>> {
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            bail!("tensor `{}` appears twice in the checkpoint spec", t.name);
        }
    }
    let shards = plan_shards(tensors, max_shard_bytes);
    let names = shard_names(shards.len());
    let mut written = Vec::new();
    for (shard, name) in shards.iter().zip(&names) {
        let members: Vec<&TensorSpec> = shard.iter().map(|&i| &tensors[i]).collect();
        let size = write_safetensors(&dir.join(name), &members, draw, on_bytes)?;
        written.push((name.clone(), size));
    }
    if shards.len() > 1 {
        let index = index_json(tensors, &shards, &names);
        let mut text = super::pyjson::dumps(&index, true);
        text.push('\n');
        let file = "model.safetensors.index.json";
        std::fs::write(dir.join(file), &text)
            .with_context(|| format!("cannot write {}", dir.join(file).display()))?;
        written.push((file.into(), text.len() as u64));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::Checkpoint;
    use crate::model::synth_backbone::draw::values;
    use safetensors::SafeTensors;

    fn draw(threads: usize) -> DrawOptions {
        DrawOptions {
            seed: 11,
            std: 0.02,
            threads,
        }
    }

    /// A tiny model in state-dict order, LayerNorms and a scalar included.
    fn tiny(dtype: Dtype) -> Vec<TensorSpec> {
        vec![
            TensorSpec::new("embed.weight", &[10, 4], dtype, Init::Normal),
            TensorSpec::new("layers.0.fc.weight", &[6, 4], dtype, Init::Normal),
            TensorSpec::new("layers.0.fc.bias", &[6], dtype, Init::Normal),
            TensorSpec::new("layers.0.ln.weight", &[4], dtype, Init::Constant(1.0)),
            TensorSpec::new("layers.0.ln.bias", &[4], dtype, Init::Constant(0.0)),
            TensorSpec::new("layers.1.fc.weight", &[6, 4], dtype, Init::Normal),
            TensorSpec::new("head.weight", &[10, 4], dtype, Init::Normal),
            TensorSpec::new("scale", &[], dtype, Init::Constant(4.5)),
        ]
    }

    /// The expected values of a tensor, rounded through its dtype.
    fn expected(t: &TensorSpec, d: &DrawOptions) -> Vec<f32> {
        let v = values(t.init, d.seed, &t.name, t.numel(), d.std);
        match t.dtype {
            Dtype::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
            _ => v,
        }
    }

    #[test]
    fn shards_split_like_huggingface_hub() {
        // f32 sizes: 160, 96, 24, 16, 16, 96, 160, 4 bytes.
        let t = tiny(Dtype::F32);
        // 200-byte shards: 160 | 96+24+16+16=152 | 96 (+160 would pass 200) | 160+4.
        assert_eq!(
            plan_shards(&t, 200),
            vec![vec![0], vec![1, 2, 3, 4], vec![5], vec![6, 7]]
        );
        // A tensor over the limit gets a shard of its own, emitted before the open one.
        assert_eq!(
            plan_shards(&t, 120),
            vec![vec![0], vec![1, 2], vec![3, 4], vec![6], vec![5, 7]]
        );
        assert_eq!(plan_shards(&t, 1 << 30), vec![(0..8).collect::<Vec<_>>()]);
        assert_eq!(
            shard_names(2),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        assert_eq!(shard_names(1), ["model.safetensors"]);
    }

    #[test]
    fn a_streamed_file_is_byte_identical_to_safetensors_serialize() {
        for dtype in [Dtype::F16, Dtype::F32, Dtype::BF16] {
            let t = tiny(dtype);
            let d = draw(3);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.safetensors");
            let refs: Vec<&TensorSpec> = t.iter().collect();
            let mut seen = 0u64;
            let size = write_safetensors(&path, &refs, &d, &mut |n| seen += n).unwrap();
            let ours = std::fs::read(&path).unwrap();
            assert_eq!(size, ours.len() as u64);
            assert_eq!(seen, t.iter().map(TensorSpec::nbytes).sum::<u64>());
            // The same tensors, materialised and serialised by the safetensors crate.
            let bytes: Vec<Vec<u8>> = t
                .iter()
                .map(|s| {
                    let mut b = Vec::new();
                    let v = values(s.init, d.seed, &s.name, s.numel(), d.std);
                    encode(&v, s.dtype, &mut b).unwrap();
                    b
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
                .iter()
                .zip(&bytes)
                .map(|(s, b)| {
                    let view =
                        safetensors::tensor::TensorView::new(s.dtype, s.shape.clone(), b).unwrap();
                    (s.name.clone(), view)
                })
                .collect();
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            let theirs = safetensors::serialize(views, Some(meta)).unwrap();
            assert_eq!(ours, theirs, "{dtype:?}");
        }
    }

    #[test]
    fn header_offsets_follow_shapes_in_name_order() {
        let t = tiny(Dtype::F16);
        let refs: Vec<&TensorSpec> = t.iter().collect();
        let order = file_order(&refs);
        let names: Vec<&str> = order.iter().map(|&i| t[i].name.as_str()).collect();
        assert_eq!(
            names,
            [
                "embed.weight",
                "head.weight",
                "layers.0.fc.bias",
                "layers.0.fc.weight",
                "layers.0.ln.bias",
                "layers.0.ln.weight",
                "layers.1.fc.weight",
                "scale"
            ]
        );
        let head = header(&refs, &order).unwrap();
        let n = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
        assert_eq!(head.len(), 8 + n);
        assert_eq!(n % 8, 0);
        let json: Value = serde_json::from_slice(&head[8..]).unwrap();
        assert_eq!(json["__metadata__"], json!({"format": "pt"}));
        // f16 sizes in name order: 80, 80, 12, 48, 8, 8, 48, 2.
        let want = [
            ("embed.weight", 0, 80),
            ("head.weight", 80, 160),
            ("layers.0.fc.bias", 160, 172),
            ("layers.0.fc.weight", 172, 220),
            ("layers.0.ln.bias", 220, 228),
            ("layers.0.ln.weight", 228, 236),
            ("layers.1.fc.weight", 236, 284),
            ("scale", 284, 286),
        ];
        for (name, a, b) in want {
            assert_eq!(json[name]["data_offsets"], json!([a, b]), "{name}");
            assert_eq!(json[name]["dtype"], "F16");
        }
        assert_eq!(json["scale"]["shape"], json!([]));
    }

    #[test]
    fn sharded_checkpoint_reloads_with_the_drawn_values() {
        let t = tiny(Dtype::F16);
        let d = draw(2);
        let dir = tempfile::tempdir().unwrap();
        let files = write_checkpoint(dir.path(), &t, 100, &d, &mut |_| {}).unwrap();
        // f16 sizes in spec order 80, 48, 12, 8, 8, 48, 80, 2 with 100-byte shards:
        // 80 | 48+12+8+8=76 | 48 | 80+2.
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00004.safetensors",
                "model-00002-of-00004.safetensors",
                "model-00003-of-00004.safetensors",
                "model-00004-of-00004.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(names[4])).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 286);
        assert_eq!(
            index["weight_map"]["layers.0.ln.bias"],
            "model-00002-of-00004.safetensors"
        );
        assert_eq!(
            index["weight_map"]["scale"],
            "model-00004-of-00004.safetensors"
        );
        assert_eq!(index["weight_map"].as_object().unwrap().len(), 8);
        // Each shard holds exactly its tensors, as the safetensors crate reads them.
        let shard2 = std::fs::read(dir.path().join(names[1])).unwrap();
        let st = SafeTensors::deserialize(&shard2).unwrap();
        let mut in2: Vec<String> = st.names().into_iter().map(String::from).collect();
        in2.sort();
        assert_eq!(
            in2,
            [
                "layers.0.fc.bias",
                "layers.0.fc.weight",
                "layers.0.ln.bias",
                "layers.0.ln.weight"
            ]
        );
        // The harness's loader finds every tensor through the index, values as drawn.
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.names().len(), 8);
        for s in &t {
            let got = ck.read_f32(&s.name, &s.shape).unwrap();
            assert_eq!(got, expected(s, &d), "{}", s.name);
        }
        assert_eq!(ck.read_f32("scale", &[]).unwrap(), [4.5]);
        assert_eq!(ck.read_f32("layers.0.ln.weight", &[4]).unwrap(), [1.0; 4]);
    }

    #[test]
    fn thread_count_does_not_change_the_bytes() {
        // Tensors of several blocks, so windows of blocks really run in parallel.
        let t = vec![
            TensorSpec::new("big", &[2 * BLOCK + 77], Dtype::F16, Init::Normal),
            TensorSpec::new("b", &[5], Dtype::F16, Init::Normal),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for threads in [1, 2, 5] {
            let sub = dir.path().join(threads.to_string());
            std::fs::create_dir(&sub).unwrap();
            write_checkpoint(&sub, &t, u64::MAX, &draw(threads), &mut |_| {}).unwrap();
            files.push(std::fs::read(sub.join("model.safetensors")).unwrap());
        }
        assert_eq!(files[0], files[1]);
        assert_eq!(files[0], files[2]);
        let st = SafeTensors::deserialize(&files[0]).unwrap();
        let big = st.tensor("big").unwrap();
        let got: Vec<f32> = big
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(got, expected(&t[0], &draw(1)));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let t = vec![
            TensorSpec::new("w", &[2], Dtype::F32, Init::Normal),
            TensorSpec::new("w", &[2], Dtype::F32, Init::Normal),
        ];
        let dir = tempfile::tempdir().unwrap();
        let err = write_checkpoint(dir.path(), &t, u64::MAX, &draw(1), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("`w` appears twice"), "{err}");
    }
}
