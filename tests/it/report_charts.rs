//! Charts: text drawn with the embedded font (no system fonts), deterministic output,
//! log scale, downsampling that keeps spikes.

use harness::report::chart::{self, Chart, Line, LineKind};
use harness::report::figures::{self, ChartOptions};
use harness::report::series::{self, Smoothing};

use crate::common::{experiment, harness, succeed, write};

fn chart(title: &str, lines: Vec<Line>) -> Chart {
    Chart {
        id: "t".into(),
        title: title.into(),
        x_label: "optimizer step".into(),
        y_label: "loss".into(),
        log_y: false,
        bars: vec![],
        lines,
    }
}

fn line(points: Vec<(f64, f64)>) -> Line {
    Line {
        label: Some("run".into()),
        color: chart::color(0),
        kind: LineKind::Solid,
        points,
    }
}

/// Dark pixels in a horizontal band of an RGB image.
fn dark_pixels(w: u32, buf: &[u8], rows: std::ops::Range<u32>) -> usize {
    rows.flat_map(|y| (0..w).map(move |x| ((y * w + x) * 3) as usize))
        .filter(|&i| buf[i] < 100 && buf[i + 1] < 100 && buf[i + 2] < 100)
        .count()
}

#[test]
fn text_is_drawn_with_the_embedded_font() {
    // The font is compiled in and valid.
    assert!(chart::FONT.len() > 100_000 && &chart::FONT[..4] == b"\0\x01\0\0");
    let pts: Vec<_> = (0..50)
        .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
        .collect();
    let (w, _, with_title) = chart("A title drawn in pixels", vec![line(pts.clone())])
        .to_rgb()
        .unwrap();
    let (_, _, no_title) = chart("", vec![line(pts)]).to_rgb().unwrap();
    // The caption band (top 50 px at 2x) has glyph pixels only when there is a title.
    let band = 0..50;
    let (a, b) = (
        dark_pixels(w, &with_title, band.clone()),
        dark_pixels(w, &no_title, band),
    );
    assert!(a > 500 && b == 0, "title pixels {a}, without title {b}");
    // Same input, same pixels: nothing depends on the machine's fonts.
    let again = chart(
        "A title drawn in pixels",
        vec![line(
            (0..50)
                .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                .collect(),
        )],
    );
    assert_eq!(again.to_rgb().unwrap().2, with_title);
}

#[test]
fn no_system_font_library_is_linked() {
    // plotters' `ttf` feature pulls font-kit, which asks fontconfig; only ab_glyph may be used.
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for banned in [
        "name = \"font-kit\"",
        "name = \"yeslogic-fontconfig-sys\"",
        "name = \"servo-fontconfig\"",
    ] {
        assert!(!lock.contains(banned), "{banned} is in Cargo.lock");
    }
    assert!(lock.contains("name = \"ab_glyph\""));
}

#[test]
fn charts_render_in_a_process_without_fonts() {
    // A real run, then its report drawn by a process whose every font lookup points at
    // nothing: only the embedded font can be drawing the text.
    let d = tempfile::tempdir().unwrap();
    let results = d.path().join("results");
    let exp = write(
        d.path(),
        "e.toml",
        &experiment("nofonts", "[stage1]\nmax_steps = 30\n"),
    );
    succeed(harness(d.path(), &results).arg("run").arg(&exp));
    let out = succeed(
        harness(d.path(), &results)
            .env("FONTCONFIG_FILE", "/nonexistent/fonts.conf")
            .env("FONTCONFIG_PATH", "/nonexistent")
            .env("XDG_DATA_DIRS", "/nonexistent")
            .env("HOME", d.path())
            .args(["report", "nofonts"]),
    );
    let report = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let png = report.parent().unwrap().join("charts/stage1-loss.png");
    let img = image::open(&png).unwrap().to_rgb8();
    // Glyphs of the title and axis labels: dark pixels in the caption band.
    assert!(dark_pixels(img.width(), img.as_raw(), 0..50) > 500);
}

#[test]
fn svg_escapes_labels_and_log_scale_draws() {
    let pts: Vec<_> = (1..200).map(|i| (i as f64, 10.0 / i as f64)).collect();
    let mut c = chart(
        "<b>t</b>",
        vec![Line {
            label: Some("<script>x</script>".into()),
            ..line(pts)
        }],
    );
    c.log_y = true;
    let svg = c.to_svg().unwrap();
    assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;x&lt;/script&gt;"));
    assert!(svg.contains("&lt;b&gt;t&lt;/b&gt;"));
    // A log axis over 0.05..10 has ticks a decade apart.
    let ticks: Vec<&str> = svg.lines().map(str::trim).collect();
    for t in ["0.1", "1", "10"] {
        assert!(ticks.contains(&t), "log ticks a decade apart: {t}");
    }
    // Log scale falls back to linear for non-positive values instead of failing.
    c.lines[0].points.push((300.0, -1.0));
    c.to_svg().unwrap();
}

#[test]
fn drawn_curves_keep_spikes_of_long_runs() {
    let mut rows = Vec::new();
    for step in 1..=100_000u64 {
        let v = if step == 54_321 {
            99.0
        } else {
            2.0 - step as f64 * 1e-5
        };
        rows.push(harness::store::metrics::Row {
            run_id: "r".into(),
            stage: "stage1".into(),
            split: "train".into(),
            step,
            epoch: 0.0,
            metric: "loss".into(),
            value: v,
            wall_s: 0.0,
            timestamp_ms: 0,
        });
    }
    let curves = series::curves(&rows);
    let charts = figures::run_charts(&curves, &ChartOptions::default());
    assert_eq!(charts.len(), 1);
    let raw = &charts[0].lines[0];
    assert_eq!(raw.kind, LineKind::Raw);
    assert!(raw.points.len() <= 1600, "{}", raw.points.len());
    assert!(
        raw.points.contains(&(54_321.0, 99.0)),
        "the spike survives downsampling"
    );
    let smooth = &charts[0].lines[1];
    assert_eq!(smooth.kind, LineKind::Solid);
    assert!(smooth.label.as_deref().unwrap().contains("EMA"));
    // Smoothing options parse as the CLI takes them.
    assert_eq!(
        "ma:50".parse::<Smoothing>().unwrap(),
        Smoothing::MovingAverage(50)
    );
    assert_eq!(
        "ema:0.99".parse::<Smoothing>().unwrap(),
        Smoothing::Ema(0.99)
    );
    assert!("ema:2".parse::<Smoothing>().is_err());
}
