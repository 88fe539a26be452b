//! A baseline JPEG decoder that reproduces libjpeg-turbo's output bit for bit, because PIL
//! (and so every HF/LLaVA preprocessing run) decodes with libjpeg-turbo and the `image`
//! crate's decoder (zune-jpeg, stb-style IDCT) differs by a level or two on some pixels.
//!
//! What libjpeg-turbo does with PIL's defaults, and so what this does: Huffman decoding,
//! the "islow" integer IDCT (jidctint.c: 13-bit constants, 2 extra bits in pass 1, range
//! limiting through a 10-bit wrap table), "fancy" triangular chroma upsampling for 2x1, 1x2
//! and 2x2 subsampling (jdsample.c; edge rows and columns replicated), and the fixed-point
//! YCbCr->RGB tables of jdcolor.c.
//!
//! Supported: baseline/extended sequential and progressive Huffman, 8-bit, 1 or 3
//! components, restart markers. Anything else (arithmetic coding, lossless, CMYK, 12-bit)
//! returns [`Unsupported`] and callers fall back to the `image` crate.

use std::fmt;

/// This file uses a feature the decoder does not implement (the message says which).
#[derive(Debug)]
pub struct Unsupported(pub String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JPEG feature not supported by the exact decoder: {}",
            self.0
        )
    }
}

impl std::error::Error for Unsupported {}

fn unsupported<T>(msg: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(msg.into()))
}

const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

#[derive(Clone, Default)]
struct Huffman {
    /// (code length, code) -> symbol, as canonical tables: per length the first code, the
    /// number of codes and the index of its first symbol.
    maxcode: [i32; 18],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Self {
        let mut h = Huffman {
            values,
            ..Default::default()
        };
        let mut code = 0i32;
        let mut k = 0i32;
        for len in 1..=16 {
            let n = counts[len - 1] as i32;
            if n > 0 {
                h.valptr[len] = k;
                h.mincode[len] = code;
                code += n;
                k += n;
                h.maxcode[len] = code - 1;
            } else {
                h.maxcode[len] = -1;
            }
            code <<= 1;
        }
        h.maxcode[17] = i32::MAX;
        h
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per line and lines of blocks, covering whole MCUs.
    bw: usize,
    bh: usize,
    /// Decoded samples, `bw * 8` by `bh * 8`.
    pixels: Vec<u8>,
    /// Progressive files only: all coefficients (natural order), 64 per block, until the
    /// last scan; then the IDCT runs once.
    coefs: Vec<i32>,
    dc_table: usize,
    ac_table: usize,
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
    /// Ran past the end of the file (truncated): PIL refuses such files, so do we.
    exhausted: bool,
}

impl Bits<'_> {
    fn fill(&mut self) {
        while self.n <= 24 {
            let mut byte = 0u32;
            if self.pos >= self.data.len() {
                self.exhausted = true;
            } else {
                let b = self.data[self.pos];
                if b == 0xFF {
                    let next = self.data.get(self.pos + 1).copied().unwrap_or(0);
                    if next == 0x00 {
                        self.pos += 2;
                        byte = 0xFF;
                    }
                    // else: a marker; feed zeros (libjpeg does the same) without consuming.
                } else {
                    self.pos += 1;
                    byte = b as u32;
                }
            }
            self.acc |= byte << (24 - self.n);
            self.n += 8;
        }
    }

    fn bit(&mut self) -> u32 {
        self.bits(1)
    }

    fn bits(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        self.fill();
        let v = self.acc >> (32 - k);
        self.acc <<= k;
        self.n -= k;
        v
    }

    fn decode(&mut self, h: &Huffman) -> Result<u8, Unsupported> {
        let mut code = self.bit() as i32;
        let mut len = 1;
        while code > h.maxcode[len] {
            code = (code << 1) | self.bit() as i32;
            len += 1;
            if len > 16 {
                return unsupported("corrupt Huffman code");
            }
        }
        let idx = (h.valptr[len] + code - h.mincode[len]) as usize;
        h.values
            .get(idx)
            .copied()
            .ok_or_else(|| Unsupported("corrupt Huffman code".into()))
    }

    /// Skips to the RSTn marker after the current entropy segment and past it.
    fn restart(&mut self) {
        self.acc = 0;
        self.n = 0;
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return;
            }
            self.pos += 1;
        }
    }
}

fn extend(v: u32, t: u32) -> i32 {
    if t == 0 {
        0
    } else if v < (1 << (t - 1)) {
        v as i32 - (1 << t) + 1
    } else {
        v as i32
    }
}

// ---- jidctint.c (islow), 8-bit samples ----

const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;

fn descale(x: i64, n: i32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// libjpeg's post-IDCT range limit: the value wraps at 10 bits, then clamps around 128.
fn range_limit(x: i64) -> u8 {
    let m = (x & 1023) as i32;
    let s = if m >= 512 { m - 1024 } else { m };
    (s + 128).clamp(0, 255) as u8
}

fn idct_islow(coef: &[i32; 64], q: &[i32; 64], out: &mut [u8], stride: usize) {
    const F0298: i64 = 2446;
    const F0390: i64 = 3196;
    const F0541: i64 = 4433;
    const F0765: i64 = 6270;
    const F0899: i64 = 7373;
    const F1175: i64 = 9633;
    const F1501: i64 = 12299;
    const F1847: i64 = 15137;
    const F1961: i64 = 16069;
    const F2053: i64 = 16819;
    const F2562: i64 = 20995;
    const F3072: i64 = 25172;
    let mut ws = [0i64; 64];
    // Pass 1: columns, dequantizing on the way in.
    for c in 0..8 {
        let d = |r: usize| (coef[r * 8 + c] * q[r * 8 + c]) as i64;
        let z2 = d(2);
        let z3 = d(6);
        let z1 = (z2 + z3) * F0541;
        let tmp2 = z1 - z3 * F1847;
        let tmp3 = z1 + z2 * F0765;
        let tmp0 = (d(0) + d(4)) << CONST_BITS;
        let tmp1 = (d(0) - d(4)) << CONST_BITS;
        let (t10, t13, t11, t12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
        let (mut o0, mut o1, mut o2, mut o3) = (d(7), d(5), d(3), d(1));
        let z1 = o0 + o3;
        let z2 = o1 + o2;
        let z3 = o0 + o2;
        let z4 = o1 + o3;
        let z5 = (z3 + z4) * F1175;
        o0 *= F0298;
        o1 *= F2053;
        o2 *= F3072;
        o3 *= F1501;
        let z1 = -z1 * F0899;
        let z2 = -z2 * F2562;
        let z3 = -z3 * F1961 + z5;
        let z4 = -z4 * F0390 + z5;
        o0 += z1 + z3;
        o1 += z2 + z4;
        o2 += z2 + z3;
        o3 += z1 + z4;
        let s = CONST_BITS - PASS1_BITS;
        ws[c] = descale(t10 + o3, s);
        ws[8 + c] = descale(t11 + o2, s);
        ws[16 + c] = descale(t12 + o1, s);
        ws[24 + c] = descale(t13 + o0, s);
        ws[32 + c] = descale(t13 - o0, s);
        ws[40 + c] = descale(t12 - o1, s);
        ws[48 + c] = descale(t11 - o2, s);
        ws[56 + c] = descale(t10 - o3, s);
    }
    // Pass 2: rows.
    for r in 0..8 {
        let w = &ws[r * 8..r * 8 + 8];
        let z2 = w[2];
        let z3 = w[6];
        let z1 = (z2 + z3) * F0541;
        let tmp2 = z1 - z3 * F1847;
        let tmp3 = z1 + z2 * F0765;
        let tmp0 = (w[0] + w[4]) << CONST_BITS;
        let tmp1 = (w[0] - w[4]) << CONST_BITS;
        let (t10, t13, t11, t12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
        let (mut o0, mut o1, mut o2, mut o3) = (w[7], w[5], w[3], w[1]);
        let z1 = o0 + o3;
        let z2 = o1 + o2;
        let z3 = o0 + o2;
        let z4 = o1 + o3;
        let z5 = (z3 + z4) * F1175;
        o0 *= F0298;
        o1 *= F2053;
        o2 *= F3072;
        o3 *= F1501;
        let z1 = -z1 * F0899;
        let z2 = -z2 * F2562;
        let z3 = -z3 * F1961 + z5;
        let z4 = -z4 * F0390 + z5;
        o0 += z1 + z3;
        o1 += z2 + z4;
        o2 += z2 + z3;
        o3 += z1 + z4;
        let s = CONST_BITS + PASS1_BITS + 3;
        let row = &mut out[r * stride..r * stride + 8];
        row[0] = range_limit(descale(t10 + o3, s));
        row[7] = range_limit(descale(t10 - o3, s));
        row[1] = range_limit(descale(t11 + o2, s));
        row[6] = range_limit(descale(t11 - o2, s));
        row[2] = range_limit(descale(t12 + o1, s));
        row[5] = range_limit(descale(t12 - o1, s));
        row[3] = range_limit(descale(t13 + o0, s));
        row[4] = range_limit(descale(t13 - o0, s));
    }
}

// ---- jdsample.c: upsampling a component plane of `w` x `h` (real samples) ----

/// Returns the plane at `(w * fh) x (h * fv)`.
fn upsample(src: &[u8], stride: usize, w: usize, h: usize, fh: usize, fv: usize) -> Vec<u8> {
    let at = |x: usize, y: usize| src[y * stride + x] as i32;
    let (ow, oh) = (w * fh, h * fv);
    let mut out = vec![0u8; ow * oh];
    let fancy = w > 2;
    match (fh, fv) {
        (1, 1) => {
            for y in 0..h {
                out[y * ow..y * ow + w].copy_from_slice(&src[y * stride..y * stride + w]);
            }
        }
        (2, 1) if fancy => {
            for y in 0..h {
                let o = &mut out[y * ow..(y + 1) * ow];
                o[0] = at(0, y) as u8;
                o[1] = ((at(0, y) * 3 + at(1, y) + 2) >> 2) as u8;
                for x in 1..w - 1 {
                    let v = at(x, y) * 3;
                    o[2 * x] = ((v + at(x - 1, y) + 1) >> 2) as u8;
                    o[2 * x + 1] = ((v + at(x + 1, y) + 2) >> 2) as u8;
                }
                let l = w - 1;
                o[2 * l] = ((at(l, y) * 3 + at(l - 1, y) + 1) >> 2) as u8;
                o[2 * l + 1] = at(l, y) as u8;
            }
        }
        // libjpeg-turbo uses the fancy 1x2 filter whatever the width.
        (1, 2) => {
            for y in 0..h {
                for (v, bias) in [(0usize, 1), (1, 2)] {
                    // The nearer row weighs 3, the farther 1; edge rows repeat.
                    let other = if v == 0 {
                        y.saturating_sub(1)
                    } else {
                        (y + 1).min(h - 1)
                    };
                    let row = 2 * y + v;
                    for x in 0..w {
                        out[row * ow + x] = ((at(x, y) * 3 + at(x, other) + bias) >> 2) as u8;
                    }
                }
            }
        }
        (2, 2) if fancy => {
            for y in 0..h {
                for v in 0..2 {
                    let other = if v == 0 {
                        y.saturating_sub(1)
                    } else {
                        (y + 1).min(h - 1)
                    };
                    let col = |x: usize| at(x, y) * 3 + at(x, other);
                    let o = &mut out[(2 * y + v) * ow..(2 * y + v + 1) * ow];
                    let mut this = col(0);
                    let mut next = col(1);
                    let mut last;
                    o[0] = ((this * 4 + 8) >> 4) as u8;
                    o[1] = ((this * 3 + next + 7) >> 4) as u8;
                    for x in 1..w - 1 {
                        last = this;
                        this = next;
                        next = col(x + 1);
                        o[2 * x] = ((this * 3 + last + 8) >> 4) as u8;
                        o[2 * x + 1] = ((this * 3 + next + 7) >> 4) as u8;
                    }
                    last = this;
                    this = next;
                    let l = w - 1;
                    o[2 * l] = ((this * 3 + last + 8) >> 4) as u8;
                    o[2 * l + 1] = ((this * 4 + 7) >> 4) as u8;
                }
            }
        }
        _ => {
            // Plain replication (libjpeg's int_upsample / h2v1_upsample / h2v2_upsample).
            for y in 0..oh {
                for x in 0..ow {
                    out[y * ow + x] = at(x / fh, y / fv) as u8;
                }
            }
        }
    }
    out
}

// ---- jdcolor.c ----

fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const SCALEBITS: i32 = 16;
    const ONE_HALF: i32 = 1 << (SCALEBITS - 1);
    let fix = |x: f64| (x * (1 << SCALEBITS) as f64 + 0.5) as i32;
    let (y, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    let r = y + ((fix(1.40200) * cr + ONE_HALF) >> SCALEBITS);
    let g = y + ((-fix(0.34414) * cb + ONE_HALF + -fix(0.71414) * cr) >> SCALEBITS);
    let b = y + ((fix(1.77200) * cb + ONE_HALF) >> SCALEBITS);
    [
        r.clamp(0, 255) as u8,
        g.clamp(0, 255) as u8,
        b.clamp(0, 255) as u8,
    ]
}

/// Decodes a JPEG to RGB8 exactly as libjpeg-turbo (via PIL) does.
pub fn decode_rgb(data: &[u8]) -> Result<image::RgbImage, Unsupported> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return unsupported("not a JPEG");
    }
    let mut qt = [[0i32; 64]; 4];
    let mut dc_tables: [Option<Huffman>; 4] = Default::default();
    let mut ac_tables: [Option<Huffman>; 4] = Default::default();
    let mut comps: Vec<Component> = Vec::new();
    let (mut width, mut height) = (0usize, 0usize);
    let (mut hmax, mut vmax) = (1usize, 1usize);
    let mut restart_interval = 0usize;
    let mut adobe_transform: Option<u8> = None;
    let mut pos = 2;
    let mut decoded_any = false;
    let mut progressive = false;
    loop {
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        if pos >= data.len() {
            break;
        }
        let marker = data[pos];
        pos += 1;
        if marker == 0xD9 {
            break;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            continue;
        }
        if pos + 2 > data.len() {
            return unsupported("truncated segment");
        }
        let len = u16::from_be_bytes([data[pos], data[pos + 1]]) as usize;
        let seg = data
            .get(pos + 2..pos + len)
            .ok_or_else(|| Unsupported("truncated segment".into()))?;
        pos += len;
        match marker {
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, tq) = (s[0] >> 4, (s[0] & 15) as usize);
                    if tq > 3 {
                        return unsupported("quantization table id");
                    }
                    s = &s[1..];
                    if s.len() < if pq == 0 { 64 } else { 128 } {
                        return unsupported("truncated quantization table");
                    }
                    for i in 0..64 {
                        let v = if pq == 0 {
                            s[i] as i32
                        } else {
                            u16::from_be_bytes([s[2 * i], s[2 * i + 1]]) as i32
                        };
                        qt[tq][ZIGZAG[i]] = v;
                    }
                    s = &s[if pq == 0 { 64 } else { 128 }..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while s.len() >= 17 {
                    let (tc, th) = (s[0] >> 4, (s[0] & 15) as usize);
                    let counts: [u8; 16] = s[1..17].try_into().unwrap();
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    let values = s
                        .get(17..17 + n)
                        .ok_or_else(|| Unsupported("truncated Huffman table".into()))?
                        .to_vec();
                    if th > 3 {
                        return unsupported("Huffman table id");
                    }
                    let h = Huffman::new(&counts, values);
                    if tc == 0 {
                        dc_tables[th] = Some(h);
                    } else {
                        ac_tables[th] = Some(h);
                    }
                    s = &s[17 + n..];
                }
            }
            0xC0..=0xC2 => {
                progressive = marker == 0xC2;
                if seg.len() < 6 || !comps.is_empty() {
                    return unsupported("bad or repeated frame header");
                }
                if seg[0] != 8 {
                    return unsupported(format!("{}-bit samples", seg[0]));
                }
                height = u16::from_be_bytes([seg[1], seg[2]]) as usize;
                width = u16::from_be_bytes([seg[3], seg[4]]) as usize;
                let n = seg[5] as usize;
                if n != 1 && n != 3 {
                    return unsupported(format!("{n} components"));
                }
                if seg.len() < 6 + 3 * n {
                    return unsupported("truncated frame header");
                }
                if width == 0 || height == 0 {
                    return unsupported("zero or deferred image size");
                }
                for i in 0..n {
                    let c = &seg[6 + 3 * i..9 + 3 * i];
                    comps.push(Component {
                        id: c[0],
                        h: (c[1] >> 4) as usize,
                        v: (c[1] & 15) as usize,
                        tq: (c[2] & 3) as usize,
                        bw: 0,
                        bh: 0,
                        pixels: Vec::new(),
                        coefs: Vec::new(),
                        dc_table: 0,
                        ac_table: 0,
                    });
                }
                hmax = comps.iter().map(|c| c.h).max().unwrap();
                vmax = comps.iter().map(|c| c.v).max().unwrap();
                if comps
                    .iter()
                    .any(|c| c.h == 0 || c.v == 0 || hmax % c.h != 0 || vmax % c.v != 0)
                {
                    return unsupported("sampling factors");
                }
                let mcux = width.div_ceil(8 * hmax);
                let mcuy = height.div_ceil(8 * vmax);
                // Every block costs at least a bit or two of entropy data: a header claiming
                // more blocks than the file could hold is corrupt (and must not allocate).
                let blocks: usize = comps.iter().map(|c| mcux * c.h * mcuy * c.v).sum();
                if blocks > 8 * data.len() + 4096 {
                    return unsupported("frame larger than the file can hold");
                }
                for c in &mut comps {
                    c.bw = mcux * c.h;
                    c.bh = mcuy * c.v;
                    c.pixels = vec![0; c.bw * 8 * c.bh * 8];
                    if progressive {
                        c.coefs = vec![0; c.bw * c.bh * 64];
                    }
                }
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return unsupported(format!(
                    "SOF marker {marker:#04x} (lossless/hierarchical/arithmetic)"
                ));
            }
            0xDD if seg.len() >= 2 => {
                restart_interval = u16::from_be_bytes([seg[0], seg[1]]) as usize
            }
            0xEE if seg.len() >= 12 && &seg[..5] == b"Adobe" => adobe_transform = Some(seg[11]),
            0xDA => {
                if comps.is_empty() {
                    return unsupported("scan before frame header");
                }
                let ns = seg.first().copied().unwrap_or(0) as usize;
                if ns == 0 || seg.len() < 1 + 2 * ns + 3 {
                    return unsupported("bad scan header");
                }
                let mut scan = Vec::with_capacity(ns);
                for i in 0..ns {
                    let (cid, t) = (seg[1 + 2 * i], seg[2 + 2 * i]);
                    let ci = comps
                        .iter()
                        .position(|c| c.id == cid)
                        .ok_or_else(|| Unsupported("scan names an unknown component".into()))?;
                    comps[ci].dc_table = (t >> 4) as usize & 3;
                    comps[ci].ac_table = (t & 15) as usize & 3;
                    scan.push(ci);
                }
                let end = if progressive {
                    let sel = &seg[1 + 2 * ns..];
                    let spectral = (
                        sel[0] as usize,
                        sel[1] as usize,
                        (sel[2] >> 4) as u32,
                        (sel[2] & 15) as u32,
                    );
                    decode_progressive_scan(
                        &data[pos..],
                        &mut comps,
                        &scan,
                        &dc_tables,
                        &ac_tables,
                        restart_interval,
                        (width, height, hmax, vmax),
                        spectral,
                    )?
                } else {
                    decode_scan(
                        &data[pos..],
                        &mut comps,
                        &scan,
                        &qt,
                        &dc_tables,
                        &ac_tables,
                        restart_interval,
                        (width, height, hmax, vmax),
                    )?
                };
                pos += end;
                decoded_any = true;
            }
            _ => {}
        }
    }
    if !decoded_any {
        return unsupported("no scan");
    }
    if comps.len() == 3 && adobe_transform == Some(0) {
        return unsupported("RGB (untransformed) JPEG");
    }
    if progressive {
        // Quantization tables as they stand at the end of the file (libjpeg latches them at
        // each component's first scan; files do not redefine them in between in practice).
        for c in &mut comps {
            let stride = c.bw * 8;
            let q = qt[c.tq];
            for by in 0..c.bh {
                for bx in 0..c.bw {
                    let i = (by * c.bw + bx) * 64;
                    let coef: &[i32; 64] = c.coefs[i..i + 64].try_into().unwrap();
                    idct_islow(coef, &q, &mut c.pixels[by * 8 * stride + bx * 8..], stride);
                }
            }
        }
    }
    // Upsample each component to full resolution over its real (not padded) extent.
    let planes: Vec<Vec<u8>> = comps
        .iter()
        .map(|c| {
            let dw = (width * c.h).div_ceil(hmax);
            let dh = (height * c.v).div_ceil(vmax);
            let (fh, fv) = (hmax / c.h, vmax / c.v);
            let up = upsample(&c.pixels, c.bw * 8, dw, dh, fh, fv);
            let uw = dw * fh;
            let mut plane = vec![0u8; width * height];
            for y in 0..height {
                plane[y * width..(y + 1) * width].copy_from_slice(&up[y * uw..y * uw + width]);
            }
            plane
        })
        .collect();
    let mut img = image::RgbImage::new(width as u32, height as u32);
    for (i, p) in img.pixels_mut().enumerate() {
        p.0 = if planes.len() == 1 {
            [planes[0][i]; 3]
        } else {
            ycc_to_rgb(planes[0][i], planes[1][i], planes[2][i])
        };
    }
    Ok(img)
}

/// Decodes one scan's entropy-coded data; returns how many bytes it consumed.
#[allow(clippy::too_many_arguments)]
fn decode_scan(
    data: &[u8],
    comps: &mut [Component],
    scan: &[usize],
    qt: &[[i32; 64]; 4],
    dc: &[Option<Huffman>; 4],
    ac: &[Option<Huffman>; 4],
    restart_interval: usize,
    (width, height, hmax, vmax): (usize, usize, usize, usize),
) -> Result<usize, Unsupported> {
    let mut bits = Bits {
        data,
        pos: 0,
        acc: 0,
        n: 0,
        exhausted: false,
    };
    let mut pred = vec![0i32; comps.len()];
    // One component alone is coded block by block over its own extent, not by MCU.
    let (mcux, mcuy) = if scan.len() == 1 {
        let c = &comps[scan[0]];
        (
            (width * c.h).div_ceil(hmax).div_ceil(8),
            (height * c.v).div_ceil(vmax).div_ceil(8),
        )
    } else {
        (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax))
    };
    let mut coef = [0i32; 64];
    let mut mcu = 0usize;
    for my in 0..mcuy {
        for mx in 0..mcux {
            if restart_interval > 0 && mcu > 0 && mcu.is_multiple_of(restart_interval) {
                bits.restart();
                pred.iter_mut().for_each(|p| *p = 0);
            }
            mcu += 1;
            for &ci in scan {
                let (bh, bv) = if scan.len() == 1 {
                    (1, 1)
                } else {
                    (comps[ci].h, comps[ci].v)
                };
                for by in 0..bv {
                    for bx in 0..bh {
                        let c = &comps[ci];
                        let dct = dc[c.dc_table]
                            .as_ref()
                            .ok_or_else(|| Unsupported("missing DC table".into()))?;
                        let act = ac[c.ac_table]
                            .as_ref()
                            .ok_or_else(|| Unsupported("missing AC table".into()))?;
                        coef.fill(0);
                        let t = bits.decode(dct)? as u32;
                        if t > 16 {
                            return unsupported("corrupt DC code");
                        }
                        let diff = extend(bits.bits(t), t);
                        pred[ci] += diff;
                        coef[0] = pred[ci];
                        let mut k = 1;
                        while k < 64 {
                            let rs = bits.decode(act)?;
                            let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                            if s == 0 {
                                if r == 15 {
                                    k += 16;
                                    continue;
                                }
                                break;
                            }
                            k += r;
                            if k > 63 {
                                break;
                            }
                            coef[ZIGZAG[k]] = extend(bits.bits(s), s);
                            k += 1;
                        }
                        let (x, y) = if scan.len() == 1 {
                            (mx, my)
                        } else {
                            (mx * c.h + bx, my * c.v + by)
                        };
                        if x < c.bw && y < c.bh {
                            let stride = c.bw * 8;
                            let q = qt[c.tq];
                            let c = &mut comps[ci];
                            idct_islow(&coef, &q, &mut c.pixels[y * 8 * stride + x * 8..], stride);
                        }
                    }
                }
            }
        }
    }
    if bits.exhausted {
        return unsupported("truncated entropy-coded data");
    }
    Ok(bits.pos)
}

/// One scan of a progressive file (jdphuff.c): DC first/refine, AC first/refine with EOB
/// runs. Coefficients accumulate in each component's `coefs`.
#[allow(clippy::too_many_arguments)]
fn decode_progressive_scan(
    data: &[u8],
    comps: &mut [Component],
    scan: &[usize],
    dc: &[Option<Huffman>; 4],
    ac: &[Option<Huffman>; 4],
    restart_interval: usize,
    (width, height, hmax, vmax): (usize, usize, usize, usize),
    (ss, se, ah, al): (usize, usize, u32, u32),
) -> Result<usize, Unsupported> {
    if se > 63 || ss > se || (ss == 0 && se != 0) || (ss > 0 && scan.len() != 1) {
        return unsupported("invalid progressive scan parameters");
    }
    let mut bits = Bits {
        data,
        pos: 0,
        acc: 0,
        n: 0,
        exhausted: false,
    };
    let mut pred = vec![0i32; comps.len()];
    let mut eobrun = 0u32;
    let (mcux, mcuy) = if scan.len() == 1 {
        let c = &comps[scan[0]];
        (
            (width * c.h).div_ceil(hmax).div_ceil(8),
            (height * c.v).div_ceil(vmax).div_ceil(8),
        )
    } else {
        (width.div_ceil(8 * hmax), height.div_ceil(8 * vmax))
    };
    let mut mcu = 0usize;
    for my in 0..mcuy {
        for mx in 0..mcux {
            if restart_interval > 0 && mcu > 0 && mcu.is_multiple_of(restart_interval) {
                bits.restart();
                pred.iter_mut().for_each(|p| *p = 0);
                eobrun = 0;
            }
            mcu += 1;
            for &ci in scan {
                let (bh, bv) = if scan.len() == 1 {
                    (1, 1)
                } else {
                    (comps[ci].h, comps[ci].v)
                };
                for by in 0..bv {
                    for bx in 0..bh {
                        let c = &mut comps[ci];
                        let (x, y) = if scan.len() == 1 {
                            (mx, my)
                        } else {
                            (mx * c.h + bx, my * c.v + by)
                        };
                        let i = (y * c.bw + x) * 64;
                        let blk = &mut c.coefs[i..i + 64];
                        if ss == 0 {
                            if ah == 0 {
                                let h = dc[c.dc_table]
                                    .as_ref()
                                    .ok_or_else(|| Unsupported("missing DC table".into()))?;
                                let t = bits.decode(h)? as u32;
                                if t > 16 {
                                    return unsupported("corrupt DC code");
                                }
                                pred[ci] += extend(bits.bits(t), t);
                                blk[0] = pred[ci] << al;
                            } else if bits.bit() == 1 {
                                blk[0] |= 1 << al;
                            }
                            continue;
                        }
                        let h = ac[c.ac_table]
                            .as_ref()
                            .ok_or_else(|| Unsupported("missing AC table".into()))?;
                        if ah == 0 {
                            ac_first(&mut bits, h, blk, ss, se, al, &mut eobrun)?;
                        } else {
                            ac_refine(&mut bits, h, blk, ss, se, al, &mut eobrun)?;
                        }
                    }
                }
            }
        }
    }
    if bits.exhausted {
        return unsupported("truncated entropy-coded data");
    }
    Ok(bits.pos)
}

fn ac_first(
    bits: &mut Bits<'_>,
    h: &Huffman,
    blk: &mut [i32],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), Unsupported> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = ss;
    while k <= se {
        let rs = bits.decode(h)?;
        let (r, s) = ((rs >> 4) as u32, (rs & 15) as u32);
        if s != 0 {
            k += r as usize;
            if k > 63 {
                return unsupported("corrupt AC run");
            }
            blk[ZIGZAG[k]] = extend(bits.bits(s), s) << al;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = (1 << r) + bits.bits(r) - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

fn ac_refine(
    bits: &mut Bits<'_>,
    h: &Huffman,
    blk: &mut [i32],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), Unsupported> {
    let p1 = 1i32 << al;
    let m1 = -1i32 << al;
    // A correction bit for a coefficient already nonzero: move it away from zero.
    let correct = |bits: &mut Bits<'_>, v: &mut i32| {
        if bits.bit() == 1 && (*v & p1) == 0 {
            *v += if *v >= 0 { p1 } else { m1 };
        }
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = bits.decode(h)?;
            let (mut r, s) = ((rs >> 4) as i32, (rs & 15) as u32);
            let mut value = 0;
            if s != 0 {
                if s != 1 {
                    return unsupported("corrupt refinement");
                }
                value = if bits.bit() == 1 { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r > 0 {
                    *eobrun += bits.bits(r as u32);
                }
                break;
            }
            // Skip r zero-history coefficients, refining the nonzero ones on the way.
            while k <= se {
                let z = ZIGZAG[k];
                if blk[z] != 0 {
                    correct(bits, &mut blk[z]);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                if k > 63 {
                    return unsupported("corrupt refinement run");
                }
                blk[ZIGZAG[k]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let z = ZIGZAG[k];
            if blk[z] != 0 {
                correct(bits, &mut blk[z]);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}
