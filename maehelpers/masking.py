"""Mask-ratio schedules: the ratio as a function of training progress in [0, 1].

Every schedule moves from `start` to `end` over the first `frac` of training and then stays at
`end`. Direction is given by the values: start < end is a curriculum (the improved variant:
0.5 -> 0.75 over the first half), start > end a decreasing schedule (favoured by the literature,
RECIPE.md section 4), start == end or 'constant' the paper's fixed ratio.
"""
import math


def constant(progress: float, start: float, end: float, frac: float) -> float:
    return end


def linear(progress: float, start: float, end: float, frac: float) -> float:
    t = min(progress / frac, 1.0) if frac > 0 else 1.0
    return start + (end - start) * t


def cosine(progress: float, start: float, end: float, frac: float) -> float:
    t = min(progress / frac, 1.0) if frac > 0 else 1.0
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine}


def mask_ratio_at(progress: float, variant) -> float:
    """Mask ratio of `variant` (a VariantConfig) at `progress` = step / total_steps."""
    fn = SCHEDULES[variant.mask_schedule]
    return fn(min(max(progress, 0.0), 1.0), variant.mask_ratio_start, variant.mask_ratio,
              variant.mask_schedule_frac)
