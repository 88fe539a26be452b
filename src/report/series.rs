//! Curves as drawn: points grouped per (stage, split, metric), smoothing, and downsampling
//! that keeps the extremes, so a 100k-step run draws fast and still shows every spike.

use std::collections::BTreeMap;

use crate::store::metrics::Row;

/// One metric of one run over steps, sorted by step.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub stage: String,
    pub split: String,
    pub metric: String,
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// `stage/split/metric`, the key used in summaries and tables.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.stage, self.split, self.metric)
    }

    pub fn last(&self) -> Option<(f64, f64)> {
        self.points.last().copied()
    }
}

/// Groups rows into curves keyed by (stage, split, metric), each sorted by step.
/// Non-finite values are dropped: a NaN loss must not blank a whole chart (the final
/// metrics table still shows the raw last value).
pub fn curves(rows: &[Row]) -> Vec<Curve> {
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut map: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        if r.value.is_finite() {
            map.entry((&r.stage, &r.split, &r.metric))
                .or_default()
                .push((r.step as f64, r.value));
        }
    }
    map.into_iter()
        .map(|((stage, split, metric), mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Curve {
                stage: stage.into(),
                split: split.into(),
                metric: metric.into(),
                points,
            }
        })
        .collect()
}

/// The spread of a group's curve: at each step, the lowest and highest of its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub stage: String,
    pub split: String,
    pub metric: String,
    /// `(step, min, max)`, sorted by step.
    pub points: Vec<(f64, f64, f64)>,
}

impl Band {
    /// The band as a closed outline: the upper edge left to right, the lower edge back.
    pub fn outline(&self) -> Vec<(f64, f64)> {
        let upper = self.points.iter().map(|&(x, _, hi)| (x, hi));
        let lower = self.points.iter().rev().map(|&(x, lo, _)| (x, lo));
        upper.chain(lower).collect()
    }
}

/// A group's curves: for every (stage, split, metric) that all runs have, the mean over the
/// runs at each step they all logged, with the min/max band around it.
pub fn aggregate(runs: &[&[Curve]]) -> (Vec<Curve>, Vec<Band>) {
    let (mut means, mut bands) = (vec![], vec![]);
    let Some(first) = runs.first() else {
        return (means, bands);
    };
    for c in first.iter() {
        let same: Vec<&Curve> = runs
            .iter()
            .filter_map(|cs| {
                cs.iter()
                    .find(|o| o.stage == c.stage && o.split == c.split && o.metric == c.metric)
            })
            .collect();
        if same.len() != runs.len() {
            continue;
        }
        // Steps every run logged (x values are whole steps, compared exactly).
        let maps: Vec<BTreeMap<u64, f64>> = same
            .iter()
            .map(|o| o.points.iter().map(|&(x, y)| (x.to_bits(), y)).collect())
            .collect();
        let (mut mean, mut band) = (vec![], vec![]);
        for &(x, _) in &c.points {
            let ys: Option<Vec<f64>> = maps.iter().map(|m| m.get(&x.to_bits()).copied()).collect();
            if let Some(ys) = ys {
                let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                mean.push((x, ys.iter().sum::<f64>() / ys.len() as f64));
                band.push((x, lo, hi));
            }
        }
        if mean.is_empty() {
            continue;
        }
        means.push(Curve {
            stage: c.stage.clone(),
            split: c.split.clone(),
            metric: c.metric.clone(),
            points: mean,
        });
        bands.push(Band {
            stage: c.stage.clone(),
            split: c.split.clone(),
            metric: c.metric.clone(),
            points: band,
        });
    }
    (means, bands)
}

/// Exponential moving average with bias correction (as in Adam and TensorBoard): the
/// first values are not dragged towards zero. `weight` is the share kept from the past
/// (0.9 smooths over roughly ten points).
pub fn ema(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut acc = 0.0;
    let mut norm = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            acc = weight * acc + (1.0 - weight) * y;
            norm = weight * norm + (1.0 - weight);
            (x, acc / norm)
        })
        .collect()
}

/// Trailing moving average over `window` points (shorter at the start).
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// Reduces `points` to at most about `4 * buckets` points: each bucket of consecutive
/// points keeps its first, its minimum, its maximum and its last point, in step order.
/// The global minimum and maximum therefore always survive.
pub fn downsample(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    let buckets = buckets.max(1);
    if points.len() <= 4 * buckets {
        return points.to_vec();
    }
    let size = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(4 * buckets);
    for chunk in points.chunks(size) {
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        let mut keep = [0, lo, hi, chunk.len() - 1];
        keep.sort_unstable();
        let mut prev = usize::MAX;
        for k in keep {
            if k != prev {
                out.push(chunk[k]);
                prev = k;
            }
        }
    }
    out
}

/// How curves are smoothed for drawing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    /// Bias-corrected exponential moving average with this weight.
    Ema(f64),
    /// Trailing moving average over this many points.
    MovingAverage(usize),
    /// Bias-corrected EMA over about a fiftieth of the curve: the same look for 100 steps
    /// as for 100k.
    Auto,
    None,
}

impl Smoothing {
    pub fn apply(&self, points: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
        match *self {
            Smoothing::Ema(w) => Some(ema(points, w)),
            Smoothing::MovingAverage(n) => Some(moving_average(points, n)),
            Smoothing::Auto => {
                let window = (points.len() / 50).max(1) as f64;
                Some(ema(points, 1.0 - 1.0 / window))
            }
            Smoothing::None => None,
        }
    }

    pub fn label(&self) -> String {
        match *self {
            Smoothing::Ema(w) => format!("EMA {w}"),
            Smoothing::MovingAverage(n) => format!("MA {n}"),
            Smoothing::Auto => "EMA".into(),
            Smoothing::None => "none".into(),
        }
    }
}

impl std::str::FromStr for Smoothing {
    type Err = String;
    /// `auto`, `ema:0.9`, `ma:50`, `ema`, `ma`, `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let bad = || format!("bad smoothing {s:?}: use auto, ema[:WEIGHT], ma[:WINDOW] or none");
        match kind {
            "ema" => {
                let w = if arg.is_empty() {
                    0.9
                } else {
                    arg.parse().map_err(|_| bad())?
                };
                if !(0.0..1.0).contains(&w) {
                    return Err(bad());
                }
                Ok(Smoothing::Ema(w))
            }
            "ma" => Ok(Smoothing::MovingAverage(if arg.is_empty() {
                20
            } else {
                arg.parse().map_err(|_| bad())?
            })),
            "none" => Ok(Smoothing::None),
            "auto" => Ok(Smoothing::Auto),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_is_bias_corrected() {
        let p: Vec<_> = (0..5).map(|i| (i as f64, 3.0)).collect();
        for (_, y) in ema(&p, 0.9) {
            assert!((y - 3.0).abs() < 1e-12);
        }
    }

    #[test]
    fn moving_average_window() {
        let p: Vec<_> = (0..4).map(|i| (i as f64, i as f64)).collect();
        let m = moving_average(&p, 2);
        assert_eq!(
            m.iter().map(|p| p.1).collect::<Vec<_>>(),
            [0.0, 0.5, 1.5, 2.5]
        );
    }

    #[test]
    fn aggregate_takes_mean_and_min_max_over_common_steps() {
        let c = |pts: &[(f64, f64)]| Curve {
            stage: "stage1".into(),
            split: "train".into(),
            metric: "loss".into(),
            points: pts.to_vec(),
        };
        let a = [c(&[(1.0, 1.0), (2.0, 3.0), (3.0, 5.0)])];
        let b = [c(&[(1.0, 3.0), (2.0, 1.0)])];
        let (m, bands) = aggregate(&[&a, &b]);
        assert_eq!(
            m[0].points,
            [(1.0, 2.0), (2.0, 2.0)],
            "step 3 is not in both"
        );
        assert_eq!(bands[0].points, [(1.0, 1.0, 3.0), (2.0, 1.0, 3.0)]);
        assert_eq!(
            bands[0].outline(),
            [(1.0, 3.0), (2.0, 3.0), (2.0, 1.0), (1.0, 1.0)]
        );
    }

    #[test]
    fn downsample_keeps_extremes() {
        let mut p: Vec<_> = (0..100_000).map(|i| (i as f64, (i as f64).sin())).collect();
        p[31_337].1 = 50.0;
        p[77_777].1 = -50.0;
        let d = downsample(&p, 500);
        assert!(d.len() <= 2000);
        assert!(d.contains(&(31_337.0, 50.0)) && d.contains(&(77_777.0, -50.0)));
        assert_eq!(d.first(), p.first());
        assert_eq!(d.last(), p.last());
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
