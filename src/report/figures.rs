//! Which charts a report draws: the metric families (loss, lr, throughput, memory, eval
//! scores...), their units, and how raw, smoothed and sparse curves are shown.

use std::collections::BTreeMap;

use super::chart::{self, Chart, Line, LineKind};
use super::series::{self, Curve, Smoothing};

/// Drawing options shared by run reports and comparisons.
#[derive(Debug, Clone, Copy)]
pub struct ChartOptions {
    pub smoothing: Smoothing,
    /// Log y axis for loss and perplexity charts.
    pub log_y: bool,
    /// Downsampling buckets per curve (each keeps first, min, max, last).
    pub buckets: usize,
}

impl Default for ChartOptions {
    fn default() -> Self {
        ChartOptions {
            smoothing: Smoothing::Auto,
            log_y: false,
            buckets: 400,
        }
    }
}

/// Curves with more points than this are drawn raw (faint) plus smoothed; sparser ones
/// (validation, evaluation) as lines with markers.
const DENSE: usize = 20;

/// Counters (skipped samples, truncations) and the data statistics a stage logs once
/// (split `data`: sequences, truncated_tokens, ...) go to tables, not charts.
pub fn is_count(c: &Curve) -> bool {
    c.split == "data" || c.metric.starts_with("skipped") || c.metric.starts_with("truncated")
}

/// Metrics drawn on one chart in a run report: `lr` with `lr/projector`, `lr/lora`; the
/// caption scores together; the QA accuracies together.
pub fn family(metric: &str) -> &str {
    if metric == "lr" || metric.starts_with("lr/") {
        "lr"
    } else if metric.starts_with("qa_acc") {
        "qa_acc"
    } else if ["Bleu", "ROUGE", "CIDEr", "METEOR", "SPICE"]
        .iter()
        .any(|p| metric.starts_with(p))
    {
        "caption scores"
    } else {
        metric
    }
}

/// Order of families on a page; unknown ones follow alphabetically.
fn rank(family: &str) -> usize {
    const ORDER: [&str; 10] = [
        "loss",
        "perplexity",
        "caption scores",
        "qa_acc",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "step_time_s",
        "peak_mem_bytes",
    ];
    ORDER
        .iter()
        .position(|f| *f == family)
        .unwrap_or(ORDER.len())
}

/// Axis description with unit, and the factor applied to values (bytes shown as GiB).
pub fn unit(family: &str) -> (String, f64) {
    let s = |t: &str| (t.to_string(), 1.0);
    match family {
        "loss" => s("loss (cross-entropy, nats/token)"),
        "perplexity" => s("perplexity"),
        "lr" => s("learning rate"),
        "grad_norm" => s("gradient norm (global L2)"),
        "tokens_per_s" => s("throughput (tokens/s)"),
        "samples_per_s" => s("throughput (samples/s)"),
        "step_time_s" => s("step time (s)"),
        "peak_mem_bytes" => ("peak memory (GiB)".into(), 1.0 / (1u64 << 30) as f64),
        "caption scores" => s("score"),
        "qa_acc" => s("accuracy"),
        other => s(other),
    }
}

fn logable(family: &str) -> bool {
    matches!(family, "loss" | "perplexity")
}

/// A file-name-safe chart id.
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(80);
    out
}

/// One curve on a chart, with its legend name and colour.
pub struct Member<'a> {
    pub label: String,
    pub color: (u8, u8, u8),
    pub curve: &'a Curve,
}

/// Builds a chart from curves: dense ones raw + smoothed, sparse ones with markers, all
/// downsampled for drawing; curves of at most one point each become a bar chart.
pub fn build(id: &str, title: &str, family: &str, members: &[Member], o: &ChartOptions) -> Chart {
    let (y_label, factor) = unit(family);
    let scaled = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter().map(|&(x, y)| (x, y * factor)).collect()
    };
    let mut chart = Chart {
        id: slug(id),
        title: title.into(),
        x_label: "optimizer step".into(),
        y_label,
        log_y: o.log_y && logable(family),
        bars: vec![],
        lines: vec![],
    };
    if members.iter().all(|m| m.curve.points.len() <= 1) {
        // Bars: categories are the distinct metric names, series the distinct labels.
        let mut cats: Vec<String> = vec![];
        type Series = (String, (u8, u8, u8), Vec<(f64, f64)>);
        let mut series: Vec<Series> = vec![];
        for m in members {
            let Some(&(_, v)) = m.curve.points.first() else {
                continue;
            };
            let name = m.curve.metric.clone();
            let ci = cats.iter().position(|c| *c == name).unwrap_or_else(|| {
                cats.push(name);
                cats.len() - 1
            });
            match series.iter_mut().find(|s| s.0 == m.label) {
                Some(s) => s.2.push((ci as f64, v * factor)),
                None => series.push((m.label.clone(), m.color, vec![(ci as f64, v * factor)])),
            }
        }
        chart.x_label = "metric".into();
        chart.bars = cats;
        chart.lines = series
            .into_iter()
            .map(|(label, color, points)| Line {
                label: Some(label),
                color,
                kind: LineKind::Solid,
                points,
            })
            .collect();
        return chart;
    }
    for m in members {
        let pts = &m.curve.points;
        if pts.len() > DENSE {
            if let Some(smooth) = o.smoothing.apply(pts) {
                chart.lines.push(Line {
                    label: None,
                    color: m.color,
                    kind: LineKind::Raw,
                    points: scaled(&series::downsample(pts, o.buckets)),
                });
                chart.lines.push(Line {
                    label: Some(format!("{} ({})", m.label, o.smoothing.label())),
                    color: m.color,
                    kind: LineKind::Solid,
                    points: scaled(&series::downsample(&smooth, o.buckets)),
                });
                continue;
            }
        }
        chart.lines.push(Line {
            label: Some(m.label.clone()),
            color: m.color,
            kind: if pts.len() > DENSE {
                LineKind::Solid
            } else {
                LineKind::Markers
            },
            points: scaled(&series::downsample(pts, o.buckets)),
        });
    }
    chart
}

/// A run report's charts: per stage, one chart per metric family with every split on it
/// (train raw + smoothed, validation and evaluation with markers).
pub fn run_charts(curves: &[Curve], o: &ChartOptions) -> Vec<Chart> {
    let mut groups: BTreeMap<(String, usize, String), Vec<&Curve>> = BTreeMap::new();
    for c in curves.iter().filter(|c| !is_count(c)) {
        let fam = family(&c.metric).to_string();
        groups
            .entry((c.stage.clone(), rank(&fam), fam))
            .or_default()
            .push(c);
    }
    groups
        .into_iter()
        // A family of single values (a final validation loss, the eval scores) is a table
        // on the page, not a chart of one bar each.
        .filter(|(_, cs)| cs.iter().any(|c| c.points.len() > 1))
        .map(|((stage, _, fam), cs)| {
            // All single points: one bar series per split, the metrics as categories.
            let bars = cs.iter().all(|c| c.points.len() <= 1);
            let members: Vec<Member> = cs
                .iter()
                .enumerate()
                .map(|(i, c)| Member {
                    label: if bars {
                        c.split.clone()
                    } else if cs.len() == 1 && c.split == "train" {
                        c.metric.clone()
                    } else {
                        format!("{} {}", c.split, c.metric)
                    },
                    color: chart::color(if bars { 0 } else { i }),
                    curve: c,
                })
                .collect();
            build(
                &format!("{stage}-{fam}"),
                &format!("{stage}: {fam}"),
                &fam,
                &members,
                o,
            )
        })
        .collect()
}

/// A comparison's charts: per stage, split and metric, the runs overlaid in their fixed
/// colours; evaluation scores of single points as grouped bars per family.
pub fn compare_charts(runs: &[(String, &[Curve])], o: &ChartOptions) -> Vec<Chart> {
    let banded: Vec<(String, &[Curve], &[series::Band])> =
        runs.iter().map(|(l, c)| (l.clone(), *c, &[][..])).collect();
    compare_charts_banded(&banded, o)
}

/// [`compare_charts`] where a subject may be a group: its curves are the mean over its
/// runs, drawn over the min/max band of the runs in the same colour.
pub fn compare_charts_banded(
    runs: &[(String, &[Curve], &[series::Band])],
    o: &ChartOptions,
) -> Vec<Chart> {
    let mut charts = compare_charts_of(runs, o);
    for chart in &mut charts {
        if !chart.bars.is_empty() {
            continue;
        }
        let key = chart.id.clone();
        let mut under = vec![];
        for (i, (_, _, bands)) in runs.iter().enumerate() {
            for b in bands.iter() {
                if slug(&format!("{}-{}-{}", b.stage, b.split, b.metric)) == key {
                    let (_, factor) = unit(family(&b.metric));
                    // An even subset is enough for a translucent area.
                    let every = b.points.len().div_ceil(2 * o.buckets.max(1)).max(1);
                    let mut kept: Vec<(f64, f64, f64)> =
                        b.points.iter().step_by(every).copied().collect();
                    if kept.last() != b.points.last() {
                        kept.extend(b.points.last());
                    }
                    let thin = series::Band {
                        points: kept,
                        ..b.clone()
                    };
                    under.push(Line {
                        label: None,
                        color: chart::color(i),
                        kind: LineKind::Band,
                        points: thin
                            .outline()
                            .into_iter()
                            .map(|(x, y)| (x, y * factor))
                            .collect(),
                    });
                }
            }
        }
        under.append(&mut chart.lines);
        chart.lines = under;
    }
    charts
}

fn compare_charts_of(runs: &[(String, &[Curve], &[series::Band])], o: &ChartOptions) -> Vec<Chart> {
    // Key: stage, family rank, split, metric (a family when drawn as bars).
    let mut groups: BTreeMap<(String, usize, String, String), Vec<Member>> = BTreeMap::new();
    for (i, (label, curves, _)) in runs.iter().enumerate() {
        for c in curves.iter().filter(|c| !is_count(c)) {
            let fam = family(&c.metric);
            let sparse_eval = c.split == "eval" && c.points.len() <= 1;
            let name = if sparse_eval {
                fam.to_string()
            } else {
                c.metric.clone()
            };
            groups
                .entry((c.stage.clone(), rank(fam), c.split.clone(), name))
                .or_default()
                .push(Member {
                    label: label.clone(),
                    color: chart::color(i),
                    curve: c,
                });
        }
    }
    groups
        .into_iter()
        .map(|((stage, _, split, name), members)| {
            let fam = family(&name).to_string();
            build(
                &format!("{stage}-{split}-{name}"),
                &format!("{stage} {split}: {name}"),
                &fam,
                &members,
                o,
            )
        })
        .collect()
}
