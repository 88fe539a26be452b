#!/usr/bin/env python3
"""Writes the NF4 (QLoRA) parity fixtures: small inputs and what bitsandbytes makes of them.

Run from the repository root with a Python that has torch, safetensors and bitsandbytes
(>= 0.46; CPU quantization is built in, no GPU needed):

    python scripts/ref_nf4.py            # writes tests/fixtures/nf4/

Everything is seeded, so rerunning rewrites the same files. The Rust tests
(`tests/it/qlora.rs`, `src/model/nf4.rs`) only read them.

The reference is bitsandbytes itself (`bitsandbytes.functional.quantize_4bit` /
`dequantize_4bit`, quant_type "nf4", blocksize 64), run on the CPU, not a re-implementation.
On the CPU, bitsandbytes quantizes 4-bit with its torch "default" kernel and quantizes the
absmax statistics (double quantization) with its C++ CPU kernel, which since 0.50 snaps values
to a 65536-point grid before looking up the 8-bit code, so it does not always pick the nearest
code (the CUDA kernel does). The Rust side reproduces both (`DqRounding::CpuLut` / `Nearest`).

tests/fixtures/nf4/input.safetensors, the tensors to quantize (row-major, like a checkpoint):
  edge  [16, 64] f32   hand-made blocks: random, all zero, exact midpoint ties at absmax 1
                       and 2 (plus their neighbouring floats), a subnormal absmax, a negative
                       absmax element, a constant block, huge values, several scales
  odd   [5, 37]  f32   185 elements: the last block is partial (57) and the count is odd
  row80 [3, 80]  f32   240 elements, rows do not line up with blocks
  big   [64, 272] f16  17408 elements = 272 blocks, so the double quantization has two
                       second-level blocks (256 + 16); two all-zero blocks inside

tests/fixtures/nf4/bnb.safetensors, for each input N:
  N.codes      u8   packed NF4 codes, two per byte, first element in the high nibble
  N.absmax     f32  one per block of 64
  N.deq        f32  dequantize_4bit, shape of N (not written for `big`: codes + absmax
                    pin it down and the file stays small)
  N.deq_shaped f32  only where it differs from N.deq: dequantize_4bit given the 2-d shape,
                    which on AVX-512 CPUs mis-indexes absmax when a row is not a whole
                    number of 64-blocks (bitsandbytes 0.50 CPU kernel); N.deq is computed
                    on the flat tensor, which bitsandbytes handles correctly
  N.dq.qabsmax u8   compress_statistics=True: absmax - offset, 8-bit dynamic code
  N.dq.absmax2 f32  one per block of 256 absmax values
  N.dq.offset  f32  [1], the mean of the absmax values
  N.dq.deq     f32  dequantize_4bit of the double-quantized state, shape of N
and once:
  nf4_code     f32 [16]   bitsandbytes' NF4 table
  dynamic_map  f32 [256]  bitsandbytes' signed dynamic 8-bit map (double quantization)
"""

import os

import numpy as np
import torch
from safetensors.torch import save_file

import bitsandbytes
import bitsandbytes.functional as F

OUT = os.path.join("tests", "fixtures", "nf4")
BLOCK = 64


def edge_input(g):
    code = F.get_4bit_type("nf4", device="cpu").float()
    mids = (code[:-1] + code[1:]) / 2  # float32 midpoints: the decision thresholds
    up = torch.nextafter(mids, torch.full_like(mids, 2.0))
    down = torch.nextafter(mids, torch.full_like(mids, -2.0))
    blocks = []
    blocks.append(torch.randn(BLOCK, generator=g))  # 0: plain random
    blocks.append(torch.zeros(BLOCK))  # 1: all zero
    # 2: absmax exactly 1, so scaled == value: exact ties and their neighbours
    b = torch.cat([torch.tensor([1.0]), mids, up, down, code, torch.tensor([-1.0, 0.0])])
    blocks.append(b[:BLOCK])
    # 3: absmax 2 from a negative element; scaling by 1/2 is exact, so ties stay ties
    b = torch.cat([torch.tensor([-2.0]), 2 * mids, 2 * up, 2 * down, 2 * code[1:-1]])
    blocks.append(torch.cat([b, torch.zeros(BLOCK - b.numel())])[:BLOCK])
    # 4: a subnormal absmax (bitsandbytes clamps the divisor at 1e-38)
    b = torch.zeros(BLOCK)
    b[3], b[10], b[11] = 3e-39, -1e-39, 2e-40
    blocks.append(b)
    blocks.append(torch.full((BLOCK,), 0.5))  # 5: constant
    blocks.append(torch.randn(BLOCK, generator=g) * 1e30)  # 6: huge
    blocks.append(torch.randn(BLOCK, generator=g) * 1e-6)  # 7: tiny
    # 8: zeros and ties to an absmax of 4 in the middle of the block
    b = torch.zeros(BLOCK)
    b[17] = 4.0
    b[20:35] = 4 * mids
    blocks.append(b)
    for s in [0.02, 0.05, 0.1, 1.0, 3.0, 0.5, 0.01]:  # 9-15: weight-like scales
        blocks.append(torch.randn(BLOCK, generator=g) * s)
    return torch.stack(blocks).float()


def odd_input(g):
    x = torch.randn(185, generator=g) * 0.1
    # The partial last block (elements 128..184) gets an absmax of 0.5 and exact ties.
    code = F.get_4bit_type("nf4", device="cpu").float()
    mids = (code[:-1] + code[1:]) / 2
    x[128] = -0.5
    x[140:155] = 0.5 * mids
    return x.reshape(5, 37)


def big_input(g):
    x = torch.randn(64 * 272, generator=g) * 0.03
    x[64 * 7 : 64 * 8] = 0  # all-zero blocks inside the first second-level block...
    x[64 * 260 : 64 * 261] = 0  # ...and inside the second
    x[64 * 100 : 64 * 101] *= 40  # an outlier block (large absmax)
    return x.reshape(64, 272).half()


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(20260501)
    inputs = {
        "edge": edge_input(g),
        "odd": odd_input(g),
        "row80": (torch.randn(3, 80, generator=g) * 0.05).float(),
        "big": big_input(g),
    }
    ref = {
        "nf4_code": F.get_4bit_type("nf4", device="cpu").float().contiguous(),
        "dynamic_map": F.create_dynamic_map(signed=True).float().contiguous(),
    }
    for name, x in inputs.items():
        # Quantized flat: blocks run over the row-major elements either way (the codes and
        # absmax are identical), and bitsandbytes' AVX-512 CPU dequantizer indexes absmax
        # per row, which is wrong when a row is not a whole number of blocks (row80, big).
        a = x.float().reshape(-1)  # f16 inputs: exact widening, as bitsandbytes does
        q, st = F.quantize_4bit(a, blocksize=BLOCK, quant_type="nf4", compress_statistics=False)
        q2d, st2d = F.quantize_4bit(x.float(), blocksize=BLOCK, quant_type="nf4")
        assert torch.equal(q2d, q) and torch.equal(st2d.absmax, st.absmax)
        deq = F.dequantize_4bit(q, st).reshape(x.shape)
        deq2d = F.dequantize_4bit(q2d, st2d)
        codes = q.reshape(-1)
        nib = torch.stack([codes >> 4, codes & 15], 1).reshape(-1)[: a.numel()].long()
        expect = (st.code[nib] * st.absmax.repeat_interleave(BLOCK)[: a.numel()]).reshape(x.shape)
        bits = lambda t: t.reshape(-1).view(torch.int32)
        bad_flat = int((bits(deq) != bits(expect)).sum())
        bad_2d = int((bits(deq2d) != bits(expect)).sum())
        print(f"{name}: shape {tuple(x.shape)} blocks {st.absmax.numel()}; elements where "
              f"dequantize_4bit != code*absmax: flat {bad_flat}, {x.dim()}-d shape {bad_2d}")
        assert bad_flat == 0
        ref[f"{name}.codes"] = codes.contiguous()
        ref[f"{name}.absmax"] = st.absmax.float().contiguous()
        if name != "big":
            ref[f"{name}.deq"] = deq.float().contiguous()
        if bad_2d and name != "big":
            ref[f"{name}.deq_shaped"] = deq2d.float().contiguous()
        q2, st2 = F.quantize_4bit(a, blocksize=BLOCK, quant_type="nf4", compress_statistics=True)
        assert torch.equal(q2, q)
        assert st2.state2.blocksize == 256
        deq2 = F.dequantize_4bit(q2, st2).reshape(x.shape)
        ref[f"{name}.dq.qabsmax"] = st2.absmax.contiguous()
        ref[f"{name}.dq.absmax2"] = st2.state2.absmax.float().contiguous()
        ref[f"{name}.dq.offset"] = st2.offset.float().reshape(1).contiguous()
        ref[f"{name}.dq.deq"] = deq2.float().contiguous()
        rel = float(((deq2 - deq).abs() / deq.abs().amax()).max())
        print(f"  double quant: max |deq2 - deq| / max|deq| = {rel:.3e}")
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(OUT, "input.safetensors"))
    # One metadata key: safetensors writes a map's keys in random order, and reruns should
    # reproduce the file byte for byte.
    made_by = f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}"
    save_file(ref, os.path.join(OUT, "bnb.safetensors"), metadata={"reference": made_by})
    print(f"wrote {OUT} (bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
