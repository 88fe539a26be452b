//! NF4 (4-bit NormalFloat) quantization of frozen base weights for QLoRA, with the numerics
//! of bitsandbytes (`quantize_4bit` / `dequantize_4bit`, `quant_type="nf4"`), DESIGN.md
//! section 3.
//!
//! - Blocks of `blocksize` (64) run over the tensor's elements in row-major order, whatever
//!   its shape; the last block may be partial.
//! - Each block keeps its absmax; each element is divided by it and mapped to the nearest of
//!   the 16 [`NF4_CODE`] values. The decision thresholds are the float32 midpoints between
//!   neighbouring codes and a value exactly on a threshold takes the lower code (bitsandbytes'
//!   CUDA decision tree uses `x > threshold`, its CPU kernel `bucketize`; both agree).
//! - Two codes per byte, the first element in the high nibble; an odd element count pads the
//!   last low nibble with the code of 0.0.
//! - Double quantization (`compress_statistics=True`): the absmax values minus their mean are
//!   quantized blockwise (256) to 8 bits with the signed dynamic map ([`dynamic_map`]); the
//!   mean is kept as an f32 offset.
//!
//! Parity: `scripts/ref_nf4.py` records what bitsandbytes (0.50, CPU) computes for the inputs
//! under `tests/fixtures/nf4/`; codes, absmax and dequantized values agree bit for bit, and
//! with double quantization too when the 8-bit codes are picked like its CPU kernel
//! ([`DqRounding::CpuLut`]); tests in `tests/it/qlora.rs`.
//!
//! Where bitsandbytes' own kernels disagree, this follows its CPU path (the one the fixtures
//! come from): the partial last block is divided by its absmax (the CUDA kernel multiplies by
//! the reciprocal, which can move a value one ulp across a threshold) and an all-zero block
//! gets the code of 0.0 (the CUDA kernel computes 0 * inf = NaN and stores code 0, which
//! dequantizes to -0.0 instead of +0.0).

use std::any::{Any, TypeId};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use super::probe::Named;

/// How a tensor is quantized. `Default` is the QLoRA recipe: block 64, double quantization
/// with block 256 (bitsandbytes' `Linear4bit` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nf4Config {
    /// Elements per absmax block (bitsandbytes accepts 32..4096, powers of two).
    pub blocksize: usize,
    /// Quantize the absmax values too (`compress_statistics`).
    pub double_quant: bool,
    /// absmax values per second-level block (bitsandbytes fixes it at 256).
    pub dq_blocksize: usize,
    /// How a scaled absmax value picks its 8-bit code.
    pub dq_rounding: DqRounding,
}

/// The two ways bitsandbytes picks 8-bit codes when it double-quantizes; they disagree on a
/// few percent of the absmax values (by one code step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DqRounding {
    /// The nearest code: bitsandbytes' CUDA kernel (binary search + midpoint), its torch
    /// fallback and its CPU kernel before 0.50.
    #[default]
    Nearest,
    /// bitsandbytes >= 0.50 on the CPU: the scaled value is snapped to one of 65536 evenly
    /// spaced points in [-1, 1] and that point's nearest code is used, which near zero (where
    /// the dynamic map is finer than the grid) is not always the nearest code. Reproduced
    /// exactly for parity with a CPU bitsandbytes reference.
    CpuLut,
}

impl std::str::FromStr for DqRounding {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "nearest" => Ok(Self::Nearest),
            "cpu-lut" => Ok(Self::CpuLut),
            other => anyhow::bail!("unknown double-quant rounding `{other}` (nearest, cpu-lut)"),
        }
    }
}

impl Default for Nf4Config {
    fn default() -> Self {
        Self {
            blocksize: 64,
            double_quant: true,
            dq_blocksize: 256,
            dq_rounding: DqRounding::Nearest,
        }
    }
}

impl Nf4Config {
    pub fn with_double_quant(mut self, on: bool) -> Self {
        self.double_quant = on;
        self
    }
}

/// The NF4 code values, bitsandbytes' float32 constants (`get_4bit_type("nf4")`), sorted, so
/// the 4-bit code of a value is its index here.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Decision thresholds: float32 midpoints of neighbouring codes (these equal the literals of
/// bitsandbytes' CUDA decision tree bit for bit).
const NF4_THRESHOLDS: [f32; 15] = {
    let mut t = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        t[i] = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
        i += 1;
    }
    t
};

/// bitsandbytes clamps the divisor at 1e-38 (as f32), so all-zero and subnormal blocks
/// quantize to finite values; the stored absmax of a full block stays unclamped.
const MIN_ABSMAX: f32 = 1e-38;

/// Code of 0.0, used for the pad nibble of an odd element count.
const NF4_ZERO: u8 = 7;

/// The 4-bit code of a value already scaled into [-1, 1]: how many thresholds lie strictly
/// below it, so a tie goes to the lower code.
#[inline]
fn nf4_code(x: f32) -> u8 {
    NF4_THRESHOLDS.iter().map(|&t| (x > t) as u8).sum()
}

/// First-level block scales: plain f32, or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Nf4Scales {
    /// One absmax per block.
    F32(Vec<f32>),
    /// absmax = `DYNAMIC_MAP[codes[i]] * absmax2[i / blocksize] + offset`.
    Double {
        codes: Vec<u8>,
        absmax2: Vec<f32>,
        offset: f32,
        blocksize: usize,
    },
}

/// Backends' own copies of a tensor's packed codes and scales, made on first use by
/// `lora`'s device-side dequantization, one per backend type (the compute backend in
/// training, its autodiff wrapper when a merged weight is read) and device (data-parallel
/// replicas share the packed tensor, each worker on its own GPU); opaque here so this module
/// stays backend-free. Cloning the tensor starts empty copies; they take no part in equality.
#[derive(Default)]
#[allow(clippy::type_complexity)]
pub struct DeviceCopy(Mutex<Vec<((TypeId, String), Arc<dyn Any + Send + Sync>)>>);

impl DeviceCopy {
    /// The copy of type `T` for the device named `device`, made by `make` the first time.
    pub fn get_or_init<T: Any + Send + Sync>(
        &self,
        device: String,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let id = (TypeId::of::<T>(), device);
        let mut copies = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let any = match copies.iter().find(|(t, _)| *t == id) {
            Some((_, c)) => c.clone(),
            None => {
                let c: Arc<dyn Any + Send + Sync> = Arc::new(make());
                copies.push((id, c.clone()));
                c
            }
        };
        any.downcast::<T>()
            .expect("the copy stored under T's id is a T")
    }
}

impl Clone for DeviceCopy {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for DeviceCopy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for DeviceCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCopy")
    }
}

/// A tensor in packed NF4: what stays in memory for a frozen QLoRA base weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// The original shape (row-major), e.g. PyTorch's `[out, in]` for a Linear weight.
    pub shape: Vec<usize>,
    pub blocksize: usize,
    /// Two codes per byte, element `2k` in the high nibble, `2k + 1` in the low one.
    pub codes: Vec<u8>,
    pub scales: Nf4Scales,
    /// The GPU's copy (empty on the CPU, where the host loop dequantizes).
    pub device_copy: DeviceCopy,
}

impl Nf4Tensor {
    /// Quantizes row-major `values` of `shape`.
    pub fn quantize(values: &[f32], shape: &[usize], cfg: &Nf4Config) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(values.len(), n, "values do not match shape {shape:?}");
        assert!(
            cfg.blocksize >= 2 && cfg.blocksize.is_multiple_of(2),
            "bad blocksize"
        );
        let bs = cfg.blocksize;
        let mut absmax = vec![0f32; n.div_ceil(bs)];
        let mut codes = vec![0u8; n.div_ceil(2)];
        // Blocks are independent: big tensors are split over the cores (Phi-2 has 2.5B
        // weights to pack at load time).
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        if threads == 1 || n < 1 << 20 {
            quantize_blocks(values, &mut codes, &mut absmax, bs);
        } else {
            let per = absmax.len().div_ceil(threads);
            std::thread::scope(|s| {
                let tasks = values
                    .chunks(per * bs)
                    .zip(codes.chunks_mut(per * bs / 2))
                    .zip(absmax.chunks_mut(per));
                for ((v, c), a) in tasks {
                    s.spawn(move || quantize_blocks(v, c, a, bs));
                }
            });
        }
        let scales = if cfg.double_quant {
            double_quantize(&absmax, cfg.dq_blocksize, cfg.dq_rounding)
        } else {
            Nf4Scales::F32(absmax)
        };
        Self {
            shape: shape.to_vec(),
            blocksize: bs,
            codes,
            scales,
            device_copy: DeviceCopy::default(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The first-level absmax values (dequantized when double-quantized).
    pub fn absmax(&self) -> Vec<f32> {
        match &self.scales {
            Nf4Scales::F32(a) => a.clone(),
            Nf4Scales::Double {
                codes,
                absmax2,
                offset,
                blocksize,
            } => {
                let map = dynamic_map();
                codes
                    .iter()
                    .enumerate()
                    // Two roundings, like bitsandbytes: dequantize_blockwise, then `+= offset`.
                    .map(|(i, &c)| map[c as usize] * absmax2[i / blocksize] + offset)
                    .collect()
            }
        }
    }

    /// The dequantized values, row-major, `NF4_CODE[code] * absmax` in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        self.dequantize_into(&mut out);
        out
    }

    /// Dequantizes into `out` (`numel` long); large tensors are split over threads.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.numel());
        let absmax = self.absmax();
        let bs = self.blocksize;
        let run = |first_block: usize, out: &mut [f32]| {
            for (j, chunk) in out.chunks_mut(bs).enumerate() {
                let b = first_block + j;
                let scale = absmax[b];
                let codes = &self.codes[b * bs / 2..];
                for (k, o) in chunk.iter_mut().enumerate() {
                    let byte = codes[k / 2];
                    let c = if k % 2 == 0 { byte >> 4 } else { byte & 15 };
                    *o = NF4_CODE[c as usize] * scale;
                }
            }
        };
        // One task per core, but only for tensors big enough to pay for the threads.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || out.len() < 1 << 20 {
            run(0, out);
            return;
        }
        let blocks_per_chunk = out.len().div_ceil(bs).div_ceil(threads);
        std::thread::scope(|s| {
            for (i, chunk) in out.chunks_mut(blocks_per_chunk * bs).enumerate() {
                let run = &run;
                s.spawn(move || run(i * blocks_per_chunk, chunk));
            }
        });
    }

    /// Bytes held: packed codes plus scales (what replaces `4 * numel` bytes of f32).
    pub fn memory_bytes(&self) -> usize {
        let scales = match &self.scales {
            Nf4Scales::F32(a) => 4 * a.len(),
            Nf4Scales::Double { codes, absmax2, .. } => codes.len() + 4 * absmax2.len() + 4,
        };
        self.codes.len() + scales
    }
}

/// Quantizes consecutive blocks of `values` into `codes` (two per byte) and `absmax`.
fn quantize_blocks(values: &[f32], codes: &mut [u8], absmax: &mut [f32], bs: usize) {
    // Blocks are even-sized, so a block always starts on a byte boundary.
    for ((block, out), am_out) in values
        .chunks(bs)
        .zip(codes.chunks_mut(bs / 2))
        .zip(absmax.iter_mut())
    {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        if block.len() == bs {
            // bitsandbytes multiplies full blocks by the reciprocal...
            let inv = 1.0 / am.max(MIN_ABSMAX);
            pack(block, out, |v| v * inv);
            *am_out = am;
        } else {
            // ...and divides the partial last one (and stores its clamped absmax).
            let am = am.max(MIN_ABSMAX);
            pack(block, out, |v| v / am);
            *am_out = am;
        }
    }
}

/// Writes the codes of `block` (even start) into `out`, two per byte.
fn pack(block: &[f32], out: &mut [u8], scale: impl Fn(f32) -> f32) {
    let q = |v: f32| nf4_code(scale(v).clamp(-1.0, 1.0));
    for (pair, byte) in block.chunks(2).zip(out.iter_mut()) {
        let lo = pair.get(1).map_or(NF4_ZERO, |&v| q(v));
        *byte = (q(pair[0]) << 4) | lo;
    }
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), 256 sorted
/// values in [-1, 1]: for each decade 1e-6..1 the midpoints of a float32 `linspace(0.1, 1)`
/// with 2^i + 1 points, both signs, plus 0 and 1. Built with the same float32 operations as
/// torch (linspace evaluates `start + i * step` with one rounding), checked against the
/// fixture bit for bit.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    MAP.get_or_init(build_dynamic_map)
}

fn build_dynamic_map() -> [f32; 256] {
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut v = Vec::with_capacity(256);
    for (i, &decade) in DECADES.iter().enumerate() {
        let n = (1usize << i) + 1;
        let (start, end) = (0.1f32, 1.0f32);
        let step = (end - start) / (n - 1) as f32;
        let point = |k: usize| {
            if k < n / 2 {
                (k as f32).mul_add(step, start)
            } else {
                (-((n - 1 - k) as f32)).mul_add(step, end)
            }
        };
        for k in 0..n - 1 {
            let mid = (point(k) + point(k + 1)) / 2.0;
            let x = decade as f32 * mid;
            v.push(x);
            v.push(-x);
        }
    }
    v.push(0.0);
    v.push(1.0);
    v.sort_by(f32::total_cmp);
    v.try_into().expect("256 values")
}

/// The 8-bit code of `x` (already scaled by the block's reciprocal absmax) in a sorted
/// 256-entry map: the binary search of bitsandbytes' CUDA `dQuantize`, then the nearer of the
/// found entry and its neighbour on `x`'s side (a midpoint tie keeps the found entry).
fn code8(map: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut lo_i, mut hi_i) = (127usize, 0usize, 255usize);
    let (mut lo, mut hi) = (-1.0f32, 1.0f32);
    let mut val = map[pivot];
    let mut step = 64;
    while step > 0 {
        if x > val {
            (lo_i, lo) = (pivot, val);
            pivot += step;
        } else {
            (hi_i, hi) = (pivot, val);
            pivot -= step;
        }
        val = map[pivot];
        step >>= 1;
    }
    if hi_i == 255 {
        hi = map[255];
    }
    if lo_i == 0 {
        lo = map[0];
    }
    let idx = if x > val {
        if x > (hi + val) * 0.5 {
            hi_i
        } else {
            pivot
        }
    } else if x < (lo + val) * 0.5 {
        lo_i
    } else {
        pivot
    };
    idx as u8
}

/// bitsandbytes' CPU lookup table (csrc/cpu_ops.cpp, 0.50): for each of 65536 evenly spaced
/// points `-1 + 2i/65535` in [-1, 1], the number of map midpoints strictly below it.
fn cpu_lut(map: &[f32; 256]) -> Vec<u8> {
    let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    (0..65536u32)
        .map(|i| {
            let point = -1.0f32 + (2.0 * i as f32) / 65535.0;
            mids.iter().take_while(|&&m| m < point).count() as u8
        })
        .collect()
}

/// The grid point a scaled value snaps to (float32 ops as in bitsandbytes' CPU kernel; an FMA
/// in the last step gives the same index on every value tried).
fn cpu_lut_index(x: f32) -> usize {
    ((x.clamp(-1.0, 1.0) + 1.0) * 0.5 * 65535.0 + 0.5) as u16 as usize
}

/// Blockwise 8-bit quantization with a code map (bitsandbytes `quantize_blockwise`):
/// (codes, absmax per block). An all-zero block gets code 0 and absmax 0.
pub fn quantize_blockwise_8bit(
    values: &[f32],
    map: &[f32; 256],
    blocksize: usize,
    rounding: DqRounding,
) -> (Vec<u8>, Vec<f32>) {
    let lut = (rounding == DqRounding::CpuLut).then(|| cpu_lut(map));
    let code = |x: f32| match &lut {
        None => code8(map, x),
        Some(lut) => lut[cpu_lut_index(x)],
    };
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
        } else {
            let inv = 1.0 / am;
            codes.extend(block.iter().map(|&v| code(v * inv)));
        }
    }
    (codes, absmax)
}

/// Double quantization of first-level absmax values: centre on the mean, 8-bit blockwise.
fn double_quantize(absmax: &[f32], blocksize: usize, rounding: DqRounding) -> Nf4Scales {
    // torch's float32 mean; summing in f64 and rounding once agrees with it to the last bit
    // on the fixtures (it could differ by one ulp on other inputs).
    let offset = if absmax.is_empty() {
        0.0
    } else {
        (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32
    };
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (codes, absmax2) = quantize_blockwise_8bit(&centred, dynamic_map(), blocksize, rounding);
    Nf4Scales::Double {
        codes,
        absmax2,
        offset,
        blocksize,
    }
}

/// Reads one tensor of a safetensors file as f32 (F32, F16 or BF16): (shape, values).
pub fn read_tensor_f32(path: &Path, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is only read, and not modified while the probe runs.
    let mmap = unsafe { memmap2::Mmap::map(&file) }?;
    let st = SafeTensors::deserialize(&mmap).with_context(|| format!("{}", path.display()))?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<String> = st.names().iter().map(|s| s.to_string()).collect();
        names.sort();
        anyhow::anyhow!(
            "tensor `{name}` not in {} (it has: {})",
            path.display(),
            names.join(", ")
        )
    })?;
    let b = view.data();
    let values = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => anyhow::bail!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
    };
    Ok((view.shape().to_vec(), values))
}

/// `harness probe nf4`: quantizes tensor `name` of the safetensors file `input` to NF4 (block
/// 64, optionally double-quantized) and returns `deq`, the dequantized tensor (same shape).
/// `rounding` picks how the block scales are double-quantized (see [`DqRounding`]).
pub fn probe_nf4(
    input: &Path,
    name: &str,
    double_quant: bool,
    rounding: DqRounding,
) -> anyhow::Result<Vec<Named>> {
    let (shape, values) = read_tensor_f32(input, name)?;
    let cfg = Nf4Config {
        double_quant,
        dq_rounding: rounding,
        ..Nf4Config::default()
    };
    let q = Nf4Tensor::quantize(&values, &shape, &cfg);
    Ok(vec![("deq", shape, q.dequantize())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    #[test]
    fn nf4_codes_round_trip_exactly() {
        // Every code value times a power-of-two absmax comes back unchanged.
        let mut v: Vec<f32> = NF4_CODE.iter().map(|c| c * 4.0).collect();
        v.extend(NF4_CODE.iter().rev().map(|c| c * 4.0));
        v.extend(vec![0.0; 32]);
        let q = Nf4Tensor::quantize(&v, &[64], &Nf4Config::default().with_double_quant(false));
        assert_eq!(q.dequantize(), v);
        assert_eq!(q.codes[0], 0x01, "first element in the high nibble");
    }

    #[test]
    fn nf4_nearest_code_and_ties_go_down() {
        for (i, &t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(
                nf4_code(t) as usize,
                i,
                "a tie at threshold {i} takes the lower code"
            );
            // the next float above the threshold takes the upper code
            let up = f32::from_bits(if t > 0.0 {
                t.to_bits() + 1
            } else {
                t.to_bits() - 1
            });
            assert_eq!(nf4_code(up) as usize, i + 1, "just above threshold {i}");
        }
        let mut r = lcg(1);
        for _ in 0..10_000 {
            let x = r();
            let best = (0..16)
                .min_by(|&a, &b| {
                    (NF4_CODE[a] - x)
                        .abs()
                        .partial_cmp(&(NF4_CODE[b] - x).abs())
                        .unwrap()
                })
                .unwrap();
            assert_eq!(nf4_code(x) as usize, best, "x = {x}");
        }
    }

    #[test]
    fn nf4_round_trip_error_is_bounded_by_half_the_widest_gap() {
        let mut r = lcg(7);
        let shape = [37, 29]; // 1073 elements: odd count, partial last block
        let v: Vec<f32> = (0..1073).map(|_| r() * 0.1).collect();
        for dq in [false, true] {
            let q = Nf4Tensor::quantize(&v, &shape, &Nf4Config::default().with_double_quant(dq));
            assert_eq!(q.codes.len(), 537);
            assert_eq!(q.codes[536] & 15, NF4_ZERO, "pad nibble");
            let d = q.dequantize();
            let absmax = q.absmax();
            let gap = NF4_CODE
                .windows(2)
                .map(|w| w[1] - w[0])
                .fold(0f32, f32::max);
            for (i, (a, b)) in v.iter().zip(&d).enumerate() {
                let am = absmax[i / 64];
                // the double-quantized absmax is off by at most ~1% of the largest absmax
                let tol = am * gap / 2.0 * 1.0001 + if dq { 0.01 * 0.1 } else { 0.0 };
                assert!((a - b).abs() <= tol, "{i}: {a} vs {b} (dq {dq})");
            }
        }
    }

    #[test]
    fn nf4_threaded_quantize_equals_one_pass() {
        // Above the threading threshold, odd length, partial last block.
        let n = (1 << 20) + 4097;
        let mut r = lcg(11);
        let v: Vec<f32> = (0..n).map(|_| r() * 0.05).collect();
        let q = Nf4Tensor::quantize(&v, &[n], &Nf4Config::default().with_double_quant(false));
        let mut codes = vec![0u8; n.div_ceil(2)];
        let mut absmax = vec![0f32; n.div_ceil(64)];
        quantize_blocks(&v, &mut codes, &mut absmax, 64);
        assert_eq!(q.codes, codes);
        assert_eq!(q.scales, Nf4Scales::F32(absmax));
        // The threaded dequantizer agrees with the per-element formula.
        let d = q.dequantize();
        let a = q.absmax();
        for i in (0..n).step_by(997).chain([n - 1]) {
            let c = if i % 2 == 0 {
                codes[i / 2] >> 4
            } else {
                codes[i / 2] & 15
            };
            assert_eq!(d[i].to_bits(), (NF4_CODE[c as usize] * a[i / 64]).to_bits());
        }
    }

    #[test]
    fn nf4_zero_blocks_and_signs() {
        let mut v = vec![0f32; 130];
        v[70] = -3.0;
        v[129] = 1e-39;
        let q = Nf4Tensor::quantize(&v, &[130], &Nf4Config::default().with_double_quant(false));
        let d = q.dequantize();
        assert!(d[..64].iter().all(|&x| x == 0.0));
        assert_eq!(d[70], -3.0);
        assert_eq!(
            q.absmax()[2],
            MIN_ABSMAX,
            "partial block stores the clamped absmax"
        );
    }

    #[test]
    fn nf4_code8_is_nearest() {
        let map = dynamic_map();
        assert!(map.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((map[0], map[127], map[255]), (map[0], 0.0, 1.0));
        let mut r = lcg(3);
        for _ in 0..20_000 {
            let x = r();
            let c = code8(map, x) as usize;
            let best = (0..256)
                .min_by(|&a, &b| (map[a] - x).abs().partial_cmp(&(map[b] - x).abs()).unwrap())
                .unwrap();
            assert_eq!((map[c] - x).abs(), (map[best] - x).abs(), "x = {x}");
        }
    }
}
