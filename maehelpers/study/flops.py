"""What every comparison costs: FLOPs per training step (an exact quadratic in the visible tokens),
per arm over a run, and the curriculum read at equal compute."""
import math
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checkpoints import build_model
from ..masking import mask_ratio_at
from .arms import ARMS, HEADLINE, arm_config
from .stats import paired


def flops_per_step(step) -> float:
    """FLOPs of one call of step() (forward and backward), from torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


_STEP_FLOPS = {}


def through_three(points, x: float) -> float:
    """The value at x of the quadratic through three (x, y) points (Lagrange's form)."""
    (x0, y0), (x1, y1), (x2, y2) = points
    return (y0 * (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2)) + y1 * (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
            + y2 * (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1)))


def image_step_flops(cfg):
    """keep -> FLOPs of one image's training step (forward and backward) with `keep` visible patches.
    The encoder's linear layers grow with its tokens (keep + cls), its attention with their square,
    and the rest (the patch embedding of every patch, the decoder over all of them) is fixed, so the
    count is a quadratic in keep + 1: three counts from torch's flop counter give every keep exactly
    (a test checks a fourth). Loss terms are not counted: they act on a batch of pooled features or
    on the 28-pixel images, small beside the model. Cached per model size."""
    key = repr(cfg.model)
    if key not in _STEP_FLOPS:
        model = build_model(cfg)
        imgs, L = torch.zeros(1, 3, cfg.model.img_size, cfg.model.img_size), model.num_patches
        points = {}
        for ratio in (0.25, 0.5, 0.75):  # the model keeps int(L * (1 - ratio)) patches
            points[int(L * (1 - ratio)) + 1] = flops_per_step(lambda: model(imgs, ratio)[0].backward())
        _STEP_FLOPS[key] = lambda keep, pts=tuple(points.items()): round(through_three(pts, keep + 1))
    return _STEP_FLOPS[key]


def pretrain_flops(arm: str, settings, steps: int) -> float:
    """Training FLOPs of one run, summed over its mask-ratio schedule: a step's count depends only on
    how many patches stay visible. A schedule that draws the ratio at random counts its expectation
    (the mean over 16 evenly spaced draws per step)."""
    cfg = arm_config(arm, settings, 0, steps)
    flops, L = image_step_flops(cfg), (cfg.model.img_size // cfg.model.patch_size) ** 2
    draws = [(i + 0.5) / 16 for i in range(16)]
    return cfg.train.batch_size * sum(statistics.fmean(flops(int(L * (1 - mask_ratio_at(step / steps, cfg.variant, u))))
                                                       for u in draws) for step in range(steps))


def flops_ratios(rows, settings) -> dict:
    """{arm: training FLOPs / original's at the same steps} for every pretrained arm in rows."""
    out = {}
    for r in rows:
        if r["arm"] in ARMS or r["arm"] in (getattr(settings, "extra_arms", None) or {}):
            out[(r["arm"], r["steps"])] = pretrain_flops(r["arm"], settings, r["steps"]) / pretrain_flops("original", settings,
                                                                                                  r["steps"])
    return out


def _at_log_steps(points: list, target: float, shape: str) -> float:
    """original's k-NN at `target` steps from one seed's (steps, value) points, read in log steps:
    'linear' between the two budgets around the target, 'quadratic' through the three lowest (concave
    where the curve flattens)."""
    pts = sorted(points)
    if shape == "linear":
        (s0, a0), (s1, a1) = next(((p, q) for p, q in zip(pts, pts[1:]) if p[0] <= target <= q[0]), pts[:2])
        return a0 + (a1 - a0) * math.log(target / s0) / math.log(s1 / s0)
    return through_three([(math.log(s), a) for s, a in pts[:3]], math.log(target))


def compute_matched(records: dict, settings, arm: str = "curriculum", steps: int = 500) -> dict | None:
    """`arm` against original at equal training FLOPs, paired by seed: for every seed that has the arm
    at `steps` and original at two or more budgets, original's k-NN at the steps with the arm's FLOPs is
    read off that seed's own learning curve (log-linear between the budgets around it; and, with three
    budgets, through a quadratic in log steps, which bends where the curve flattens), and the arm's
    k-NN minus that reading gets a t interval over seeds. A reading of curves, not a run."""
    curves = {}
    for (a, s, st), r in records.items():
        if a == "original" and r.get(HEADLINE) is not None:
            curves.setdefault(s, []).append((st, r[HEADLINE]))
    mine = {s: r[HEADLINE] for (a, s, st), r in records.items() if a == arm and st == steps and r.get(HEADLINE) is not None}
    seeds = sorted(s for s in mine if len(curves.get(s, [])) >= 2 and any(st == steps for st, _ in curves[s]))
    if not seeds:
        return None
    ratio = pretrain_flops(arm, settings, steps) / pretrain_flops("original", settings, steps)
    target = steps * ratio
    out = {"arm": arm, "steps": steps, "flops_ratio": ratio, "original_steps_at_equal_flops": target, "seeds": seeds,
           "budgets": sorted({st for s in seeds for st, _ in curves[s]}),
           "at_equal_steps": paired({s: dict(curves[s])[steps] for s in seeds}, {s: mine[s] for s in seeds})}
    for shape in ("linear", "quadratic"):
        usable = [s for s in seeds if len(curves[s]) >= (2 if shape == "linear" else 3)]
        if usable:
            out[shape] = paired({s: _at_log_steps(curves[s], target, shape) for s in usable}, {s: mine[s] for s in usable})
    return out
