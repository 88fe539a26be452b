//! Image preprocessing equal to transformers' `CLIPImageProcessor` with the PIL backend
//! (`CLIPImageProcessorPil`; the processor LLaVA was trained with): shortest edge to `size`
//! with PIL's antialiased bicubic, center crop, rescale, normalize.
//!
//! The resize reimplements Pillow's `ImagingResample` for 8-bit images: separable
//! convolution (horizontal pass, then vertical), the filter support widened by the downscale
//! factor (that is the antialiasing), bicubic with a = -0.5, coefficients in 22-bit fixed
//! point and rounding to uint8 after each pass. The output is the same uint8 image PIL makes,
//! so everything after it matches to float32 rounding.

use std::path::Path;

use anyhow::{bail, Context};
use image::RgbImage;
use serde_json::Value;

use super::checkpoint::read_json;

/// OpenAI CLIP normalisation constants (transformers' `OPENAI_CLIP_MEAN` / `_STD`).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// How the image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resize {
    /// `size: {shortest_edge: n}` or the legacy `size: n`: keep the aspect ratio.
    ShortestEdge(usize),
    /// `size: {height, width}`.
    Exact { height: usize, width: usize },
}

/// `preprocessor_config.json`, both the current form (`size: {shortest_edge}`,
/// `crop_size: {height, width}`) and the legacy one the openai repos ship (`size: 224`,
/// `crop_size: 224`), plus LLaVA's pad-to-square option (not an HF key).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub do_resize: bool,
    pub resize: Resize,
    pub do_center_crop: bool,
    /// (height, width)
    pub crop: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// LLaVA's `image_aspect_ratio = "pad"`: paste onto a square of the mean colour first.
    pub pad_to_square: bool,
}

impl Default for PreprocessConfig {
    /// transformers' CLIPImageProcessor defaults (224 px).
    fn default() -> Self {
        Self {
            do_resize: true,
            resize: Resize::ShortestEdge(224),
            do_center_crop: true,
            crop: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            pad_to_square: false,
        }
    }
}

impl PreprocessConfig {
    /// Reads `dir/preprocessor_config.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let json = read_json(&path)?;
        Self::from_hf_json(&json).with_context(|| format!("reading {}", path.display()))
    }

    pub fn from_hf_json(v: &Value) -> anyhow::Result<Self> {
        let mut c = Self::default();
        let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        c.do_resize = flag("do_resize", true);
        c.do_center_crop = flag("do_center_crop", true);
        c.do_rescale = flag("do_rescale", true);
        c.do_normalize = flag("do_normalize", true);
        if let Some(r) = v.get("rescale_factor").and_then(Value::as_f64) {
            c.rescale_factor = r;
        }
        let uint = |x: &Value, k: &str| x.get(k).and_then(Value::as_u64).map(|n| n as usize);
        match v.get("size") {
            None => {}
            Some(Value::Number(n)) => {
                c.resize =
                    Resize::ShortestEdge(n.as_u64().context("`size` must be an integer")? as usize)
            }
            Some(s) => {
                c.resize = if let Some(n) = uint(s, "shortest_edge") {
                    if s.get("longest_edge").is_some() {
                        bail!("`size.longest_edge` is not supported");
                    }
                    Resize::ShortestEdge(n)
                } else if let (Some(height), Some(width)) = (uint(s, "height"), uint(s, "width")) {
                    Resize::Exact { height, width }
                } else {
                    bail!("`size` must be an integer, {{shortest_edge}} or {{height, width}}: {s}")
                }
            }
        }
        match v.get("crop_size") {
            None => {}
            Some(Value::Number(n)) => {
                let n = n.as_u64().context("`crop_size` must be an integer")? as usize;
                c.crop = (n, n);
            }
            Some(s) => {
                c.crop = match (uint(s, "height"), uint(s, "width")) {
                    (Some(h), Some(w)) => (h, w),
                    _ => bail!("`crop_size` must be an integer or {{height, width}}: {s}"),
                }
            }
        }
        let triple = |k: &str| -> anyhow::Result<Option<[f64; 3]>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(Some([n.as_f64().unwrap(); 3])),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let f = |i: usize| {
                        a[i].as_f64()
                            .with_context(|| format!("`{k}` must be numbers"))
                    };
                    Ok(Some([f(0)?, f(1)?, f(2)?]))
                }
                Some(other) => bail!("`{k}` must be a number or 3 numbers, got {other}"),
            }
        };
        if let Some(m) = triple("image_mean")? {
            c.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            c.std = s;
        }
        // 3 = PIL.Image.BICUBIC, the only filter CLIP checkpoints use.
        if let Some(r) = v.get("resample").and_then(Value::as_u64) {
            if r != 3 {
                bail!("`resample` {r} is not supported (only 3 = bicubic)");
            }
        }
        Ok(c)
    }

    /// Final `(height, width)` of the pixel tensor when the config center-crops; without a
    /// crop it depends on the image (see [`preprocess_sized`]).
    pub fn output_size(&self) -> (usize, usize) {
        if self.do_center_crop {
            self.crop
        } else {
            match self.resize {
                Resize::Exact { height, width } => (height, width),
                Resize::ShortestEdge(n) => (n, n),
            }
        }
    }
}

/// Decodes an image file (PNG, JPEG) to RGB, as PIL's `Image.open(p).convert("RGB")` does.
/// Baseline JPEGs go through [`super::jpeg`] (bit-exact with PIL's libjpeg-turbo); other
/// JPEGs (progressive, ...) and other formats through the `image` crate, whose JPEG output
/// can differ from PIL's by a level or two on some pixels.
pub fn load_image(path: &Path) -> anyhow::Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    decode_image(&bytes).with_context(|| format!("decoding image {}", path.display()))
}

/// [`load_image`] on bytes in memory.
pub fn decode_image(bytes: &[u8]) -> anyhow::Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        if let Ok(img) = super::jpeg::decode_rgb(bytes) {
            return Ok(img);
        }
    }
    Ok(image::load_from_memory(bytes)?.to_rgb8())
}

/// The whole pipeline: `[3, H, W]` float32 values (channel-major), as HF's `pixel_values[0]`.
/// `H, W` is [`PreprocessConfig::output_size`] whenever the config center-crops (all CLIP
/// checkpoints do); [`preprocess_sized`] also returns it.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    preprocess_sized(img, cfg).0
}

/// [`preprocess`], also returning the output `(height, width)`.
pub fn preprocess_sized(img: &RgbImage, cfg: &PreprocessConfig) -> (Vec<f32>, (usize, usize)) {
    let mut img = if cfg.pad_to_square {
        pad_to_square(img, &cfg.mean)
    } else {
        img.clone()
    };
    if cfg.do_resize {
        let (w, h) = img.dimensions();
        let (nh, nw) = match cfg.resize {
            Resize::Exact { height, width } => (height, width),
            Resize::ShortestEdge(n) => shortest_edge_size(h as usize, w as usize, n),
        };
        img = resize_bicubic(&img, nw, nh);
    }
    if cfg.do_center_crop {
        img = center_crop(&img, cfg.crop.0, cfg.crop.1);
    }
    let size = (img.height() as usize, img.width() as usize);
    (to_pixel_values(&img, cfg), size)
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `size`, the long side `int(size * long / short)` (truncated). Returns (h, w).
pub fn shortest_edge_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// LLaVA's `expand2square`: the image centred on a square of the mean colour
/// (`int(m * 255)` per channel), offset `(side - w) // 2` or `(side - h) // 2`.
pub fn pad_to_square(img: &RgbImage, mean: &[f64; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let bg = image::Rgb([
        (mean[0] * 255.0) as u8,
        (mean[1] * 255.0) as u8,
        (mean[2] * 255.0) as u8,
    ]);
    let mut out = RgbImage::from_pixel(side, side, bg);
    let (x0, y0) = if w < h {
        ((side - w) / 2, 0)
    } else {
        (0, (side - h) / 2)
    };
    image::imageops::replace(&mut out, img, x0 as i64, y0 as i64);
    out
}

/// HF `center_crop`: offsets `(orig - crop) // 2`; a crop larger than the image pads with
/// zeros (offset `ceil((new - orig) / 2)`) first, as transformers does.
pub fn center_crop(img: &RgbImage, ch: usize, cw: usize) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (ch, cw) = (ch as i64, cw as i64);
    // Python's floor division, also for negative differences.
    let top = (h - ch).div_euclid(2);
    let left = (w - cw).div_euclid(2);
    if top >= 0 && left >= 0 {
        return image::imageops::crop_imm(img, left as u32, top as u32, cw as u32, ch as u32)
            .to_image();
    }
    let (nh, nw) = (ch.max(h), cw.max(w));
    let top_pad = (nh - h + 1) / 2;
    let left_pad = (nw - w + 1) / 2;
    let mut padded = RgbImage::new(nw as u32, nh as u32);
    image::imageops::replace(&mut padded, img, left_pad, top_pad);
    let (t, l) = (top + top_pad, left + left_pad);
    let (t0, l0) = (t.max(0), l.max(0));
    let (t1, l1) = ((t + ch).min(nh), (l + cw).min(nw));
    image::imageops::crop_imm(
        &padded,
        l0 as u32,
        t0 as u32,
        (l1 - l0) as u32,
        (t1 - t0) as u32,
    )
    .to_image()
}

/// Rescale then normalize, in the dtypes transformers uses: `u8 as f64 * factor` rounded to
/// f32, then `(x - mean) / std` in f32.
pub fn to_pixel_values(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let mut v = if cfg.do_rescale {
                (p.0[c] as f64 * cfg.rescale_factor) as f32
            } else {
                p.0[c] as f32
            };
            if cfg.do_normalize {
                v = (v - cfg.mean[c] as f32) / cfg.std[c] as f32;
            }
            out[c * h * w + y as usize * w + x as usize] = v;
        }
    }
    out
}

// ---- Pillow's resampling (libImaging/Resample.c), 8 bits per channel ----

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index, and fixed-point weights for the inputs from there.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero; the clamps follow.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut k: Vec<f64> = (0..xmax)
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            let fixed = k
                .iter()
                .map(|&v| {
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + s) as i32
                    } else {
                        (0.5 + s) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Memory layout of one pass: `lines` independent lines; `line` is the distance between
/// lines and `step` between pixels along a line (in bytes of 3-channel data).
struct Walk {
    lines: usize,
    line: usize,
    step: usize,
}

/// One separable pass: each output pixel along a line is the weighted sum of input pixels.
fn resample_pass(src: &[u8], from: Walk, coeffs: &[(usize, Vec<i32>)], dst: &mut [u8], to: Walk) {
    for line in 0..from.lines {
        for (o, (start, k)) in coeffs.iter().enumerate() {
            // PIL starts from half a unit so the final shift rounds to nearest.
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (j, &w) in k.iter().enumerate() {
                let base = line * from.line + (start + j) * from.step;
                for c in 0..3 {
                    acc[c] += src[base + c] as i32 * w;
                }
            }
            let d = line * to.line + o * to.step;
            for c in 0..3 {
                dst[d + c] = clip8(acc[c]);
            }
        }
    }
}

/// `PIL.Image.resize((width, height), BICUBIC)` on an RGB image.
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut cur = img.as_raw().clone();
    let mut cw = w;
    if width != w {
        // Horizontal pass (PIL restricts it to the rows the vertical pass reads; same result).
        let coeffs = coefficients(w, width);
        let mut out = vec![0u8; h * width * 3];
        let from = Walk {
            lines: h,
            line: w * 3,
            step: 3,
        };
        let to = Walk {
            lines: h,
            line: width * 3,
            step: 3,
        };
        resample_pass(&cur, from, &coeffs, &mut out, to);
        cur = out;
        cw = width;
    }
    if height != h {
        let coeffs = coefficients(h, height);
        let mut out = vec![0u8; height * cw * 3];
        // Lines are columns here: the step along a line is a full row.
        let walk = || Walk {
            lines: cw,
            line: 3,
            step: cw * 3,
        };
        resample_pass(&cur, walk(), &coeffs, &mut out, walk());
        cur = out;
    }
    RgbImage::from_raw(cw as u32, height as u32, cur).expect("buffer size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_like_transformers() {
        assert_eq!(shortest_edge_size(50, 70, 32), (32, 44));
        assert_eq!(shortest_edge_size(67, 41, 32), (52, 32));
        assert_eq!(shortest_edge_size(10, 10, 7), (7, 7));
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        assert_eq!(resize_bicubic(&img, 5, 4), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 9, image::Rgb([200, 17, 90]));
        for (w, h) in [(5, 4), (30, 20), (13, 3)] {
            let r = resize_bicubic(&img, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 17, 90]), "{w}x{h}");
        }
    }

    #[test]
    fn legacy_and_current_config_forms() {
        let legacy: Value = serde_json::json!({"size": 224, "crop_size": 224});
        let current: Value = serde_json::json!({"size": {"shortest_edge": 224},
            "crop_size": {"height": 224, "width": 224}});
        assert_eq!(
            PreprocessConfig::from_hf_json(&legacy).unwrap(),
            PreprocessConfig::from_hf_json(&current).unwrap()
        );
    }
}
