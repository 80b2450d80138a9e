"""The study's statistics, each a short function with its formula stated (tests check hand values).

- `paired`: differences arm - base over the seeds both have; mean, 95 % Student-t half-width,
  two-sided p of a zero mean, and the minimum detectable effect (two-sided 5 %, power 80 %):
  (t_0.975 + t_0.80) * sd / sqrt(n).
- `holm`: Holm's step-down adjustment of a family of p-values (controls the family-wise error).
- `bootstrap_paired`: an interval for the mean paired difference from resampling the TEST IMAGES
  (the same resampled images for both arms and every seed), beside the seed interval.
- `slope`: per seed, the least-squares slope of y against x; the mean slope with a t interval.
- `seeds_needed`: how many paired seeds a target half-width, or a detectable effect, needs.
"""
import math
import statistics

import numpy as np
from scipy import stats as sps


def t_quantile(q: float, df: int) -> float:
    return float(sps.t.ppf(q, df))


def mean_interval(values: list) -> dict:
    """Mean, sd, 95 % t half-width, two-sided p of a zero mean, n (no interval with one value)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return {"diff": mean, "ci95": None, "n": n, "sd": None, "p": None, "mde": None}
    sd = statistics.stdev(values)
    se = sd / math.sqrt(n)
    t = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return {"diff": mean, "ci95": t_quantile(0.975, n - 1) * se, "n": n, "sd": sd,
            "p": float(2 * sps.t.sf(abs(t), n - 1)),
            "mde": (t_quantile(0.975, n - 1) + t_quantile(0.80, n - 1)) * se}


def paired(base: dict, arm: dict) -> dict | None:
    """Paired difference arm - base over the seeds both have ({seed: value} each); None without one."""
    seeds = sorted(set(base) & set(arm))
    if not seeds:
        return None
    diffs = [arm[s] - base[s] for s in seeds]
    return {**mean_interval(diffs), "seeds": seeds, "diffs": diffs,
            "base_mean": statistics.fmean(base[s] for s in seeds)}


def holm(pvalues: dict) -> dict:
    """Holm-adjusted p-values: sort ascending, multiply the i-th smallest (from 0) by (m - i),
    keep them non-decreasing, cap at 1. Names without a p-value are left out."""
    items = sorted(((p, k) for k, p in pvalues.items() if p is not None))
    m, out, running = len(items), {}, 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def bootstrap_paired(base: dict, arm: dict, n_boot: int = 2000, seed: int = 0) -> tuple | None:
    """95 % percentile interval of the mean over shared seeds of (accuracy of arm - of base), in
    points, resampling the test images: base and arm are {seed: bool array of per-image correctness},
    and each resample draws one set of image indices used for both arms and every seed."""
    seeds = sorted(set(base) & set(arm))
    if not seeds:
        return None
    diff = np.stack([arm[s].astype(np.float64) - base[s].astype(np.float64) for s in seeds]).mean(0)  # per image
    rng = np.random.default_rng(seed)
    n = diff.shape[0]
    means = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(n_boot)]) * 100.0
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def slope(points_by_seed: dict) -> dict | None:
    """points_by_seed: {seed: [(x, y), ...]}. Per seed the least-squares slope of y on x (seeds with
    at least two x values), then mean_interval over seeds."""
    slopes = []
    for pts in points_by_seed.values():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if len(set(xs)) < 2:
            continue
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slopes.append(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
    return {**mean_interval(slopes), "slopes": slopes} if slopes else None


def seeds_needed(sd: float, half_width: float | None = None, effect: float | None = None, power: float = 0.8,
                 max_n: int = 10_000) -> int:
    """The smallest number of paired seeds whose 95 % t half-width is at most `half_width`, or whose
    minimum detectable effect (two-sided 5 %, `power`) is at most `effect`, for a paired spread sd."""
    if (half_width is None) == (effect is None):
        raise ValueError("give exactly one of half_width or effect")
    for n in range(2, max_n + 1):
        q = t_quantile(0.975, n - 1) + (t_quantile(power, n - 1) if effect is not None else 0.0)
        if q * sd / math.sqrt(n) <= (effect if effect is not None else half_width):
            return n
    return max_n
