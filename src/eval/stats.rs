//! The statistics behind "is the difference real?": percentile bootstrap intervals over
//! items (seeded, so a report is the same every time it is drawn), paired bootstrap of the
//! difference between two runs on their common items, and Student t intervals over seeds.
//!
//! A resample is represented by per-item weights (how often each item was drawn), so a
//! statistic is any function of weights: a mean is `sum(w s) / sum(w)`, and a corpus metric
//! such as CIDEr-D is recomputed on the resampled set ([`super::caption_set`]).

use serde::Serialize;

use crate::rng::Rng;

/// How intervals are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Resamples per interval (the percentile endpoints' Monte Carlo error shrinks as
    /// 1/sqrt of this; 2,000 keeps it near a tenth of the interval's half-width).
    pub resamples: usize,
    /// Seed of the resampling; every interval derives its own stream from it.
    pub seed: u64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            resamples: 2000,
            seed: 0x5EED_B007,
            level: 0.95,
        }
    }
}

/// A value with the low and high ends of its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether 0 lies outside `[low, high]`: the difference is "significant".
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// Draws `w.len()` items with replacement and writes how often each was drawn.
pub fn resample(rng: &mut Rng, w: &mut [f64]) {
    w.fill(0.0);
    let n = w.len();
    for _ in 0..n {
        w[rng.below(n)] += 1.0;
    }
}

/// The `p` quantile of sorted values, interpolated linearly between order statistics
/// (numpy's default, "linear").
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Percentile bootstrap over `n` items of a statistic with several outputs: `stat` maps
/// per-item weights to one value per output. Returns `(low, high)` per output, from the
/// resamples where that output is finite. `stream` separates the random draws of
/// different intervals made with the same seed.
pub fn bootstrap(
    n: usize,
    o: &Bootstrap,
    stream: u64,
    mut stat: impl FnMut(&[f64]) -> Vec<f64>,
) -> Vec<(f64, f64)> {
    let mut rng = Rng::derive(o.seed, stream);
    let mut w = vec![0.0; n];
    let mut reps: Vec<Vec<f64>> = vec![];
    for _ in 0..o.resamples {
        resample(&mut rng, &mut w);
        let v = stat(&w);
        if reps.is_empty() {
            reps = vec![Vec::with_capacity(o.resamples); v.len()];
        }
        for (r, x) in reps.iter_mut().zip(v) {
            if x.is_finite() {
                r.push(x);
            }
        }
    }
    let alpha = 1.0 - o.level;
    reps.into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            (quantile(&r, alpha / 2.0), quantile(&r, 1.0 - alpha / 2.0))
        })
        .collect()
}

/// The mean of `scores` with its percentile bootstrap interval.
pub fn mean_interval(scores: &[f64], o: &Bootstrap, stream: u64) -> Interval {
    let value = weighted_mean(scores, &vec![1.0; scores.len()]);
    let (low, high) = bootstrap(scores.len(), o, stream, |w| vec![weighted_mean(scores, w)])
        .first()
        .copied()
        .unwrap_or((f64::NAN, f64::NAN));
    Interval { value, low, high }
}

/// `sum(w s) / sum(w)`; NaN when every weight is 0.
pub fn weighted_mean(scores: &[f64], w: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (s, w) in scores.iter().zip(w) {
        num += s * w;
        den += w;
    }
    num / den
}

/// Mean and sample standard deviation (n - 1 in the denominator).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let ss = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
    (mean, (ss / (n - 1.0)).sqrt())
}

/// Student t interval of the mean of `values` (replicas, e.g. one value per seed); `None`
/// for fewer than two values.
pub fn t_interval(values: &[f64], level: f64) -> Option<Interval> {
    if values.len() < 2 {
        return None;
    }
    let (mean, sd) = mean_sd(values);
    let n = values.len() as f64;
    let half = t_quantile(0.5 + level / 2.0, n - 1.0) * sd / n.sqrt();
    Some(Interval {
        value: mean,
        low: mean - half,
        high: mean + half,
    })
}

/// Interval of `mean(b) - mean(a)` for two groups of replicas: Welch's t when both have at
/// least two values; when one side is a single value, the other side's spread stands for
/// both (equal variances assumed, the single run's own spread being unknown); `None` when
/// neither side has two values.
pub fn difference_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() || (a.len() < 2 && b.len() < 2) {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let delta = mean(b) - mean(a);
    let (se2, df) = if a.len() >= 2 && b.len() >= 2 {
        let (va, vb) = (mean_sd(a).1.powi(2) / na, mean_sd(b).1.powi(2) / nb);
        let df = (va + vb).powi(2) / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
        (va + vb, df)
    } else {
        let (group, n) = if a.len() >= 2 { (a, na) } else { (b, nb) };
        let var = mean_sd(group).1.powi(2);
        (var * (1.0 / na + 1.0 / nb), n - 1.0)
    };
    let half = if se2 > 0.0 {
        t_quantile(0.5 + level / 2.0, df) * se2.sqrt()
    } else {
        0.0
    };
    Some(Interval {
        value: delta,
        low: delta - half,
        high: delta + half,
    })
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, nine coefficients: ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The fraction converges fast on this side of the mean; the other side by symmetry.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(T <= t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * inc_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The standard normal quantile (Acklam's rational approximation, ~1e-9 relative).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The `p` quantile of Student's t with `df` (> 0, not necessarily whole) degrees of
/// freedom: the root of [`t_cdf`] found by bisection, to ~1e-12 relative. Beyond 1e5
/// degrees of freedom the Cornish-Fisher expansion around the normal quantile is used
/// (its error there is below 1e-15).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0 && df > 0.0, "t_quantile({p}, {df})");
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    if p == 0.5 {
        return 0.0;
    }
    if df > 1e5 {
        let z = normal_quantile(p);
        let (z3, z5) = (z.powi(3), z.powi(5));
        return z + (z3 + z) / (4.0 * df) + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df * df);
    }
    let mut hi = 1.0;
    while t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-13 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_scipy() {
        // scipy.stats.t.ppf (scipy 1.16), computed outside this code base.
        let want = [
            (0.975, 1.0, 12.706204736174694),
            (0.975, 2.0, 4.302652729749462),
            (0.975, 3.0, 3.1824463052837078),
            (0.975, 4.0, 2.7764451051977934),
            (0.975, 5.0, 2.5705818356363146),
            (0.975, 9.0, 2.262157162798205),
            (0.975, 29.0, 2.045229642132703),
            (0.975, 100.0, 1.9839715185235518),
            (0.975, 1000.0, 1.9623390808264083),
            (0.975, 1.5, 6.016663104427929),
            (0.975, 2.7, 3.3921483831737507),
            (0.975, 7.3, 2.345066736547703),
            (0.95, 3.0, 2.3533634348018233),
            (0.995, 7.0, 3.4994832973504924),
            (0.6, 2.0, 0.2886751345948128),
        ];
        for (p, df, t) in want {
            let got = t_quantile(p, df);
            assert!((got - t).abs() < 1e-9 * t, "t({p}, {df}) = {got}, want {t}");
            assert!((t_quantile(1.0 - p, df) + t).abs() < 1e-9 * t);
        }
        // Many degrees of freedom: the normal quantile, 1.959963984540054 (scipy).
        assert!((t_quantile(0.975, 1e9) - 1.959963984540054).abs() < 1e-8);
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-8);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 8.0);
        // numpy.quantile([1,2,4,8], 0.5) = 3.0, 0.25 -> 1.75
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.25), 1.75);
    }

    #[test]
    fn t_interval_is_mean_plus_minus_t_se() {
        // Values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302652729749462.
        let i = t_interval(&[1.0, 2.0, 3.0], 0.95).unwrap();
        let half = 4.302652729749462 / 3f64.sqrt();
        assert!((i.value - 2.0).abs() < 1e-15);
        assert!((i.low - (2.0 - half)).abs() < 1e-9 && (i.high - (2.0 + half)).abs() < 1e-9);
        assert!(t_interval(&[1.0], 0.95).is_none());
    }

    #[test]
    fn welch_difference_uses_satterthwaite_degrees_of_freedom() {
        // a: mean 2, var 1 (n 3); b: mean 5, var 4 (n 3). se^2 = 1/3 + 4/3 = 5/3,
        // df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 25/9 / (17/18) = 50/17.
        let a = [1.0, 2.0, 3.0];
        let b = [3.0, 5.0, 7.0];
        let i = difference_interval(&a, &b, 0.95).unwrap();
        let half = t_quantile(0.975, 50.0 / 17.0) * (5.0f64 / 3.0).sqrt();
        assert!((i.value - 3.0).abs() < 1e-12);
        assert!((i.high - i.value - half).abs() < 1e-9);
        // One side single: the group's spread for both, df of the group.
        let i = difference_interval(&[4.0], &b, 0.95).unwrap();
        let half = t_quantile(0.975, 2.0) * (4.0f64 * (1.0 + 1.0 / 3.0)).sqrt();
        assert!((i.value - 1.0).abs() < 1e-12 && (i.high - 1.0 - half).abs() < 1e-9);
        assert!(difference_interval(&[1.0], &[2.0], 0.95).is_none());
    }

    #[test]
    fn bootstrap_is_seeded_and_resamples_with_replacement() {
        let o = Bootstrap::default();
        let s: Vec<f64> = (0..50).map(|i| (i as f64).sqrt()).collect();
        let a = mean_interval(&s, &o, 7);
        assert_eq!(
            a,
            mean_interval(&s, &o, 7),
            "same seed and stream, same interval"
        );
        assert_ne!(a, mean_interval(&s, &o, 8));
        let mut rng = Rng::new(1);
        let mut w = vec![0.0; 10];
        resample(&mut rng, &mut w);
        assert_eq!(w.iter().sum::<f64>(), 10.0);
        assert!(w.contains(&0.0) || w.iter().any(|&x| x > 1.0));
    }
}
