"""The study's statistics, each a short function with its formula stated (tests check hand values).

- `paired`: differences arm - base over the seeds both have; mean, 95 % Student-t half-width,
  two-sided p of a zero mean, and the minimum detectable effect (`detectable`).
- `detectable`: the minimum detectable effect of a two-sided t test (5 %, power 80 %) from the
  noncentral t: the shift whose noncentral t statistic passes the critical value with probability
  0.8. The shortcut (t_0.975 + t_0.80) * se understates it at few seeds (16 % at 2, 5 % at 3).
- `holm`: Holm's step-down adjustment of a family of p-values (controls the family-wise error).
- `bootstrap_paired` / `image_bootstrap`: an interval (and standard error) for the mean paired
  difference from resampling the TEST IMAGES (the same resampled images for both arms and every seed).
- `combined`: seeds and test images both treated as samples: se = sqrt(sd^2 / n + se_img^2), degrees
  of freedom by Welch-Satterthwaite, the t interval and p on them (registration 2 in
  benchmarks/preregistered.md). The seed interval alone is conditional on the test images.
- `slope`: per seed, the least-squares slope of y against x; the mean slope with a t interval.
- `seeds_needed`: how many paired seeds a target half-width, or a detectable effect, needs.
"""
import math
import statistics

import numpy as np
from scipy import optimize
from scipy import stats as sps


def t_quantile(q: float, df: int) -> float:
    return float(sps.t.ppf(q, df))


def power_of(shift: float, se: float, df: float, alpha: float = 0.05) -> float:
    """Probability that a two-sided t test at level alpha rejects when the true effect is `shift`."""
    crit, nc = t_quantile(1 - alpha / 2, df), shift / se
    lower = float(sps.nct.cdf(-crit, df, nc))              # far in the tail scipy may give nan: it is 0
    return float(sps.nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0)


def detectable(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The minimum detectable effect: the shift that a two-sided t test (level alpha, df degrees of
    freedom, standard error se) detects with probability `power`, from the noncentral t."""
    if se <= 0:
        return 0.0
    hi = 1.0
    while power_of(hi * se, se, df, alpha) < power:
        hi *= 2
    return se * optimize.brentq(lambda nc: power_of(nc * se, se, df, alpha) - power, 0.0, hi, xtol=1e-10)


def mean_interval(values: list) -> dict:
    """Mean, sd, 95 % t half-width, two-sided p of a zero mean, n, and the minimum detectable effect
    (no interval with one value)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return {"diff": mean, "ci95": None, "n": n, "sd": None, "p": None, "mde": None}
    sd = statistics.stdev(values)
    se = sd / math.sqrt(n)
    t = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return {"diff": mean, "ci95": t_quantile(0.975, n - 1) * se, "n": n, "sd": sd,
            "p": float(2 * sps.t.sf(abs(t), n - 1)), "mde": detectable(se, n - 1)}


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


def image_bootstrap(per_image: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Resampling the test images: `per_image` is each image's difference (in points, averaged over
    seeds); each resample draws image indices with replacement. The 2.5 and 97.5 percentiles of the
    resampled means, and their standard deviation (the image part of the combined interval)."""
    rng = np.random.default_rng(seed)
    n = per_image.shape[0]
    means = np.array([per_image[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    return {"lo": float(np.percentile(means, 2.5)), "hi": float(np.percentile(means, 97.5)), "se": float(means.std(ddof=1))}


def per_image_difference(base: dict, arm: dict) -> np.ndarray | None:
    """Each test image's difference in points, arm minus base, averaged over the seeds both have
    ({seed: bool array of per-image correctness} each)."""
    seeds = sorted(set(base) & set(arm))
    if not seeds:
        return None
    return 100.0 * np.stack([arm[s].astype(np.float64) - base[s].astype(np.float64) for s in seeds]).mean(0)


def bootstrap_paired(base: dict, arm: dict, n_boot: int = 2000, seed: int = 0) -> tuple | None:
    """95 % percentile interval of the mean over shared seeds of (accuracy of arm - of base), in
    points, resampling the test images: base and arm are {seed: bool array of per-image correctness},
    and each resample draws one set of image indices used for both arms and every seed."""
    diff = per_image_difference(base, arm)
    if diff is None:
        return None
    b = image_bootstrap(diff, n_boot, seed)
    return b["lo"], b["hi"]


def combined(seed_interval: dict, se_img: float) -> dict:
    """Seeds and test images both as samples: se = sqrt(sd^2 / n + se_img^2); degrees of freedom
    df = se^4 / ((sd^2 / n)^2 / (n - 1)) (Welch-Satterthwaite; the image part has thousands); the
    95 % t interval, the two-sided p of mean / se and the minimum detectable effect on df."""
    n, mean, sd = seed_interval["n"], seed_interval["diff"], seed_interval.get("sd")
    if n < 2 or sd is None:
        return {"diff": mean, "ci95": None, "n": n, "p": None, "mde": None, "se": None, "df": None}
    v_seed = sd ** 2 / n
    v = v_seed + se_img ** 2
    se = math.sqrt(v)
    df = v ** 2 / (v_seed ** 2 / (n - 1)) if v_seed > 0 else 1e6
    t = mean / se if se > 0 else 0.0
    return {"diff": mean, "ci95": t_quantile(0.975, df) * se, "n": n, "se": se, "df": df, "se_seeds": math.sqrt(v_seed),
            "se_images": se_img, "p": float(2 * sps.t.sf(abs(t), df)), "mde": detectable(se, df)}


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
    minimum detectable effect (two-sided 5 %, `power`, noncentral t) is at most `effect`, for a paired
    spread sd."""
    if (half_width is None) == (effect is None):
        raise ValueError("give exactly one of half_width or effect")
    for n in range(2, max_n + 1):
        se = sd / math.sqrt(n)
        if (detectable(se, n - 1, power=power) <= effect) if effect is not None else \
                t_quantile(0.975, n - 1) * se <= half_width:
            return n
    return max_n
