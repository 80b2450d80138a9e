"""Mask-ratio schedules: the ratio as a function of training progress in [0, 1].

Every schedule moves from `start` to `end` over the first `frac` of training and then stays at
`end`. Direction is given by the values: start < end is a curriculum (the improved variant:
0.5 -> 0.75 over the first half), start > end a decreasing schedule (the direction a controlled
study on masked language models found helpful, Ankner et al. 2023), start == end or 'constant'
the paper's fixed ratio. 'random' draws the ratio uniformly between start and end at every step
(R2MAE, Dong et al. 2025); `u` in [0, 1) is that draw, taken from the step's generator.
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


def random(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:
    return start + (end - start) * u


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine, "random": random}


def mask_ratio_at(progress: float, variant, u: float = 0.5) -> float:
    """Mask ratio of `variant` (a VariantConfig) at `progress` = step / total_steps; `u` is the
    step's uniform draw, used by the 'random' schedule only."""
    progress, v = min(max(progress, 0.0), 1.0), variant
    if v.mask_schedule == "random":
        return random(progress, v.mask_ratio_start, v.mask_ratio, v.mask_schedule_frac, u)
    return SCHEDULES[v.mask_schedule](progress, v.mask_ratio_start, v.mask_ratio, v.mask_schedule_frac)
