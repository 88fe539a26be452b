#!/usr/bin/env python3
"""Reference intervals for src/eval/stats.rs and src/eval/intervals.rs, from scipy/numpy.

Writes tests/fixtures/stats/reference.json, read by tests/it/stats.rs. Run once when the
cases change; the harness never runs Python.

Cases:
- "mean": percentile bootstrap of a mean (scipy.stats.bootstrap, method="percentile",
  200,000 resamples: its endpoints are the ideal bootstrap's to ~0.001 of a standard
  error), for a sample given in full.
- "paired": percentile bootstrap of mean(b) - mean(a) with items resampled together
  (scipy.stats.bootstrap, paired=True), a and b given in full.
- "t": Student t interval of a mean (scipy.stats.t.interval with the standard error).
- "welch": Welch's interval of mean(b) - mean(a)
  (scipy.stats.ttest_ind(b, a, equal_var=False).confidence_interval()).
- "t_ppf": Student t quantiles (scipy.stats.t.ppf), whole and fractional df.

The samples are drawn here with numpy's generator; the Rust side resamples with its own
generator, so the tests compare endpoints within the Monte Carlo error of its resamples.

    python3 scripts/ref_stats.py          # numpy >= 1.24, scipy >= 1.11
"""

import json
import pathlib

import numpy as np
import scipy
from scipy import stats

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/stats/reference.json"
RESAMPLES = 200_000


def boot(data, statistic, paired=False):
    r = stats.bootstrap(
        data,
        statistic,
        n_resamples=RESAMPLES,
        paired=paired,
        vectorized=True,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(12345),
    )
    return float(r.confidence_interval.low), float(r.confidence_interval.high), float(
        r.standard_error
    )


def main():
    rng = np.random.default_rng(2026)
    cases = {"scipy": scipy.__version__, "numpy": np.__version__, "resamples": RESAMPLES}

    mean = []
    for name, x in [
        ("bernoulli p=0.6 n=1000", (rng.random(1000) < 0.6).astype(float)),
        ("bernoulli p=0.9 n=200", (rng.random(200) < 0.9).astype(float)),
        ("gamma(2) n=300", rng.gamma(2.0, size=300)),
    ]:
        low, high, se = boot((x,), lambda s, axis=-1: np.mean(s, axis=axis))
        mean.append(
            {"name": name, "x": x.tolist(), "value": float(x.mean()), "low": low, "high": high, "se": se}
        )
    cases["mean"] = mean

    paired = []
    # Two QA runs on 500 common questions that agree on most items (correlated errors,
    # which the paired interval is for), and two independent ones.
    a = (rng.random(500) < 0.6).astype(float)
    flip = rng.random(500) < 0.15
    b = np.where(flip, 1.0 - a, a)
    c = (rng.random(500) < 0.55).astype(float)
    for name, x, y in [("correlated n=500", a, b), ("independent n=500", a, c)]:
        low, high, se = boot(
            (x, y), lambda u, v, axis=-1: np.mean(v, axis=axis) - np.mean(u, axis=axis), paired=True
        )
        paired.append(
            {
                "name": name,
                "a": x.tolist(),
                "b": y.tolist(),
                "delta": float(y.mean() - x.mean()),
                "low": low,
                "high": high,
                "se": se,
            }
        )
    cases["paired"] = paired

    t = []
    for v in [[0.55, 0.6, 0.58], [0.571, 0.603], [1.0, 2.0, 3.0, 4.0, 10.0]]:
        v = np.array(v)
        low, high = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
        t.append({"values": v.tolist(), "value": float(v.mean()), "low": float(low), "high": float(high)})
    cases["t"] = t

    welch = []
    for x, y in [([0.55, 0.6, 0.58], [0.61, 0.66]), ([0.5, 0.6, 0.7], [0.2, 0.3]), ([1.0, 2.0, 3.0, 4.0], [2.5, 2.7, 2.6])]:
        x, y = np.array(x), np.array(y)
        ci = stats.ttest_ind(y, x, equal_var=False).confidence_interval(0.95)
        welch.append(
            {"a": x.tolist(), "b": y.tolist(), "delta": float(y.mean() - x.mean()), "low": float(ci.low), "high": float(ci.high)}
        )
    cases["welch"] = welch

    cases["t_ppf"] = [
        {"p": p, "df": df, "t": float(stats.t.ppf(p, df))}
        for p, df in [(0.975, 1.0), (0.975, 2.0), (0.975, 4.0), (0.975, 2.9411764705882355), (0.975, 13.7), (0.995, 30.0), (0.9, 1000.0)]
    ]

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
