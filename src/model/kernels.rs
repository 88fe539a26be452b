//! Fused CPU kernels for the LM's element-wise hot spots, on contiguous f32 rows.
//!
//! burn's CPU backend runs softmax and GELU as chains of generic ops (five to eight
//! passes over the tensor, a fresh buffer each) and takes `exp` from libm one element at
//! a time (10% of a small stage-1 step in `perf`). These do each in one or two passes with
//! an `exp` the compiler vectorizes. They serve [`super::lora::QLoraBackend`]'s CPU
//! implementation; every other backend keeps the generic ops. Parity: the kernels against
//! their formulas in f64 (below), `lean_attention` against burn's composed attention and
//! its gradients (`attention.rs`), the LM's GELU op against the composed one (`mod.rs`).
//!
//! Rows are split across rayon's pool (the one burn's CPU backend uses) in chunks.

use rayon::prelude::*;

/// `exp` for f32, branch-free so loops over slices vectorize: Cody-Waite range reduction
/// by ln 2 and Cephes' degree-6 polynomial (within 2 ulp of libm's `expf` on the range
/// tested below). Exactly 0 below -87.3 (where `expf` goes subnormal) and +inf above
/// 88.37 (just short of f32's largest, so the scale `2^n` stays finite).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n * C1` is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer, which then sits in the low
    // mantissa bits: no `floor` call (not an SSE2 instruction) and no float-to-int cast.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.37);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    let out = y * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.37 {
        f32::INFINITY
    } else {
        out
    }
}

/// Defines each kernel twice, as written and compiled for AVX2 + FMA (8 lanes instead of
/// SSE2's 4), and calls the second where the CPU has those features. Without `mul_add`
/// the compiler fuses no multiply-add, so both give the same bits.
macro_rules! kernels {
    ($($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {$(
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if has_avx2() {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    )*};
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

kernels! {
    /// Rows of `p` set to the softmax of `raw * scale + bias`, `st` to each row's
    /// (max, log of the sum of `exp(s - max)`).
    fn stats_rows(
        raw: &[f32],
        bias: Option<&[f32]>,
        scale: f32,
        row_len: usize,
        p: &mut [f32],
        st: &mut [f32],
    ) {
        for (r, (prow, st)) in p.chunks_mut(row_len).zip(st.chunks_mut(2)).enumerate() {
            scores_row(raw, bias, scale, r, prow, |s| s);
            let max = lanes(prow, f32::NEG_INFINITY, f32::max);
            for o in prow.iter_mut() {
                *o = exp(*o - max);
            }
            let sum = lanes(prow, 0.0, |a, b| a + b);
            let inv = 1.0 / sum;
            for o in prow.iter_mut() {
                *o *= inv;
            }
            st[0] = max;
            st[1] = sum.ln();
        }
    }

    /// Rows of `p` set to `exp(raw * scale + bias - max - lse)`.
    fn probs_rows(
        raw: &[f32],
        bias: Option<&[f32]>,
        scale: f32,
        max: &[f32],
        lse: &[f32],
        row_len: usize,
        p: &mut [f32],
    ) {
        for (r, prow) in p.chunks_mut(row_len).enumerate() {
            let (m, l) = (max[r], lse[r]);
            scores_row(raw, bias, scale, r, prow, |s| exp(s - m - l));
        }
    }

    /// Rows of `ds` set to `scale * p (dp - sum(p dp))`.
    fn grad_rows(p: &[f32], dp: &[f32], scale: f32, row_len: usize, ds: &mut [f32]) {
        for (r, out) in ds.chunks_mut(row_len).enumerate() {
            let span = r * row_len..(r + 1) * row_len;
            let (p, dp) = (&p[span.clone()], &dp[span]);
            let dot = dot(p, dp);
            for ((o, &a), &b) in out.iter_mut().zip(p).zip(dp) {
                *o = a * (b - dot) * scale;
            }
        }
    }

    fn gelu_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * gelu_sig(v);
        }
    }

    fn gelu_grad_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let s = gelu_sig(v);
            let du = GELU_A + 3.0 * GELU_B * v * v;
            *o = g * (s + v * s * (1.0 - s) * du);
        }
    }
}

/// Row `r` of `out` (its width) set to `f(s)` for the scores `s = raw * scale + bias` of
/// that row (`bias` the same shape as `raw`, or none).
#[inline(always)]
fn scores_row(
    raw: &[f32],
    bias: Option<&[f32]>,
    scale: f32,
    r: usize,
    out: &mut [f32],
    f: impl Fn(f32) -> f32,
) {
    let span = r * out.len()..(r + 1) * out.len();
    let x = &raw[span.clone()];
    match bias {
        Some(b) => {
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(&b[span]) {
                *o = f(a * scale + b);
            }
        }
        None => {
            for (o, &a) in out.iter_mut().zip(x) {
                *o = f(a * scale);
            }
        }
    }
}

/// A reduction of `x` by `f` in eight interleaved lanes, which the compiler keeps in one
/// vector register (a plain fold is one dependent chain: floats do not reassociate).
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    let mut out = acc.into_iter().reduce(&f).expect("eight lanes");
    for &v in rest {
        out = f(out, v);
    }
    out
}

/// `sum(a * b)` in eight interleaved lanes, as [`lanes`].
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut out: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        out += x * y;
    }
    out
}

/// Rows per rayon task: enough work to amortize the task, small enough to balance.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// Elements of `x` (a whole number of rows of `row_len`) of task `c`.
fn task<T>(x: &[T], c: usize, per: usize, row_len: usize) -> &[T] {
    let start = c * per * row_len;
    &x[start..(start + per * row_len).min(x.len())]
}

/// The scores `s = raw * scale + bias` of each row of `raw` (`bias` the same shape, or
/// none): their softmax `p` (same shape), and per row the max and the log of the sum of
/// `exp(s - max)`, from which [`softmax_probs`] rebuilds `p`.
pub fn softmax_stats(
    raw: &[f32],
    bias: Option<&[f32]>,
    scale: f32,
    row_len: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = raw.len() / row_len;
    let mut p = vec![0f32; raw.len()];
    let mut stats = vec![0f32; 2 * rows];
    let per = rows_per_task(row_len);
    p.par_chunks_mut(per * row_len)
        .zip(stats.par_chunks_mut(2 * per))
        .enumerate()
        .for_each(|(c, (pc, sc))| {
            let raw = task(raw, c, per, row_len);
            let bias = bias.map(|b| task(b, c, per, row_len));
            stats_rows(raw, bias, scale, row_len, pc, sc)
        });
    let (max, lse) = stats.chunks(2).map(|s| (s[0], s[1])).unzip();
    (p, max, lse)
}

/// `p = exp(raw * scale + bias - max - lse)` per row: the probabilities again from the
/// statistics [`softmax_stats`] returned.
pub fn softmax_probs(
    raw: &[f32],
    bias: Option<&[f32]>,
    scale: f32,
    max: &[f32],
    lse: &[f32],
    row_len: usize,
) -> Vec<f32> {
    let mut p = vec![0f32; raw.len()];
    let per = rows_per_task(row_len);
    p.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(c, pc)| {
            let (raw, bias) = (
                task(raw, c, per, row_len),
                bias.map(|b| task(b, c, per, row_len)),
            );
            let (m, l) = (task(max, c, per, 1), task(lse, c, per, 1));
            probs_rows(raw, bias, scale, m, l, row_len, pc)
        });
    p
}

/// The softmax backward per row, times the scores' scale: `scale * p (dp - sum(p dp))`.
pub fn softmax_grad(p: &[f32], dp: &[f32], scale: f32, row_len: usize) -> Vec<f32> {
    let mut ds = vec![0f32; p.len()];
    let per = rows_per_task(row_len);
    ds.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(c, out)| {
            let (p, dp) = (task(p, c, per, row_len), task(dp, c, per, row_len));
            grad_rows(p, dp, scale, row_len, out)
        });
    ds
}

/// `gelu_new(x) = x * sigmoid(A x + B x^3)` ([`super::GELU_TANH`]); its derivative shares
/// the sigmoid.
const GELU_A: f32 = super::GELU_TANH.0 as f32;
const GELU_B: f32 = super::GELU_TANH.1 as f32;

#[inline(always)]
fn gelu_sig(x: f32) -> f32 {
    let u = x * (x * x * GELU_B + GELU_A);
    1.0 / (1.0 + exp(-u))
}

/// Elements per rayon task of the element-wise kernels.
const CHUNK: usize = 16_384;

/// `gelu_new(x)` element-wise.
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out)| gelu_chunk(task(x, c, CHUNK, 1), out));
    y
}

/// `dy * gelu_new'(x)` element-wise: `s + x s (1 - s) (A + 3 B x^2)`.
pub fn gelu_tanh_grad(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out)| gelu_grad_chunk(task(x, c, CHUNK, 1), task(dy, c, CHUNK, 1), out));
    dx
}

/// The CPU build's [`QLoraBackend`] implementation on burn's `Flex` backend.
#[cfg(not(feature = "cuda"))]
mod flex {
    use burn::backend::flex::FlexDevice;
    use burn::backend::Flex;
    use burn::prelude::*;
    use burn::tensor::{DType, Distribution, TensorPrimitive};

    use super::super::attention::{softmax_grad_ops, softmax_probs_ops, softmax_stats_ops};
    use super::super::lora::{gelu_tanh_grad_ops, QLoraBackend};
    use super::*;

    /// The CPU build: softmax and GELU through the kernels above on f32 (other dtypes keep
    /// burn's ops).
    impl QLoraBackend for Flex {
        fn softmax_stats(
            raw: Tensor<Self, 4>,
            bias: Option<Tensor<Self, 4>>,
            scale: f64,
        ) -> [Tensor<Self, 4>; 3] {
            let dims = raw.dims();
            let (Some(r), true) = (f32s(&raw), fits(&bias, dims)) else {
                return softmax_stats_ops(raw, bias, scale);
            };
            let b = bias.as_ref().and_then(f32s);
            let (p, max, lse) = softmax_stats(&r, b.as_deref(), scale as f32, dims[3]);
            let dev = raw.device();
            let stat = |v| tensor([dims[0], dims[1], dims[2], 1], v, &dev);
            [tensor(dims, p, &dev), stat(max), stat(lse)]
        }

        fn softmax_probs(
            raw: Tensor<Self, 4>,
            bias: Option<Tensor<Self, 4>>,
            scale: f64,
            [max, lse]: [Tensor<Self, 4>; 2],
        ) -> Tensor<Self, 4> {
            let dims = raw.dims();
            let (Some(r), Some(m), Some(l), true) =
                (f32s(&raw), f32s(&max), f32s(&lse), fits(&bias, dims))
            else {
                return softmax_probs_ops(raw, bias, scale, [max, lse]);
            };
            let b = bias.as_ref().and_then(f32s);
            let p = softmax_probs(&r, b.as_deref(), scale as f32, &m, &l, dims[3]);
            tensor(dims, p, &raw.device())
        }

        fn softmax_grad(p: Tensor<Self, 4>, dp: Tensor<Self, 4>, scale: f64) -> Tensor<Self, 4> {
            let dims = p.dims();
            match (f32s(&p), f32s(&dp)) {
                (Some(a), Some(b)) if dp.dims() == dims => tensor(
                    dims,
                    softmax_grad(&a, &b, scale as f32, dims[3]),
                    &p.device(),
                ),
                _ => softmax_grad_ops(p, dp, scale),
            }
        }

        /// Four uniform draws of burn's generator seed a SplitMix64 stream per chunk of 4096
        /// values (rows in parallel, the same mask on any thread count).
        fn bernoulli<const D: usize>(
            shape: [usize; D],
            keep: f64,
            device: &FlexDevice,
        ) -> Tensor<Self, D> {
            use rayon::prelude::*;
            let u: Vec<f32> = Tensor::<Flex, 1>::random([4], Distribution::Default, device)
                .into_data()
                .to_vec()
                .expect("f32 draws");
            let seed = u.iter().fold(0u64, |s, &x| {
                (s << 24) ^ (s >> 40) ^ (x * 16_777_216.0) as u64
            });
            let n: usize = shape.iter().product();
            let threshold = (keep.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64;
            let mut mask = vec![0f32; n];
            mask.par_chunks_mut(4096)
                .enumerate()
                .for_each(|(i, chunk)| {
                    let mut r = crate::rng::Rng::derive(seed, i as u64);
                    for v in chunk {
                        *v = f32::from((r.next_u64() >> 11) < threshold);
                    }
                });
            tensor(shape, mask, device)
        }

        fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
            match matmul_f32(&lhs, &rhs) {
                Some(out) => out,
                None => lhs.matmul(rhs),
            }
        }

        fn gelu_tanh(x: Tensor<Self, 1>) -> Tensor<Self, 1> {
            match f32s(&x) {
                Some(v) => tensor(x.dims(), gelu_tanh(&v), &x.device()),
                None => super::super::gelu_tanh(x),
            }
        }

        fn gelu_tanh_grad(x: Tensor<Self, 1>, dy: Tensor<Self, 1>) -> Tensor<Self, 1> {
            match (f32s(&x), f32s(&dy)) {
                (Some(a), Some(b)) => tensor(x.dims(), gelu_tanh_grad(&a, &b), &x.device()),
                _ => gelu_tanh_grad_ops(x, dy),
            }
        }
    }

    /// Whether a bias, if any, has the scores' full shape (the kernels read it row by row).
    fn fits(bias: &Option<Tensor<Flex, 4>>, dims: [usize; 4]) -> bool {
        bias.as_ref()
            .is_none_or(|b| b.dims() == dims && b.dtype() == DType::F32)
    }

    /// A contiguous f32 view of a CPU tensor (copied only when it is a strided view), or
    /// `None` for another dtype.
    fn f32s<const D: usize>(t: &Tensor<Flex, D>) -> Option<F32s> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let TensorPrimitive::Float(p) = t.clone().into_primitive() else {
            return None;
        };
        Some(F32s(p.to_contiguous()))
    }

    /// A contiguous f32 CPU tensor, read as a slice.
    struct F32s(burn_flex::FlexTensor);

    impl std::ops::Deref for F32s {
        type Target = [f32];
        fn deref(&self) -> &[f32] {
            self.0.as_slice::<f32>().expect("contiguous f32")
        }
    }

    fn tensor<const D: usize>(
        dims: [usize; D],
        v: Vec<f32>,
        device: &FlexDevice,
    ) -> Tensor<Flex, D> {
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    // Where burn-flex 0.21 hands a product to gemm's threads, or its batch to rayon's.
    const PARALLEL_OPS: usize = 192 * 192 * 192;
    const BATCH_PARALLEL_OPS: usize = 128 * 128 * 128;

    /// `lhs @ rhs` for f32 tensors with the same batch dims (no broadcasting), by gemm on
    /// their strides (transposed views are not copied), exactly as burn-flex 0.21 calls it
    /// (same results, bit for bit), into a buffer gemm fills. burn-flex's own matmul
    /// zero-fills its output and then copies it once more to realign it
    /// (`Bytes::from_bytes_vec` on a `Vec<u8>`): ~8% of a pretraining step here. `None` for
    /// anything else (burn's matmul then).
    pub(super) fn matmul_f32<const D: usize>(
        lhs: &Tensor<Flex, D>,
        rhs: &Tensor<Flex, D>,
    ) -> Option<Tensor<Flex, D>> {
        let (ld, rd) = (lhs.dims(), rhs.dims());
        if D < 2
            || lhs.dtype() != DType::F32
            || rhs.dtype() != DType::F32
            || ld[..D - 2] != rd[..D - 2]
            || ld[D - 1] != rd[D - 2]
        {
            return None;
        }
        let (m, k, n) = (ld[D - 2], ld[D - 1], rd[D - 1]);
        let batch: usize = ld[..D - 2].iter().product();
        let mut dims = ld;
        dims[D - 1] = n;
        if k == 0 || m == 0 || n == 0 || batch == 0 {
            return Some(Tensor::zeros(dims, &lhs.device()));
        }
        let (TensorPrimitive::Float(a), TensorPrimitive::Float(b)) =
            (lhs.clone().into_primitive(), rhs.clone().into_primitive())
        else {
            return None;
        };
        // Offset of batch matrix `i` (row-major over the batch dims) in a layout.
        let offsets = |t: &burn_flex::FlexTensor| -> Vec<isize> {
            let (shape, strides) = (t.layout().shape(), t.layout().strides());
            (0..batch)
                .map(|mut i| {
                    let mut off = t.layout().start_offset() as isize;
                    for d in (0..D - 2).rev() {
                        off += (i % shape[d]) as isize * strides[d];
                        i /= shape[d];
                    }
                    off
                })
                .collect()
        };
        let (oa, ob) = (offsets(&a), offsets(&b));
        let (sa, sb) = (a.layout().strides(), b.layout().strides());
        let (a_rs, a_cs, b_rs, b_cs) = (sa[D - 2], sa[D - 1], sb[D - 2], sb[D - 1]);
        // As addresses: the closure below runs on rayon's threads.
        let (pa, pb) = (
            a.storage::<f32>().as_ptr() as usize,
            b.storage::<f32>().as_ptr() as usize,
        );
        let size = m * n;
        let mut out: Vec<f32> = Vec::with_capacity(batch * size);
        let run = |i: usize, dst: *mut f32, par: gemm::Parallelism| {
            // SAFETY: the offsets and strides are the layouts' own, within their storage;
            // `dst` has room for one m x n matrix, which gemm writes whole (no read: k > 0).
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst,
                    1,
                    n as isize,
                    false,
                    (pa as *const f32).offset(oa[i]),
                    a_cs,
                    a_rs,
                    (pb as *const f32).offset(ob[i]),
                    b_cs,
                    b_rs,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            }
        };
        let per = m.saturating_mul(n).saturating_mul(k);
        let total = batch.saturating_mul(per);
        let dst = out.as_mut_ptr() as usize;
        if D > 2 && batch > 1 && total >= BATCH_PARALLEL_OPS && (per < PARALLEL_OPS || batch >= 4) {
            use rayon::prelude::*;
            (0..batch).into_par_iter().for_each(|i| {
                run(
                    i,
                    (dst as *mut f32).wrapping_add(i * size),
                    gemm::Parallelism::None,
                )
            });
        } else {
            let par = if per >= PARALLEL_OPS {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            for i in 0..batch {
                run(i, (dst as *mut f32).wrapping_add(i * size), par);
            }
        }
        // SAFETY: every one of the batch x m x n values was written above.
        unsafe { out.set_len(batch * size) };
        Some(tensor(dims, out, &lhs.device()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_saturates() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 0.001_37;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softmax_kernels_match_the_formulas() {
        let row = 37;
        let raw: Vec<f32> = (0..row * 5)
            .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
            .collect();
        // Row 2 fully masked, elsewhere every third key.
        let bias: Vec<f32> = (0..raw.len())
            .map(|i| {
                if i / row == 2 || i % 3 == 0 {
                    -1e30
                } else {
                    0.0
                }
            })
            .collect();
        let scale = 0.3;
        let (p, max, lse) = softmax_stats(&raw, Some(&bias), scale, row);
        for r in 0..5 {
            let s: Vec<f64> = (0..row)
                .map(|j| (raw[r * row + j] * scale + bias[r * row + j]) as f64)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            for j in 0..row {
                let want = (s[j] - m).exp() / z;
                assert!((p[r * row + j] as f64 - want).abs() < 1e-6, "p[{r},{j}]");
            }
        }
        let again = softmax_probs(&raw, Some(&bias), scale, &max, &lse, row);
        for (a, b) in again.iter().zip(&p) {
            assert!((a - b).abs() < 1e-6);
        }
        let dp: Vec<f32> = (0..raw.len())
            .map(|i| ((i * 31) % 11) as f32 - 5.0)
            .collect();
        let ds = softmax_grad(&p, &dp, scale, row);
        for r in 0..5 {
            let span = r * row..(r + 1) * row;
            let dot: f64 = span.clone().map(|i| p[i] as f64 * dp[i] as f64).sum();
            for i in span {
                let want = p[i] as f64 * (dp[i] as f64 - dot) * scale as f64;
                assert!((ds[i] as f64 - want).abs() < 1e-5, "ds[{i}]");
            }
        }
    }

    #[test]
    fn gelu_kernels_match_the_tanh_formula_and_its_derivative() {
        let x: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) / 2_000.0)
            .collect();
        let f = |v: f64| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
        };
        let y = gelu_tanh(&x);
        let dy = vec![1.0f32; x.len()];
        let dx = gelu_tanh_grad(&x, &dy);
        for (i, &v) in x.iter().enumerate() {
            let v64 = v as f64;
            assert!(
                (y[i] as f64 - f(v64)).abs() < 2e-6 * (1.0 + v64.abs()),
                "y({v})"
            );
            let h = 1e-4;
            let num = (f(v64 + h) - f(v64 - h)) / (2.0 * h);
            assert!(
                (dx[i] as f64 - num).abs() < 1e-5,
                "dx({v}): {} vs {num}",
                dx[i]
            );
        }
    }

    /// The CPU matmul is burn-flex's, bit for bit: 2-D, transposed views, batched (on
    /// rayon's threads and on gemm's), and its gradients under autodiff equal burn's.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn the_cpu_matmul_is_burns_bit_for_bit_and_so_are_its_gradients() {
        use crate::backend::{Compute, Train};
        use crate::model::lora::QLoraBackend;
        use burn::prelude::*;
        use burn::tensor::Distribution;

        let dev = Default::default();
        let bits = |t: Tensor<Compute, 4>| -> Vec<u32> {
            let v = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let r = |s: [usize; 4]| Tensor::<Compute, 4>::random(s, Distribution::Default, &dev);
        // Batch 1 small, batch 6 on rayon's threads, batch 2 large on gemm's.
        for (b, m, k, n) in [(1, 5, 7, 3), (6, 64, 48, 80), (2, 200, 192, 200)] {
            let (x, y) = (r([1, b, m, k]), r([1, b, k, n]));
            let want = x.clone().matmul(y.clone());
            assert_eq!(
                bits(Compute::matmul(x.clone(), y.clone())),
                bits(want),
                "{b}x{m}x{k}x{n}"
            );
            // Transposed views of [.., n, k] and [.., k, m].
            let (xt, yt) = (
                r([1, b, k, m]).swap_dims(2, 3),
                r([1, b, n, k]).swap_dims(2, 3),
            );
            let want = xt.clone().matmul(yt.clone());
            assert_eq!(bits(Compute::matmul(xt, yt)), bits(want), "transposed");
        }
        let (x, w) = (r([1, 1, 33, 20]), r([1, 1, 20, 17]));
        let x2 = x.clone().reshape([33, 20]);
        let w2 = w.clone().reshape([20, 17]);
        let ours = Compute::matmul(x2.clone(), w2.clone()).reshape([1, 1, 33, 17]);
        assert_eq!(
            bits(ours),
            bits(x2.matmul(w2).reshape([1, 1, 33, 17])),
            "2-D"
        );

        // Under autodiff: the same values and gradients as burn's op.
        let t = |x: Tensor<Compute, 4>| Tensor::<Train, 4>::from_inner(x).require_grad();
        let (a, b) = (t(r([2, 3, 9, 11])), t(r([2, 3, 11, 4])));
        let weights = Tensor::<Train, 4>::from_inner(r([2, 3, 9, 4]));
        let g1 = (Train::matmul(a.clone(), b.clone()) * weights.clone())
            .sum()
            .backward();
        let g2 = (a.clone().matmul(b.clone()) * weights).sum().backward();
        assert_eq!(
            bits(a.grad(&g1).unwrap()),
            bits(a.grad(&g2).unwrap()),
            "d lhs"
        );
        assert_eq!(
            bits(b.grad(&g1).unwrap()),
            bits(b.grad(&g2).unwrap()),
            "d rhs"
        );
        // A frozen right side: no gradient for it, the left one unchanged.
        let frozen = Tensor::<Train, 4>::from_inner(r([2, 3, 11, 4]));
        let g = Train::matmul(a.clone(), frozen.clone()).sum().backward();
        assert!(frozen.grad(&g).is_none());
        let want = a.clone().matmul(frozen).sum().backward();
        assert_eq!(
            bits(a.grad(&g).unwrap()),
            bits(a.grad(&want).unwrap()),
            "frozen rhs"
        );
    }

    /// Dropout masks: only 0 and 1, 1 at the keep rate, the same after reseeding burn's
    /// generator (what per-layer recomputation relies on), another one after more draws.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn dropout_masks_keep_their_rate_and_follow_the_backends_seed() {
        use crate::backend::{Compute, Train};
        use crate::model::lora::QLoraBackend;
        use burn::prelude::*;

        let dev = Default::default();
        let draw = || -> Vec<f32> {
            Compute::bernoulli([300, 1000], 0.9, &dev)
                .into_data()
                .to_vec()
                .unwrap()
        };
        <Compute as Backend>::seed(&dev, 7);
        let (a, b) = (draw(), draw());
        <Compute as Backend>::seed(&dev, 7);
        assert_eq!(draw(), a, "reseeded: the same mask");
        assert_ne!(a, b, "the next draw: another mask");
        assert!(a.iter().all(|&v| v == 0.0 || v == 1.0));
        // 300,000 draws: the rate's standard error is 0.00055.
        let rate = a.iter().sum::<f32>() / a.len() as f32;
        assert!((rate - 0.9).abs() < 0.003, "keep rate {rate}");
        // Under autodiff: x * mask / keep where kept, 0 elsewhere, gradients likewise.
        let d = burn::nn::DropoutConfig::new(0.25).init();
        <Train as Backend>::seed(&dev, 3);
        let x = Tensor::<Train, 2>::ones([64, 64], &dev).require_grad();
        let y = crate::model::dropout(&d, x.clone());
        let g = y.clone().sum().backward();
        let y: Vec<f32> = y.into_data().to_vec().unwrap();
        let dx: Vec<f32> = x.grad(&g).unwrap().into_data().to_vec().unwrap();
        assert_eq!(y, dx);
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let kept = y.iter().filter(|&&v| v > 0.0).count() as f32 / y.len() as f32;
        assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
    }
}
