//! Hugging Face checkpoint folders: `config.json` plus safetensors weights, either one
//! `model.safetensors` or shards listed in `model.safetensors.index.json`.
//!
//! Files are memory-mapped and each tensor is decoded on its own (f16/bf16/f32 to f32 on the
//! host, then to the compute dtype on the device), so loading never holds two full copies of
//! the weights: only the mapping (page cache) and the tensor being converted.
//!
//! PyTorch stores `Linear` weights as `[out, in]`; burn's `Linear` wants `[in, out]`. The
//! transposition happens here ([`Checkpoint::linear`]), once, while the tensor is converted.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorCreationOptions, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

/// A loading error that names what is wrong precisely enough to fix the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("missing file {0}")]
    MissingFile(PathBuf),
    #[error("tensor `{name}` not found in checkpoint {dir}")]
    MissingKey { name: String, dir: PathBuf },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?} (in {file})")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        file: PathBuf,
    },
    #[error("tensor `{name}` has dtype {found}, expected one of F32, F16, BF16 (in {file})")]
    Dtype {
        name: String,
        found: String,
        file: PathBuf,
    },
    #[error("{file}: {msg}")]
    Format { file: PathBuf, msg: String },
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the tensor data (after the 8-byte length and the JSON header).
    data_start: usize,
    meta: Metadata,
}

/// An opened checkpoint folder. Tensors are read on demand.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
    /// The dtype tensors are created in; `None` follows the device default (f32 on CPU).
    pub dtype: Option<DType>,
}

/// Reads and parses a JSON file, naming the path when it is missing or malformed.
pub fn read_json(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|_| LoadError::MissingFile(path.into()))?;
    serde_json::from_str(&text).map_err(|e| LoadError::Format {
        file: path.into(),
        msg: e.to_string(),
    })
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref().to_path_buf();
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let index = read_json(&index_path)?;
            let map = index["weight_map"]
                .as_object()
                .ok_or_else(|| LoadError::Format {
                    file: index_path.clone(),
                    msg: "no `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(LoadError::MissingFile(single));
        };
        Self::from_files(dir, files)
    }

    /// Opens one safetensors file (e.g. an exported projector or a test fixture).
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref().to_path_buf();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_files(dir, vec![path])
    }

    fn from_files(dir: PathBuf, files: Vec<PathBuf>) -> Result<Self, LoadError> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|_| LoadError::MissingFile(path.clone()))?;
            // SAFETY: the file is only read; checkpoints are not modified while a run loads them.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::Format {
                file: path.clone(),
                msg: e.to_string(),
            })?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| LoadError::Format {
                    file: path.clone(),
                    msg: e.to_string(),
                })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard {
                path,
                mmap,
                data_start: 8 + header_len,
                meta,
            });
        }
        Ok(Self {
            dir,
            shards,
            index,
            dtype: None,
        })
    }

    /// Creates tensors in `dtype` instead of the device default (e.g. bf16 on a GPU).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    /// Reads one tensor as f32 values (row-major) after checking its shape.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let mut out = Vec::with_capacity(expected.iter().product());
        self.decode(name, expected, |_, v| out.push(v))?;
        Ok(out)
    }

    /// Reads a `[rows, cols]` tensor transposed (`[cols, rows]`, row-major), decoding straight
    /// into place: a PyTorch `[out, in]` Linear weight as burn's `[in, out]` without a second
    /// full-size buffer.
    pub fn read_f32_transposed(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>, LoadError> {
        let mut out = vec![0f32; rows * cols];
        self.decode(name, &[rows, cols], |i, v| {
            out[(i % cols) * rows + i / cols] = v;
        })?;
        Ok(out)
    }

    /// Decodes tensor `name` element by element (`put(flat index, value)`) after checking
    /// its shape, then lets the kernel drop its mapped pages from this process: a checkpoint
    /// streams through memory once instead of staying resident beside the converted weights.
    fn decode(
        &self,
        name: &str,
        expected: &[usize],
        mut put: impl FnMut(usize, f32),
    ) -> Result<(), LoadError> {
        let shard = &self.shards[*self.index.get(name).ok_or_else(|| LoadError::MissingKey {
            name: name.into(),
            dir: self.dir.clone(),
        })?];
        let info = shard.meta.info(name).expect("indexed name");
        if info.shape != expected {
            return Err(LoadError::Shape {
                name: name.into(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
                file: shard.path.clone(),
            });
        }
        let (a, b) = info.data_offsets;
        let (start, len) = (shard.data_start + a, b - a);
        let bytes = &shard.mmap[start..start + len];
        let mut each = |width: usize, f: fn(&[u8]) -> f32| {
            for (i, c) in bytes.chunks_exact(width).enumerate() {
                put(i, f(c));
            }
        };
        match info.dtype {
            Dtype::F32 => each(4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::F16 => each(2, |c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            Dtype::BF16 => each(2, |c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            other => {
                return Err(LoadError::Dtype {
                    name: name.into(),
                    found: format!("{other:?}"),
                    file: shard.path.clone(),
                })
            }
        }
        // SAFETY: the mapping is private and read-only and no slice of it outlives this
        // call; dropped pages are read again from the file if ever touched.
        let _ = unsafe {
            shard
                .mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
        };
        Ok(())
    }

    fn options<B: Backend>(&self, device: &B::Device) -> TensorCreationOptions<B> {
        let o = TensorCreationOptions::new(device.clone());
        match self.dtype {
            Some(d) => o.with_dtype(d),
            None => o,
        }
    }

    /// Reads one tensor with exactly `shape`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, LoadError> {
        let values = self.read_f32(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.options::<B>(device),
        ))
    }

    /// A PyTorch `nn.Linear` (`{prefix}.weight` `[out, in]`, optional `{prefix}.bias`) as a
    /// burn `Linear` (`[in, out]`).
    pub fn linear<B: Backend>(
        &self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>, LoadError> {
        let t = self.read_f32_transposed(&format!("{prefix}.weight"), d_out, d_in)?;
        let weight =
            Tensor::from_data(TensorData::new(t, [d_in, d_out]), self.options::<B>(device));
        let bias = if bias {
            Some(Param::from_tensor(self.tensor(
                &format!("{prefix}.bias"),
                [d_out],
                device,
            )?))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// A PyTorch `nn.LayerNorm` (`weight`, `bias`) with the checkpoint's epsilon.
    pub fn layer_norm<B: Backend>(
        &self,
        prefix: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>, LoadError> {
        let mut ln = burn::nn::LayerNormConfig::new(d)
            .with_epsilon(eps)
            .init(device);
        ln.gamma = Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [d], device)?);
        ln.beta = Some(Param::from_tensor(self.tensor(
            &format!("{prefix}.bias"),
            [d],
            device,
        )?));
        Ok(ln)
    }

    /// A PyTorch `nn.Embedding` (`weight` `[n, d]`, same layout in burn).
    pub fn embedding<B: Backend>(
        &self,
        prefix: &str,
        n: usize,
        d: usize,
        device: &B::Device,
    ) -> Result<Embedding<B>, LoadError> {
        let mut e = burn::nn::EmbeddingConfig::new(n, d).init(device);
        e.weight = Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [n, d], device)?);
        Ok(e)
    }
}

/// Named f32 tensors in PyTorch layout under HF names: the writing side of
/// [`Checkpoint`]'s `linear` / `layer_norm` readers, for the savers of the tiny backbones.
#[derive(Default)]
pub struct HfTensors(pub Vec<(String, Vec<usize>, Vec<f32>)>);

impl HfTensors {
    pub fn tensor<B: Backend, const D: usize>(&mut self, name: String, t: Tensor<B, D>) {
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 values");
        self.0.push((name, shape, v));
    }

    /// `{pre}.weight` `[out, in]` (burn's `[in, out]` transposed back) and `{pre}.bias`.
    pub fn linear_parts<B: Backend>(
        &mut self,
        pre: &str,
        weight_in_out: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) {
        self.tensor(format!("{pre}.weight"), weight_in_out.transpose());
        if let Some(b) = bias {
            self.tensor(format!("{pre}.bias"), b);
        }
    }

    pub fn linear<B: Backend>(&mut self, pre: &str, l: &Linear<B>) {
        self.linear_parts(pre, l.weight.val(), l.bias.as_ref().map(|b| b.val()));
    }

    pub fn layer_norm<B: Backend>(&mut self, pre: &str, n: &LayerNorm<B>) {
        self.tensor(format!("{pre}.weight"), n.gamma.val());
        if let Some(b) = &n.beta {
            self.tensor(format!("{pre}.bias"), b.val());
        }
    }
}

/// Writes an HF model folder: `model.safetensors` (f32, through a temporary file) and
/// `config.json`. Shared by the savers of the tiny backbones.
pub fn save_hf_folder(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    config: &serde_json::Value,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    let tmp = dir.join("model.safetensors.tmp");
    write_f32_safetensors(&tmp, &refs)?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))?;
    crate::fsutil::write_atomic(
        &dir.join("config.json"),
        &serde_json::to_vec_pretty(config)?,
    )
}

/// Writes named f32 tensors as one safetensors file (used by `harness probe`).
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
) -> anyhow::Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: BTreeMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)?;
            Ok((name.to_string(), view))
        })
        .collect::<anyhow::Result<_>>()?;
    safetensors::serialize_to_file(views, None, path)?;
    Ok(())
}

/// Tensors by name: (shape, row-major values).
pub type F32Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a safetensors file fully into f32 tensors (integers converted); for tests and tools.
pub fn read_all_f32(path: &Path) -> anyhow::Result<F32Tensors> {
    let buf = std::fs::read(path).map_err(|_| LoadError::MissingFile(path.into()))?;
    let st = SafeTensors::deserialize(&buf)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let b = view.data();
        let v: Vec<f32> = match view.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::U8 => b.iter().map(|&x| x as f32).collect(),
            other => anyhow::bail!(
                "{}: tensor {name} has unsupported dtype {other:?}",
                path.display()
            ),
        };
        out.insert(name, (view.shape().to_vec(), v));
    }
    Ok(out)
}
