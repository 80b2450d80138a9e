"""Mask-ratio schedules: the ratio as a function of training progress in [0, 1].

Every schedule moves from `start` to `end` over the first `frac` of training and then stays at
`end`. Direction is given by the values: start < end is a curriculum (the improved variant:
0.5 -> 0.75 over the first half), start > end a decreasing schedule (the direction a controlled
study on masked language models found helpful, Ankner et al. 2023), start == end or 'constant'
the paper's fixed ratio. 'random' draws the ratio uniformly between start and end at every step
(R2MAE, Dong et al. 2025); `u` in [0, 1) is that draw, taken from the step's generator.

A schedule is a plain function (progress, start, end, frac, u) -> ratio, registered by name:

    @register_schedule("step_up")
    def step_up(progress, start, end, frac, u):
        return start if progress < frac else end

and used as `variant.mask_schedule = "step_up"` (config validation knows every registered name).
"""
import math

SCHEDULES = {}


def register_schedule(name: str):
    """Decorator: make a schedule function available to configs as `variant.mask_schedule = name`."""
    def add(fn):
        SCHEDULES[name] = fn
        return fn
    return add


@register_schedule("constant")
def constant(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:
    return end


@register_schedule("linear")
def linear(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:
    t = min(progress / frac, 1.0) if frac > 0 else 1.0
    return start + (end - start) * t


@register_schedule("cosine")
def cosine(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:
    t = min(progress / frac, 1.0) if frac > 0 else 1.0
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


@register_schedule("random")
def random(progress: float, start: float, end: float, frac: float, u: float = 0.5) -> float:
    return start + (end - start) * u


def mask_ratio_at(progress: float, variant, u: float = 0.5) -> float:
    """Mask ratio of `variant` (a VariantConfig) at `progress` = step / total_steps; `u` is the
    step's uniform draw in [0, 1) (the 'random' schedule uses it; a registered one may)."""
    progress, v = min(max(progress, 0.0), 1.0), variant
    return SCHEDULES[v.mask_schedule](progress, v.mask_ratio_start, v.mask_ratio, v.mask_schedule_frac, u)
