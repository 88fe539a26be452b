//! Seeded draws for synthetic weights: what value element `i` of tensor `name` gets is a
//! function of (seed, name, i) alone, never of the thread count, the shard layout, or which
//! other tensors the checkpoint holds (so a `--shrink-layers` checkpoint's layer 0 equals the
//! full one's).
//!
//! A tensor is cut into blocks of [`BLOCK`] elements; block `b` of tensor `name` has its own
//! SplitMix64 stream ([`crate::rng::Rng`], fixed forever) keyed by the seed, a stable
//! hash of the name and `b`, so blocks can be drawn on any core in any order. Normals come
//! from Marsaglia's polar method in f32 (the checkpoints are f16 or f32: f32 arithmetic is
//! more than the output keeps), two 24-bit uniforms per 64-bit draw.

use crate::rng::Rng;

/// Elements per independently seeded block (4 MiB of f32): big enough that a thread's
/// setup is nothing beside its work, small enough that a few in flight per core keep the
/// writer's memory in megabytes.
pub const BLOCK: usize = 1 << 20;

/// How a tensor's values are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and the checkpoint's standard deviation (matrices, embeddings,
    /// linear biases).
    Normal,
    /// Every element equal (LayerNorm weights 1, LayerNorm biases 0, CLIP's logit scale).
    Constant(f32),
}

/// FNV-1a over the name's bytes: a stable 64-bit stream key (std's `Hash` may change
/// between Rust versions, and these values are part of a checkpoint's identity).
pub fn name_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The stream of block `block` of the tensor keyed `key` under `seed`.
fn block_rng(seed: u64, key: u64, block: u64) -> Rng {
    let tensor_seed = Rng::derive(seed, key).next_u64();
    Rng::derive(tensor_seed, block)
}

/// Fills `out` (at most [`BLOCK`] long) with block `block` of a tensor keyed `key`: standard
/// normals times `std`. A shorter `out` gets the block's first `out.len()` values, so the
/// last, partial block of a tensor is a prefix of what a full block would hold.
pub fn normal_block(seed: u64, key: u64, block: u64, std: f32, out: &mut [f32]) {
    debug_assert!(out.len() <= BLOCK);
    let mut rng = block_rng(seed, key, block);
    const SCALE: f32 = 1.0 / (1u32 << 23) as f32; // 24-bit integer -> [0, 2)
    let mut i = 0;
    while i < out.len() {
        let x = rng.next_u64();
        let u = ((x >> 40) as u32) as f32 * SCALE - 1.0;
        let v = (((x >> 16) & 0xFF_FFFF) as u32) as f32 * SCALE - 1.0;
        let s = u * u + v * v;
        if s >= 1.0 || s == 0.0 {
            continue;
        }
        let f = (-2.0 * s.ln() / s).sqrt() * std;
        out[i] = u * f;
        if i + 1 < out.len() {
            out[i + 1] = v * f;
        }
        i += 2;
    }
}

/// Fills `out` with block `block` of a tensor made by `init`.
pub fn fill_block(init: Init, seed: u64, key: u64, block: u64, std: f32, out: &mut [f32]) {
    match init {
        Init::Normal => normal_block(seed, key, block, std, out),
        Init::Constant(c) => out.fill(c),
    }
}

/// All `numel` values of a tensor, for tests and tools (the writer never materialises a
/// whole tensor).
pub fn values(init: Init, seed: u64, name: &str, numel: usize, std: f32) -> Vec<f32> {
    let key = name_key(name);
    let mut v = vec![0f32; numel];
    for (b, chunk) in v.chunks_mut(BLOCK).enumerate() {
        fill_block(init, seed, key, b as u64, std, chunk);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean, standard deviation, fraction within one sigma, and excess kurtosis.
    fn moments(v: &[f32]) -> (f64, f64, f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let sd = var.sqrt();
        let within = v
            .iter()
            .filter(|&&x| ((x as f64) - mean).abs() < sd)
            .count() as f64
            / n;
        let m4 = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n;
        (mean, sd, within, m4 / (var * var) - 3.0)
    }

    #[test]
    fn normal_draws_have_the_requested_spread_and_a_normal_shape() {
        let n = 2_000_000;
        let v = values(Init::Normal, 7, "model.layers.0.mlp.fc1.weight", n, 0.02);
        let (mean, sd, within, kurt) = moments(&v);
        // Standard errors for n = 2e6 draws of N(0, 0.02): mean 1.4e-5, sd 1e-5,
        // one-sigma fraction 3.3e-4, excess kurtosis 1.7e-3; bounds are ~5 of them.
        assert!(mean.abs() < 7e-5, "mean {mean}");
        assert!((sd - 0.02).abs() < 6e-5, "sd {sd}");
        assert!(
            (within - 0.682_689).abs() < 2e-3,
            "within one sigma {within}"
        );
        assert!(kurt.abs() < 1e-2, "excess kurtosis {kurt}");
    }

    #[test]
    fn values_are_a_function_of_seed_name_and_index_only() {
        let a = values(Init::Normal, 1, "w", BLOCK + 10, 1.0);
        assert_eq!(a, values(Init::Normal, 1, "w", BLOCK + 10, 1.0));
        // A shorter tensor of the same name is a prefix (blocks do not depend on length).
        assert_eq!(
            &a[..BLOCK + 3],
            &values(Init::Normal, 1, "w", BLOCK + 3, 1.0)[..]
        );
        assert_ne!(a[..64], values(Init::Normal, 2, "w", 64, 1.0)[..]);
        assert_ne!(a[..64], values(Init::Normal, 1, "v", 64, 1.0)[..]);
        // The second block is not a copy of the first.
        assert_ne!(a[..10], a[BLOCK..BLOCK + 10]);
    }

    #[test]
    fn std_scales_the_same_draws() {
        let a = values(Init::Normal, 3, "x", 1000, 1.0);
        let b = values(Init::Normal, 3, "x", 1000, 0.5);
        for (x, y) in a.iter().zip(&b) {
            assert!((x * 0.5 - y).abs() <= 3e-7 * x.abs(), "{x} {y}");
        }
    }

    #[test]
    fn constants_fill_every_element() {
        assert!(values(Init::Constant(1.0), 0, "ln", BLOCK + 5, 0.02)
            .iter()
            .all(|&x| x == 1.0));
    }

    #[test]
    fn name_key_is_fnv1a() {
        // FNV-1a 64 test vectors (Fowler/Noll/Vo reference): "" and "a".
        assert_eq!(name_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_key("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
