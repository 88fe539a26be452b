//! QLoRA: the NF4 quantizer against bitsandbytes (fixtures from `scripts/ref_nf4.py`), packed
//! memory, and the LoRA linear (init, formula, gradients, dropout).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData};
use harness::backend::{Compute, Train};
use harness::model::lora::{phi_target_paths, FrozenLinear, LoraAdapter, LoraConfig, LoraLinear};
use harness::model::nf4::{
    dynamic_map, probe_nf4, DqRounding, Nf4Config, Nf4Scales, Nf4Tensor, NF4_CODE,
};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

fn nf4_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4")
}

/// A fixture tensor: raw little-endian values as u8 / f32.
enum Raw {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

fn load(file: &str) -> BTreeMap<String, (Vec<usize>, Raw)> {
    let buf = std::fs::read(nf4_dir().join(file)).expect("run scripts/ref_nf4.py");
    let st = SafeTensors::deserialize(&buf).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let d = v.data();
            let raw = match v.dtype() {
                Dtype::U8 => Raw::U8(d.to_vec()),
                Dtype::F32 => Raw::F32(
                    d.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                Dtype::F16 => Raw::F32(
                    d.chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (v.shape().to_vec(), raw))
        })
        .collect()
}

fn f32s<'a>(m: &'a BTreeMap<String, (Vec<usize>, Raw)>, k: &str) -> &'a [f32] {
    match &m.get(k).unwrap_or_else(|| panic!("missing {k}")).1 {
        Raw::F32(v) => v,
        Raw::U8(_) => panic!("{k} is u8"),
    }
}

fn u8s<'a>(m: &'a BTreeMap<String, (Vec<usize>, Raw)>, k: &str) -> &'a [u8] {
    match &m.get(k).unwrap_or_else(|| panic!("missing {k}")).1 {
        Raw::U8(v) => v,
        Raw::F32(_) => panic!("{k} is f32"),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const INPUTS: [&str; 4] = ["edge", "odd", "row80", "big"];

#[test]
fn qlora_nf4_tables_match_bitsandbytes() {
    let r = load("bnb.safetensors");
    assert_eq!(bits(&NF4_CODE), bits(f32s(&r, "nf4_code")));
    assert_eq!(bits(dynamic_map()), bits(f32s(&r, "dynamic_map")));
}

#[test]
fn qlora_nf4_matches_bitsandbytes_exactly() {
    let inputs = load("input.safetensors");
    let r = load("bnb.safetensors");
    let cfg = Nf4Config::default().with_double_quant(false);
    for name in INPUTS {
        let (shape, _) = &inputs[name];
        let q = Nf4Tensor::quantize(f32s(&inputs, name), shape, &cfg);
        assert_eq!(q.codes, u8s(&r, &format!("{name}.codes")), "{name}: codes");
        let Nf4Scales::F32(absmax) = &q.scales else {
            panic!("plain scales")
        };
        assert_eq!(
            bits(absmax),
            bits(f32s(&r, &format!("{name}.absmax"))),
            "{name}: absmax"
        );
        let deq = q.dequantize();
        if let Some((s, Raw::F32(want))) = r.get(&format!("{name}.deq")) {
            assert_eq!(s, shape);
            assert_eq!(bits(&deq), bits(want), "{name}: dequantized values");
        }
        if let Some((_, Raw::F32(shaped))) = r.get(&format!("{name}.deq_shaped")) {
            // bitsandbytes' AVX-512 CPU dequantizer given the 2-d shape (see the script).
            let n = bits(&deq)
                .iter()
                .zip(bits(shaped))
                .filter(|(a, b)| *a != b)
                .count();
            println!("{name}: bitsandbytes' shaped CPU dequantize differs at {n} elements");
        }
    }
}

#[test]
fn qlora_nf4_double_quant_vs_bitsandbytes() {
    let inputs = load("input.safetensors");
    let r = load("bnb.safetensors");
    for name in INPUTS {
        let (shape, _) = &inputs[name];
        let values = f32s(&inputs, name);
        let want = f32s(&r, &format!("{name}.dq.deq"));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for rounding in [DqRounding::CpuLut, DqRounding::Nearest] {
            let cfg = Nf4Config {
                dq_rounding: rounding,
                ..Nf4Config::default()
            };
            let q = Nf4Tensor::quantize(values, shape, &cfg);
            let Nf4Scales::Double {
                codes,
                absmax2,
                offset,
                blocksize,
            } = &q.scales
            else {
                panic!("double scales")
            };
            assert_eq!(*blocksize, 256);
            assert_eq!(q.codes, u8s(&r, &format!("{name}.codes")));
            assert_eq!(bits(absmax2), bits(f32s(&r, &format!("{name}.dq.absmax2"))));
            assert_eq!(
                offset.to_bits(),
                f32s(&r, &format!("{name}.dq.offset"))[0].to_bits()
            );
            let want_codes = u8s(&r, &format!("{name}.dq.qabsmax"));
            let code_diff = codes.iter().zip(want_codes).filter(|(a, b)| a != b).count();
            let deq = q.dequantize();
            let max_err = deq
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!(
                "{name} {rounding:?}: {code_diff}/{} absmax codes differ, max |deq - bnb| = \
                 {max_err:.3e} ({:.3e} of max |deq|)",
                codes.len(),
                max_err / scale
            );
            match rounding {
                DqRounding::CpuLut => {
                    assert_eq!(code_diff, 0, "{name}");
                    assert_eq!(bits(&deq), bits(want), "{name}: bitwise with cpu-lut");
                }
                // At most one 8-bit step apart where the CPU table misses the nearest code.
                DqRounding::Nearest => assert!(max_err <= 1e-3 * scale, "{name}: {max_err}"),
            }
        }
    }
}

#[test]
fn qlora_probe_nf4_cli_writes_deq() {
    let dir = tempfile::tempdir().unwrap();
    let input = nf4_dir().join("input.safetensors");
    let r = load("bnb.safetensors");
    for (name, dq) in [("odd", false), ("row80", true)] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_harness"));
        cmd.args(["probe", "nf4", "--in"])
            .arg(&input)
            .args(["--tensor", name, "--out"])
            .arg(&out);
        if dq {
            cmd.args(["--double-quant", "--dq-rounding", "cpu-lut"]);
        }
        let status = cmd.status().unwrap();
        assert!(status.success());
        let got = harness::model::checkpoint::read_all_f32(&out).unwrap();
        let (shape, deq) = &got["deq"];
        assert_eq!(shape, &r[&format!("{name}.deq")].0);
        let key = if dq { "dq.deq" } else { "deq" };
        assert_eq!(bits(deq), bits(f32s(&r, &format!("{name}.{key}"))));
    }
    // The library call the CLI wraps, and its error for a missing tensor.
    let t = probe_nf4(&input, "edge", false, DqRounding::Nearest).unwrap();
    assert_eq!(t[0].0, "deq");
    assert_eq!(t[0].1, vec![16, 64]);
    let err = probe_nf4(&input, "nope", false, DqRounding::Nearest).unwrap_err();
    assert!(err.to_string().contains("edge"), "{err}");
}

#[test]
fn qlora_nf4_packed_memory_per_param() {
    // Phi-2's fc1: [10240, 2560]. One f32 copy of the input, never a second one.
    let (rows, cols) = (10240usize, 2560usize);
    let n = rows * cols;
    let mut s = 0x9E3779B97F4A7C15u64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect();
    for dq in [false, true] {
        let cfg = Nf4Config::default().with_double_quant(dq);
        let t0 = std::time::Instant::now();
        let q = Nf4Tensor::quantize(&values, &[rows, cols], &cfg);
        let quant_s = t0.elapsed().as_secs_f64();
        let t0 = std::time::Instant::now();
        let deq = q.dequantize();
        let deq_s = t0.elapsed().as_secs_f64();
        let per = q.memory_bytes() as f64 / n as f64;
        println!(
            "NF4 [{rows}, {cols}] double_quant={dq}: {} bytes = {per:.4} bytes/param \
             ({:.3} bits), quantize {quant_s:.2}s, dequantize {deq_s:.2}s",
            q.memory_bytes(),
            per * 8.0
        );
        assert_eq!(q.codes.len(), n / 2);
        assert_eq!(q.codes.capacity(), n / 2, "no slack in the packed codes");
        if dq {
            // 0.5 + 1/64 (u8 codes) + 4/(64*256) (block scales) + offset
            assert!(per < 0.516, "{per}");
        } else {
            assert!((per - 0.5625).abs() < 1e-9, "{per}"); // 0.5 + 4/64
        }
        let max_err = values
            .iter()
            .zip(&deq)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 0.02 * 0.2, "{max_err}");
    }
}

// ---------------------------------------------------------------- LoRA

const D_IN: usize = 96;
const D_OUT: usize = 40;
const R: usize = 4;

/// Gives the adapter fixed, non-zero A `[in, r]` and B `[r, out]`; returns their values.
fn set_adapter<B: burn::tensor::backend::Backend>(
    lora: &mut LoraAdapter<B>,
    device: &B::Device,
) -> (Vec<f32>, Vec<f32>) {
    let (a, bm) = (lcg(4, D_IN * R, 0.2), lcg(5, R * D_OUT, 0.3));
    lora.a = Param::from_tensor(Tensor::from_data(
        TensorData::new(a.clone(), [D_IN, R]),
        device,
    ));
    lora.b = Param::from_tensor(Tensor::from_data(
        TensorData::new(bm.clone(), [R, D_OUT]),
        device,
    ));
    (a, bm)
}

fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn cfg(quant: bool, dropout: f64) -> LoraConfig {
    LoraConfig {
        rank: R,
        alpha: 8.0,
        dropout,
        quant: quant.then(Nf4Config::default),
        ..LoraConfig::default()
    }
}

/// A q_proj-like layer from PyTorch-layout weights, and the weight it effectively uses.
fn layer<B: burn::tensor::backend::Backend>(
    quant: bool,
    dropout: f64,
    device: &B::Device,
) -> (LoraLinear<B>, Vec<f32>, Vec<f32>) {
    let w = lcg(1, D_OUT * D_IN, 0.1);
    let b = lcg(2, D_OUT, 0.05);
    let c = cfg(quant, dropout);
    let base = FrozenLinear::from_torch(&w, Some(&b), D_IN, D_OUT, c.quant.as_ref(), device);
    let effective = match base.nf4() {
        Some(q) => q.dequantize(),
        None => w,
    };
    let l = LoraLinear::new(base, "model.layers.0.self_attn.q_proj", &c, device);
    (l, effective, b)
}

fn x_data(batch: usize, t: usize) -> Vec<f32> {
    lcg(3, batch * t * D_IN, 1.0)
}

/// `x W^T + b + s (x A) B` on the host in f64; `a` is `[in, r]`, `bm` `[r, out]`.
fn reference(x: &[f32], w: &[f32], b: &[f32], a: &[f32], bm: &[f32], s: f64) -> Vec<f32> {
    let rows = x.len() / D_IN;
    let mut out = vec![0f32; rows * D_OUT];
    for r in 0..rows {
        let xr = &x[r * D_IN..(r + 1) * D_IN];
        let h: Vec<f64> = (0..R)
            .map(|k| (0..D_IN).map(|i| xr[i] as f64 * a[i * R + k] as f64).sum())
            .collect();
        for o in 0..D_OUT {
            let base: f64 = (0..D_IN)
                .map(|i| xr[i] as f64 * w[o * D_IN + i] as f64)
                .sum::<f64>()
                + b[o] as f64;
            let lora: f64 = (0..R).map(|k| h[k] * bm[k * D_OUT + o] as f64).sum();
            out[r * D_OUT + o] = (base + s * lora) as f32;
        }
    }
    out
}

fn to_vec<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn qlora_lora_equals_base_at_init_and_the_formula_after() {
    let device = Default::default();
    for quant in [false, true] {
        let (mut l, w, b) = layer::<Compute>(quant, 0.0, &device);
        let x =
            Tensor::<Compute, 3>::from_data(TensorData::new(x_data(2, 3), [2, 3, D_IN]), &device);
        let y = to_vec(l.forward(x.clone()));
        assert_eq!(
            bits(&y),
            bits(&to_vec(l.base.forward(x.clone()))),
            "B = 0 at init"
        );
        let zeros = vec![0f32; R * D_OUT];
        let want = reference(&x_data(2, 3), &w, &b, &vec![0.0; D_IN * R], &zeros, 0.0);
        assert!(max_diff(&y, &want) < 1e-5, "base formula (quant {quant})");
        // A keeps peft's kaiming-uniform bound 1/sqrt(in).
        let lora = l.lora.as_mut().unwrap();
        let a0 = to_vec(lora.a.val());
        let bound = 1.0 / (D_IN as f32).sqrt();
        assert!(a0.iter().all(|v| v.abs() <= bound) && a0.iter().any(|v| v.abs() > bound / 2.0));
        assert!(to_vec(lora.b.val()).iter().all(|&v| v == 0.0));
        // Explicit A and B.
        let (a, bm) = set_adapter(lora, &device);
        let y = to_vec(l.forward(x));
        let want = reference(&x_data(2, 3), &w, &b, &a, &bm, 8.0 / R as f64);
        assert!(
            max_diff(&y, &want) < 1e-5,
            "LoRA formula (quant {quant}): {}",
            max_diff(&y, &want)
        );
    }
}

/// (id, size) of the parameters that require a gradient, in visiting order.
fn trainable_params<M: Module<Train>>(m: &M) -> Vec<(ParamId, usize)> {
    struct V(Vec<(ParamId, usize)>);
    impl ModuleVisitor<Train> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Train, D>>) {
            if p.val().is_require_grad() {
                self.0.push((p.id, p.val().shape().num_elements()));
            }
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

#[test]
fn qlora_gradients_and_optimizer_state_only_for_adapters() {
    let device = Default::default();
    for quant in [false, true] {
        let (l, _, _) = layer::<Train>(quant, 0.0, &device);
        // The base frozen as `Phi::freeze_base` does (an f32 base is a parameter).
        let l = LoraLinear {
            base: l.base.no_grad(),
            lora: l.lora,
        };
        let lora = l.lora.as_ref().unwrap();
        let trainable = trainable_params(&l);
        assert_eq!(
            trainable.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![lora.a.id, lora.b.id],
            "only A and B are trainable"
        );
        assert_eq!(
            trainable.iter().map(|p| p.1).sum::<usize>(),
            R * (D_IN + D_OUT)
        );
        let base_before = to_vec(l.base.weight(&device, burn::tensor::DType::F32));

        let x = Tensor::<Train, 3>::from_data(TensorData::new(x_data(2, 3), [2, 3, D_IN]), &device)
            .require_grad();
        let loss = l.forward(x.clone()).powf_scalar(2.0).sum();
        let grads = loss.backward();
        assert!(lora.a.grad(&grads).is_some() && lora.b.grad(&grads).is_some());
        assert!(
            x.grad(&grads).is_some(),
            "gradient flows through to the input"
        );
        // B starts at zero, so only B has a non-zero gradient at step 0 (as in peft).
        assert!(to_vec(lora.b.grad(&grads).unwrap())
            .iter()
            .any(|&g| g != 0.0));
        let gp = GradientsParams::from_grads(grads, &l);
        assert_eq!(gp.len(), 2);

        let mut optim = AdamWConfig::new().init::<Train, LoraLinear<Train>>();
        let b_before = to_vec(lora.b.val());
        let l = optim.step(1e-2, l, gp);
        assert_eq!(
            optim.to_record().len(),
            2,
            "optimizer state for A and B only"
        );
        let lora = l.lora.as_ref().unwrap();
        assert_ne!(bits(&to_vec(lora.b.val())), bits(&b_before), "B moved");
        let base_after = to_vec(l.base.weight(&device, burn::tensor::DType::F32));
        assert_eq!(bits(&base_before), bits(&base_after), "base untouched");
        // The inference copy keeps the (shared) packed base.
        let valid = l.valid();
        assert_eq!(valid.base.nf4().is_some(), quant);
        let xi =
            Tensor::<Compute, 3>::from_data(TensorData::new(x_data(2, 3), [2, 3, D_IN]), &device);
        let (yt, yi) = (
            to_vec(l.forward(x.clone().detach())),
            to_vec(valid.forward(xi)),
        );
        assert!(max_diff(&yt, &yi) < 1e-6);
    }
}

#[test]
fn qlora_packed_base_backward_matches_dequantized_matmul() {
    // The NF4 path has its own backward (re-dequantizing W); it must give burn's gradient.
    let device = Default::default();
    let w = lcg(1, D_OUT * D_IN, 0.1);
    let b = lcg(2, D_OUT, 0.05);
    let nf4 = Nf4Config::default();
    let packed = FrozenLinear::<Train>::from_torch(&w, Some(&b), D_IN, D_OUT, Some(&nf4), &device);
    let deq = packed.nf4().unwrap().dequantize();
    let plain = FrozenLinear::<Train>::from_torch(&deq, Some(&b), D_IN, D_OUT, None, &device);
    let run = |l: &FrozenLinear<Train>| {
        let x = Tensor::<Train, 3>::from_data(TensorData::new(x_data(2, 5), [2, 5, D_IN]), &device)
            .require_grad();
        let y = l.forward(x.clone());
        let grads = (y.clone() * y.clone()).sum().backward();
        (to_vec(y), to_vec(x.grad(&grads).unwrap()))
    };
    let ((y1, g1), (y2, g2)) = (run(&packed), run(&plain));
    assert!(max_diff(&y1, &y2) < 1e-6, "{}", max_diff(&y1, &y2));
    assert!(max_diff(&g1, &g2) < 1e-5, "{}", max_diff(&g1, &g2));
}

#[test]
fn qlora_bf16_compute_with_f32_adapters() {
    // bf16 activations (the GPU compute dtype) through an NF4 base and f32 adapter weights.
    use burn::tensor::DType;
    let device = Default::default();
    for quant in [true, false] {
        let (mut l, w, b) = layer::<Compute>(quant, 0.0, &device);
        let lora = l.lora.as_mut().unwrap();
        let (a, bm) = set_adapter(lora, &device);
        let x =
            Tensor::<Compute, 3>::from_data(TensorData::new(x_data(2, 3), [2, 3, D_IN]), &device)
                .cast(DType::BF16);
        let y = l.forward(x);
        assert_eq!(y.dtype(), DType::BF16);
        let want = reference(&x_data(2, 3), &w, &b, &a, &bm, 8.0 / R as f64);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = max_diff(&to_vec(y), &want);
        assert!(err < 0.02 * scale, "quant {quant}: {err} vs scale {scale}");
    }
}

#[test]
fn qlora_dropout_only_while_training() {
    let device = Default::default();
    let (mut l, w, b) = layer::<Train>(false, 0.5, &device);
    let lora = l.lora.as_mut().unwrap();
    let (a, bm) = set_adapter(lora, &device);
    let xv = x_data(4, 8);
    let want = reference(&xv, &w, &b, &a, &bm, 8.0 / R as f64);
    // Inference (no autodiff): dropout is the identity.
    let valid = l.valid();
    let x = Tensor::<Compute, 3>::from_data(TensorData::new(xv.clone(), [4, 8, D_IN]), &device);
    assert!(max_diff(&to_vec(valid.forward(x)), &want) < 1e-5);
    // Training: the adapter input is dropped, the base is not.
    let x = Tensor::<Train, 3>::from_data(TensorData::new(xv, [4, 8, D_IN]), &device);
    let y = to_vec(l.forward(x.clone()));
    assert!(max_diff(&y, &want) > 1e-3, "dropout active in training");
    let base = to_vec(l.base.forward(x));
    let zeros = vec![0f32; D_IN * R];
    let base_want = reference(&x_data(4, 8), &w, &b, &zeros, &vec![0.0; R * D_OUT], 0.0);
    assert!(max_diff(&base, &base_want) < 1e-5);
}

#[test]
fn qlora_from_burn_linear_and_targets() {
    let device = Default::default();
    // A burn Linear ([in, out]) converted to NF4 quantizes the PyTorch [out, in] order.
    let w = lcg(1, D_OUT * D_IN, 0.1);
    let (_, _, b) = layer::<Compute>(true, 0.0, &device);
    let mut wt = vec![0f32; D_IN * D_OUT];
    for o in 0..D_OUT {
        for i in 0..D_IN {
            wt[i * D_OUT + o] = w[o * D_IN + i];
        }
    }
    let lin = burn::nn::Linear::<Compute> {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(wt, [D_IN, D_OUT]),
            &device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.clone(), [D_OUT]),
            &device,
        ))),
    };
    let c = cfg(true, 0.0);
    let from_lin = LoraLinear::from_linear(lin, "model.layers.1.mlp.fc1", &c);
    let q = from_lin.base.nf4().expect("quantized");
    assert_eq!(q.shape, vec![D_OUT, D_IN]);
    let direct = Nf4Tensor::quantize(&w, &[D_OUT, D_IN], c.quant.as_ref().unwrap());
    assert_eq!(q, &direct);
    assert!(from_lin.base.memory_bytes() < D_IN * D_OUT + 4 * D_OUT);

    let not_target = LoraLinear::from_linear(
        burn::nn::LinearConfig::new(8, 8).init::<Compute>(&device),
        "lm_head",
        &c,
    );
    assert!(not_target.lora.is_none());
    // No adapter: only the base's bias is a parameter (the NF4 weight never is).
    assert_eq!(not_target.num_params(), 8);

    // peft layout round trip: lora_A [r, in], lora_B [out, r].
    let (pa, pb) = (lcg(6, R * D_IN, 0.1), lcg(7, D_OUT * R, 0.1));
    let ad = LoraAdapter::<Compute>::from_peft(&pa, &pb, D_IN, D_OUT, &c, &device);
    assert_eq!(ad.a.dims(), [D_IN, R]);
    assert_eq!(ad.to_peft(), (pa.clone(), pb.clone()));
    assert_eq!(to_vec(ad.a.val())[1], pa[D_IN], "a[0][1] = lora_A[1][0]");
    assert!(LoraConfig::frozen().quant.is_none() && !LoraConfig::frozen().is_target("x.q_proj"));

    let paths = phi_target_paths(2, &c);
    assert_eq!(paths.len(), 12);
    assert_eq!(paths[3], "model.layers.0.self_attn.dense");
    let only_attn = LoraConfig {
        targets: vec!["q_proj".into(), "v_proj".into()],
        ..c
    };
    assert_eq!(phi_target_paths(3, &only_attn).len(), 6);
}
