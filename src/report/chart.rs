//! Line charts and interval charts (points with interval bars) drawn with plotters, to an
//! SVG string (inlined in the HTML) or a PNG (for slides). Text goes through plotters' ab_glyph path with a font compiled into the binary,
//! so charts render the same on a machine with no fonts and never ask fontconfig.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera licence, see assets/fonts/DejaVuSans-LICENSE.txt).
pub static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The only family the charts ask for; registered from [`FONT`].
const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters (once per process).
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            // The bytes are compiled in; failing here is a build defect, not user input.
            panic!("embedded chart font is not a valid TrueType font");
        }
    });
}

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Every (downsampled) point, thin and faint, under its smoothed version.
    Raw,
    /// A smoothed curve, or a curve with no smoothing: solid.
    Solid,
    /// Few points (validation, evaluation): solid with markers.
    Markers,
    /// A filled translucent area: `points` run along its upper edge left to right, then
    /// along its lower edge back (a group's min/max band around its mean line).
    Band,
}

#[derive(Debug, Clone)]
pub struct Line {
    /// Legend entry; `None` keeps the line out of the legend.
    pub label: Option<String>,
    pub color: (u8, u8, u8),
    pub kind: LineKind,
    pub points: Vec<(f64, f64)>,
}

/// One chart: title, axis descriptions (with units) and lines.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem for the PNG (`stage1-loss`); unique within a report.
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic y axis; ignored (linear) when some value is not positive.
    pub log_y: bool,
    /// Non-empty: a grouped bar chart with these categories on x; each line is one series
    /// whose points are `(category index, value)`.
    pub bars: Vec<String>,
    pub lines: Vec<Line>,
}

/// Fixed colours: the n-th run of a comparison always gets the n-th colour.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
    (140, 86, 75),
    (227, 119, 194),
];

pub fn color(i: usize) -> (u8, u8, u8) {
    PALETTE[i % PALETTE.len()]
}

/// Size of charts inlined in HTML; PNGs are drawn at twice the size for slides.
pub const SVG_SIZE: (u32, u32) = (760, 380);
pub const PNG_SCALE: u32 = 2;

impl Chart {
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.points.is_empty())
    }

    /// The chart as an SVG document (text as `<text>`, escaped by plotters).
    pub fn to_svg(&self) -> Result<String> {
        ensure_font();
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, SVG_SIZE).into_drawing_area();
            self.draw(root, 1.0)?;
        }
        Ok(s)
    }

    /// The chart as RGB pixels at `PNG_SCALE` times the SVG size.
    pub fn to_rgb(&self) -> Result<(u32, u32, Vec<u8>)> {
        ensure_font();
        let (w, h) = (SVG_SIZE.0 * PNG_SCALE, SVG_SIZE.1 * PNG_SCALE);
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            self.draw(root, PNG_SCALE as f64)?;
        }
        Ok((w, h, buf))
    }

    /// Writes the chart as a PNG (encoded by `image`, so plotters needs no encoder).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let (w, h, buf) = self.to_rgb()?;
        png(path, w, h, &buf)
    }

    fn bounds(&self) -> (f64, f64, f64, f64, bool) {
        let pts = self.lines.iter().flat_map(|l| l.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 1.0, x1 + 1.0);
        }
        let log = self.log_y && y0 > 0.0;
        if log {
            // A little headroom in log space; a flat curve still gets a visible range.
            let (l0, l1) = (y0.log10(), y1.log10());
            let pad = ((l1 - l0) * 0.05).max(0.05);
            (y0, y1) = (10f64.powf(l0 - pad), 10f64.powf(l1 + pad));
        } else {
            let span = y1 - y0;
            // A flat curve (a constant lr) gets a range around its value, not around 0.
            let pad = if span > 1e-12 * y0.abs().max(1e-300) {
                span * 0.05
            } else if y0 != 0.0 {
                y0.abs() * 0.1
            } else {
                1.0
            };
            (y0, y1) = (y0 - pad, y1 + pad);
        }
        (x0, x1, y0, y1, log)
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, scale: f64) -> Result<()> {
        let px = |v: f64| (v * scale).round() as u32;
        let font = |size: f64| (FAMILY, size * scale).into_font();
        root.fill(&WHITE).map_err(err)?;
        if !self.bars.is_empty() {
            return self.draw_bars(root, scale);
        }
        let (x0, x1, y0, y1, log) = self.bounds();
        // One body for both y axes: plotters' linear and log coordinates are distinct types.
        macro_rules! body {
            ($y:expr) => {{
                let mut chart = ChartBuilder::on(&root)
                    .caption(&self.title, font(20.0))
                    .margin(px(10.0))
                    .margin_right(px(28.0))
                    .x_label_area_size(px(45.0))
                    .y_label_area_size(px(80.0))
                    .build_cartesian_2d(x0..x1, $y)
                    .map_err(err)?;
                chart
                    .configure_mesh()
                    .x_desc(self.x_label.as_str())
                    .y_desc(self.y_label.as_str())
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v))
                    .label_style(font(14.0))
                    .axis_desc_style(font(15.0))
                    .light_line_style(RGBColor(238, 238, 238))
                    .bold_line_style(RGBColor(215, 215, 215))
                    .draw()
                    .map_err(err)?;
                for line in &self.lines {
                    let c = RGBColor(line.color.0, line.color.1, line.color.2);
                    if line.kind == LineKind::Band {
                        chart
                            .draw_series(std::iter::once(Polygon::new(
                                line.points.clone(),
                                c.mix(0.18).filled(),
                            )))
                            .map_err(err)?;
                        continue;
                    }
                    let style = match line.kind {
                        LineKind::Raw => c.mix(0.25).stroke_width(px(1.0)),
                        _ => c.stroke_width(px(2.0)),
                    };
                    let pts = line.points.iter().copied();
                    let series = if line.kind == LineKind::Markers {
                        LineSeries::new(pts, style).point_size(px(3.0))
                    } else {
                        LineSeries::new(pts, style)
                    };
                    let anno = chart.draw_series(series).map_err(err)?;
                    if let Some(label) = &line.label {
                        let w = px(18.0) as i32;
                        anno.label(label.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + w, y)], style)
                        });
                    }
                }
                if self.lines.iter().any(|l| l.label.is_some()) {
                    draw_legend(&mut chart, scale)?;
                }
            }};
        }
        if log {
            body!((y0..y1).log_scale());
        } else {
            body!(y0..y1);
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

impl Chart {
    /// Grouped bars: categories at integer x, the series side by side within each.
    fn draw_bars<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        scale: f64,
    ) -> Result<()> {
        let px = |v: f64| (v * scale).round() as u32;
        let font = |size: f64| (FAMILY, size * scale).into_font();
        root.fill(&WHITE).map_err(err)?;
        let n = self.bars.len();
        let vals = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
        let (lo, hi) = vals.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        // Headroom above the bars for the legend.
        let hi = if hi - lo < 1e-12 {
            lo + 1.0
        } else {
            hi + (hi - lo) * 0.3
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, font(20.0))
            .margin(px(10.0))
            .margin_right(px(28.0))
            .x_label_area_size(px(45.0))
            .y_label_area_size(px(80.0))
            .build_cartesian_2d(-0.5..n as f64 - 0.5, lo..hi)
            .map_err(err)?;
        let cats = &self.bars;
        // Ticks land on the integers (one per category) when allowed n labels.
        let cat = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                cats[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&cat)
            .y_label_formatter(&|v| tick(*v))
            .label_style(font(14.0))
            .axis_desc_style(font(15.0))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(err)?;
        let m = self.lines.len().max(1) as f64;
        let width = 0.8 / m;
        for (j, line) in self.lines.iter().enumerate() {
            let c = RGBColor(line.color.0, line.color.1, line.color.2);
            let left = -0.4 + j as f64 * width;
            let anno = chart
                .draw_series(line.points.iter().map(|&(i, v)| {
                    Rectangle::new([(i + left, 0.0), (i + left + width * 0.9, v)], c.filled())
                }))
                .map_err(err)?;
            if let Some(label) = &line.label {
                let w = px(12.0) as i32;
                anno.label(label.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - w / 2), (x + w, y + w / 2)], c.filled())
                });
            }
        }
        if self.lines.iter().any(|l| l.label.is_some()) {
            draw_legend(&mut chart, scale)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

/// Anything a report page inlines as SVG and writes beside it as a PNG.
pub trait Figure: Sync {
    /// File stem of the PNG, unique within a page.
    fn id(&self) -> &str;
    fn to_svg(&self) -> Result<String>;
    fn write_png(&self, path: &Path) -> Result<()>;
}

impl Figure for Chart {
    fn id(&self) -> &str {
        &self.id
    }
    fn to_svg(&self) -> Result<String> {
        Chart::to_svg(self)
    }
    fn write_png(&self, path: &Path) -> Result<()> {
        Chart::write_png(self, path)
    }
}

/// One row of an [`IntervalChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalRow {
    pub label: String,
    pub value: f64,
    /// The interval, when there is one (a run without per-item data has none).
    pub interval: Option<(f64, f64)>,
    pub color: (u8, u8, u8),
}

/// Points with interval bars, one row per run or group, top to bottom (a forest plot):
/// the labels stay readable however many rows there are.
#[derive(Debug, Clone)]
pub struct IntervalChart {
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub rows: Vec<IntervalRow>,
}

impl IntervalChart {
    /// Width as the line charts; height grows with the rows.
    pub fn size(&self) -> (u32, u32) {
        (SVG_SIZE.0, 110 + 30 * self.rows.len().max(1) as u32)
    }

    fn bounds(&self) -> (f64, f64) {
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for r in &self.rows {
            let (a, b) = r.interval.unwrap_or((r.value, r.value));
            for v in [r.value, a, b] {
                if v.is_finite() {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
        if lo > hi {
            return (0.0, 1.0);
        }
        let pad = if hi - lo > 1e-12 {
            (hi - lo) * 0.08
        } else {
            lo.abs().max(1.0) * 0.05
        };
        (lo - pad, hi + pad)
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, scale: f64) -> Result<()> {
        let px = |v: f64| (v * scale).round() as u32;
        let font = |size: f64| (FAMILY, size * scale).into_font();
        root.fill(&WHITE).map_err(err)?;
        let n = self.rows.len().max(1);
        let (x0, x1) = self.bounds();
        let longest = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(4);
        let labels: Vec<String> = self.rows.iter().map(|r| r.label.clone()).collect();
        // Row i sits at y = n - 1 - i, so the first row is on top.
        let row_label = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                labels.get(n - 1 - i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, font(20.0))
            .margin(px(10.0))
            .margin_right(px(28.0))
            .x_label_area_size(px(45.0))
            .y_label_area_size(px((longest as f64 * 7.5 + 16.0).clamp(60.0, 320.0)))
            .build_cartesian_2d(x0..x1, -0.5..n as f64 - 0.5)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .x_desc(self.x_label.as_str())
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&row_label)
            .label_style(font(13.0))
            .axis_desc_style(font(15.0))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(err)?;
        let cap = 0.18;
        for (i, r) in self.rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let c = RGBColor(r.color.0, r.color.1, r.color.2);
            let stroke = c.stroke_width(px(2.0));
            if let Some((lo, hi)) = r.interval {
                let segs = [
                    vec![(lo, y), (hi, y)],
                    vec![(lo, y - cap), (lo, y + cap)],
                    vec![(hi, y - cap), (hi, y + cap)],
                ];
                chart
                    .draw_series(segs.into_iter().map(|s| PathElement::new(s, stroke)))
                    .map_err(err)?;
            }
            if r.value.is_finite() {
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (r.value, y),
                        px(5.0) as i32,
                        c.filled(),
                    )))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
        Ok(())
    }

    pub fn to_svg(&self) -> Result<String> {
        ensure_font();
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, self.size()).into_drawing_area();
            self.draw(root, 1.0)?;
        }
        Ok(s)
    }

    /// RGB pixels at `PNG_SCALE` times the SVG size.
    pub fn to_rgb(&self) -> Result<(u32, u32, Vec<u8>)> {
        ensure_font();
        let (w, h) = (self.size().0 * PNG_SCALE, self.size().1 * PNG_SCALE);
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            self.draw(root, PNG_SCALE as f64)?;
        }
        Ok((w, h, buf))
    }
}

impl Figure for IntervalChart {
    fn id(&self) -> &str {
        &self.id
    }
    fn to_svg(&self) -> Result<String> {
        IntervalChart::to_svg(self)
    }
    fn write_png(&self, path: &Path) -> Result<()> {
        let (w, h, buf) = self.to_rgb()?;
        png(path, w, h, &buf)
    }
}

/// Writes RGB pixels as a PNG (encoded by `image`, so plotters needs no encoder).
fn png(path: &Path, w: u32, h: u32, buf: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic_with(path, |f| {
        let mut out = std::io::BufWriter::new(f);
        let enc = image::codecs::png::PngEncoder::new(&mut out);
        image::ImageEncoder::write_image(enc, buf, w, h, image::ExtendedColorType::Rgb8)?;
        std::io::Write::flush(&mut out)?;
        Ok(())
    })
}

/// The legend box every chart uses (top right, translucent), sized by `scale`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    scale: f64,
) -> Result<()> {
    chart
        .configure_series_labels()
        .legend_area_size((26.0 * scale).round() as u32)
        .label_font((FAMILY, 14.0 * scale).into_font())
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart failed: {e:?}")
}

/// Compact tick labels: `0.25`, `1.5k`, `3.00e-4`.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    // Plotters steps ticks by repeated addition: a tick meant as 0 can come out as
    // -5.55e-17. No plotted quantity is this small.
    if a < 1e-15 {
        "0".into()
    } else if !(1e-2..1e6).contains(&a) {
        // Two decimals: ticks of a narrow range (an lr near 1e-3) stay distinct.
        format!("{v:.2e}")
    } else if a >= 1e4 {
        format!("{:.1}", v / 1e3).trim_end_matches(".0").to_string() + "k"
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::tick;

    #[test]
    fn ticks_are_compact_and_distinct() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(
            tick(-5.551115123125783e-17),
            "0",
            "a zero tick's rounding error"
        );
        assert_eq!(tick(1e-8), "1.00e-8");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(20_000.0), "20k");
        assert_eq!(tick(12_500.0), "12.5k");
        assert_ne!(tick(1.0e-3), tick(1.02e-3));
    }
}
