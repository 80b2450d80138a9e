"""The study's report: tables, plots and analyses, all computed from the records alone.

    python -m maehelpers study report --readme README.md

`report` writes ablation_<dataset>.{json,md} and the plots into --out and, with --readme, the
README's tables between its two markers (a test keeps README and records in step). The held-out
confirmation (benchmarks/preregistered.md) is analysed as registered there: paired t tests with
Holm's correction per family, the factorial contrasts, a bootstrap over the held-out images, and
the records are refused if any predates the registration.
"""
import json
import math
import statistics
from pathlib import Path


import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import to_dict
from .masking import mask_ratio_at
from .pretrain import build_model
from .runs import read_jsonl, save_json, unpack_bits
from .stats import bootstrap_paired, holm, mean_interval, paired, seeds_needed, slope
from .evaluate import EVAL_SPLITS
from .study import (ARMS, BASELINES, HEADLINE, HELDOUT_ARMS, HELDOUT_SEEDS, METRICS, ROOT, arm_config, correct_path,
                    read_records)


def flops_per_step(step) -> float:
    """FLOPs of one call of step() (forward and backward), from torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def summarise(records: dict) -> list[dict]:
    """One row per (arm, steps): mean and sd over seeds of every metric, and paired differences
    to `original` at the same steps."""
    groups = {}
    for (arm, seed, steps), r in records.items():
        groups.setdefault((arm, steps), {})[seed] = r
    rows = []
    order = {a: i for i, a in enumerate(dict.fromkeys(["original", *BASELINES, *ARMS]))}
    for (arm, steps), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        row = {"arm": arm, "steps": steps, "seeds": sorted(by_seed), "variant": next(iter(by_seed.values())).get("variant"),
               "overrides": next(iter(by_seed.values())).get("overrides", {})}
        base = groups.get(("original", steps), {})
        for m in METRICS:
            vals = {s: r[m] for s, r in by_seed.items() if r.get(m) is not None}
            if not vals:
                continue
            row[m], row[f"{m}_n"] = statistics.fmean(vals.values()), len(vals)
            row[f"{m}_sd"] = statistics.stdev(vals.values()) if len(vals) > 1 else None
            if arm != "original" and arm != "raw_pixels":
                base_vals = {s: r[m] for s, r in base.items() if r.get(m) is not None}
                row[f"{m}_vs_original"], row[f"{m}_base_n"] = paired(base_vals, vals), len(base_vals)
        base_ft = fine_tuned(base) if arm != "original" else {}
        row["ft"] = {e: ft_summary(v, base_ft.get(e, {})) for e, v in sorted(fine_tuned(by_seed).items(), key=str)}
        row["under_load"] = any(r.get("under_load") for r in by_seed.values())
        rows.append(row)
    return rows


def fine_tuned(by_seed: dict) -> dict:
    """{epochs: {seed: fine-tuning top-1}} of one arm's records: every budget it was fine-tuned at."""
    out = {}
    for s, r in by_seed.items():
        ft = r.get("ft_by_epochs") or ({r.get("ft_epochs"): r["ft_top1"]} if r.get("ft_top1") is not None else {})
        for e, v in ft.items():
            out.setdefault(e, {})[s] = v
    return out


def ft_summary(values: dict, base: dict) -> dict:
    """Mean and sd over seeds of one budget's fine-tuning, and the paired difference to original's."""
    v = list(values.values())
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None, "seeds": sorted(values),
            "vs_original": paired(base, values) if base else None}


# ----------------------------------------------------------------------------- compute
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


def pretrain_flops(arm: str, args, steps: int) -> float:
    """Training FLOPs of one run, summed over its mask-ratio schedule: a step's count depends only on
    how many patches stay visible. A schedule that draws the ratio at random counts its expectation
    (the mean over 16 evenly spaced draws per step)."""
    cfg = arm_config(arm, args, 0, steps)
    flops, L = image_step_flops(cfg), (cfg.model.img_size // cfg.model.patch_size) ** 2
    draws = [(i + 0.5) / 16 for i in range(16)]
    return cfg.train.batch_size * sum(statistics.fmean(flops(int(L * (1 - mask_ratio_at(step / steps, cfg.variant, u))))
                                                       for u in draws) for step in range(steps))


def flops_ratios(rows, args) -> dict:
    """{arm: training FLOPs / original's at the same steps} for every pretrained arm in rows."""
    out = {}
    for r in rows:
        if r["arm"] in ARMS or r["arm"] in (getattr(args, "extra_arms", None) or {}):
            out[(r["arm"], r["steps"])] = pretrain_flops(r["arm"], args, r["steps"]) / pretrain_flops("original", args,
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


def compute_matched(records: dict, args, arm: str = "curriculum", steps: int = 500) -> dict | None:
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
    ratio = pretrain_flops(arm, args, steps) / pretrain_flops("original", args, steps)
    target = steps * ratio
    out = {"arm": arm, "steps": steps, "flops_ratio": ratio, "original_steps_at_equal_flops": target, "seeds": seeds,
           "budgets": sorted({st for s in seeds for st, _ in curves[s]}),
           "at_equal_steps": paired({s: dict(curves[s])[steps] for s in seeds}, {s: mine[s] for s in seeds})}
    for shape in ("linear", "quadratic"):
        usable = [s for s in seeds if len(curves[s]) >= (2 if shape == "linear" else 3)]
        if usable:
            out[shape] = paired({s: _at_log_steps(curves[s], target, shape) for s in usable}, {s: mine[s] for s in usable})
    return out


# ----------------------------------------------------------------------------- report
def fmt_value(row, m, digits=2) -> str:
    if row.get(m) is None:
        return ""
    sd = row.get(f"{m}_sd")
    return f"{row[m]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def fmt_diff(row, m) -> str:
    """Δ ± 95 % half-width; where the arm has fewer seeds than original, the baseline it was paired
    with (original's mean over those seeds) follows, so Δ and the two means agree."""
    p = row.get(f"{m}_vs_original")
    if not p:
        return ""
    text = f"{p['diff']:+.2f}" + (f" ± {p['ci95']:.2f}" if p["ci95"] is not None else " (1 seed)")
    if p.get("base_mean") is not None and row.get(f"{m}_base_n", p["n"]) > p["n"]:
        text += f" (vs {p['base_mean']:.2f})"
    return text


def markdown(rows) -> str:
    head = ("| arm | steps | seeds | k-NN mean | Δ vs original | LP mean | Δ vs original | k-NN cls | Δ | LP cls | Δ "
            "| FT | nMSE masked | PSNR (floor) | pretrain s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        time_s = fmt_value(r, "pretrain_time_s", 0) + (" *" if r["under_load"] and r.get("pretrain_time_s") else "")
        lines.append(f"| {r['arm']} | {r['steps']} | {len(r['seeds'])} | {fmt_value(r, 'knn_top1_mean')} | "
                     f"{fmt_diff(r, 'knn_top1_mean')} | {fmt_value(r, 'lp_top1_mean')} | {fmt_diff(r, 'lp_top1_mean')} | "
                     f"{fmt_value(r, 'knn_top1_cls')} | {fmt_diff(r, 'knn_top1_cls')} | {fmt_value(r, 'lp_top1_cls')} | "
                     f"{fmt_diff(r, 'lp_top1_cls')} | {fmt_ft(r)} | {fmt_value(r, 'nmse_masked', 3)} | "
                     f"{fmt_psnr(r)} | {time_s} |")
    return "\n".join(lines) + ("\n\nΔ: paired by seed, mean ± 95 % t half-width; '(1 seed)' has no interval. "
                               "* timing taken while the machine was under load.\n")


def fmt_ft(row) -> str:
    return "; ".join(f"{f['mean']:.2f} ({e} ep)" for e, f in row.get("ft", {}).items())


def fmt_psnr(row) -> str:
    return f"{row['psnr_masked']:.2f} ({row['psnr_masked_floor']:.2f})" if row.get("psnr_masked") is not None else ""


def table(head: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(cells) + " |" for cells in lines)])


def arm_table(rows, steps: int, flops: dict | None = None) -> str:
    """Every arm at one budget: both probes on the mean pool, the cls-token differences, reconstruction
    and (given `flops_ratios`) the training FLOPs against original's."""
    flops = flops or {}
    return table(["arm", "seeds", "k-NN, mean pool", "Δ vs original", "LP, mean pool", "Δ", "k-NN, cls Δ", "LP, cls Δ",
                  "nMSE masked", "PSNR masked (floor)", "FLOPs vs original"],
                 [[r["arm"], str(len(r["seeds"])), fmt_value(r, "knn_top1_mean"), fmt_diff(r, "knn_top1_mean"),
                   fmt_value(r, "lp_top1_mean"), fmt_diff(r, "lp_top1_mean"), fmt_diff(r, "knn_top1_cls"),
                   fmt_diff(r, "lp_top1_cls"), fmt_value(r, "nmse_masked", 3), fmt_psnr(r),
                   f"{flops[(r['arm'], steps)]:.3f}x" if (r["arm"], steps) in flops else ""]
                  for r in rows if r["steps"] == steps])


def curve_arms(rows) -> list[str]:
    """The arms run at more than one budget: the ones with a learning curve."""
    return [a for a in dict.fromkeys(r["arm"] for r in rows if r["arm"] in ARMS)
            if len({r["steps"] for r in rows if r["arm"] == a}) > 1]


def budget_table(rows) -> str:
    """The learning curve: every arm run at more than one budget, with its paired gap, and raw pixels."""
    return table(["arm", "steps", "seeds", "k-NN, mean pool", "Δ vs original", "LP, mean pool", "Δ", "k-NN, cls",
                  "LP, cls"],
                 [[r["arm"], str(r["steps"]), str(len(r["seeds"])), fmt_value(r, "knn_top1_mean"),
                   fmt_diff(r, "knn_top1_mean"), fmt_value(r, "lp_top1_mean"), fmt_diff(r, "lp_top1_mean"),
                   fmt_value(r, "knn_top1_cls"), fmt_value(r, "lp_top1_cls")]
                  for a in [*curve_arms(rows), "raw_pixels"] for r in rows if r["arm"] == a])


def ft_table(rows) -> str:
    """Fine-tuning where it was run, one line per budget; the random encoder with the scratch recipe."""
    lines = []
    for e in sorted({e for r in rows for e in r.get("ft", {})}, key=str):
        for r in rows:
            f = r.get("ft", {}).get(e)
            if f:
                p = f["vs_original"]
                lines.append([r["arm"], str(r["steps"]), str(e), str(len(f["seeds"])),
                              f"{f['mean']:.2f}" + (f" ± {f['sd']:.2f}" if f["sd"] is not None else ""),
                              "" if not p else f"{p['diff']:+.2f}" + (f" ± {p['ci95']:.2f}" if p["ci95"] is not None
                                                                      else " (1 seed)"),
                              "scratch, no layer-wise decay" if r["arm"] == "random" else "layer-wise decay"])
    return table(["arm", "steps", "epochs", "seeds", "fine-tuning top-1", "Δ vs original", "recipe"], lines)


def readme_tables(rows, flops: dict | None = None) -> str:
    """The README's tables, generated from the summary rows: every arm at the shortest budget,
    the learning curve, and fine-tuning where run."""
    base = min((r["steps"] for r in rows), default=0)
    parts = [f"Per arm, at {base} steps:", arm_table(rows, base, flops), "By budget (the learning curve):", budget_table(rows)]
    if any(r.get("ft") for r in rows):
        parts += ["Fine-tuning:", ft_table(rows)]
    return "\n\n".join(parts) + "\n"


ANALYSES_MARKS = ("<!-- study analyses: generated by `python -m maehelpers study report --readme README.md` -->",
                  "<!-- end of generated study analyses -->")
README_MARKS = ("<!-- ablation tables: generated by `python -m maehelpers study report --readme README.md` -->",
                "<!-- end of generated ablation tables -->")


def replace_readme_tables(path, tables: str, marks=README_MARKS) -> None:
    """Put `tables` between two of the README's markers, leaving everything else as it is."""
    text = Path(path).read_text()
    start, end = (text.find(m) for m in marks)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no block between {marks[0]!r} and {marks[1]!r}")
    Path(path).write_text(text[:start + len(marks[0])] + "\n\n" + tables + "\n" + text[end:])


def matched_markdown(m) -> str:
    """The compute-matched reading as one line, with its intervals (empty without one)."""
    if not m or "linear" not in m:
        return ""
    shapes = [f"{fmt_interval(m['linear'])} read log-linearly between the two budgets around it ({m['linear']['n']} seeds)"]
    if "quadratic" in m:
        shapes.append(f"{fmt_interval(m['quadratic'])} through a quadratic in log steps ({m['quadratic']['n']} seeds)")
    return (f"- Compute-matched: `{m['arm']}` at {m['steps']} steps costs {m['flops_ratio']:.3f}x the training FLOPs of "
            f"`original`; against `original` at {m['original_steps_at_equal_flops']:.0f} steps, read on each seed's own "
            f"learning curve ({', '.join(map(str, m['budgets']))} steps), its k-NN difference is "
            f"{' and '.join(shapes)}; at equal steps on the same seeds {fmt_interval(m['at_equal_steps'])}. "
            "A reading of curves, not a run.\n")


def _diff_panel(ax, rows, arms, metric: str, steps: int) -> None:
    """One panel: each arm's paired differences to original on `metric` (mean pool filled, cls hollow),
    seeds as small dots, the mean with its 95 % t interval, the zero line and raw pixels' level."""
    for y, r in enumerate(arms):
        for pool, style in (("mean", dict(color="C0")), ("cls", dict(color="C1", mfc="none"))):
            p = r.get(f"{metric}_{pool}_vs_original")
            if p:
                off = -0.15 if pool == "mean" else 0.15
                ax.plot(p.get("diffs", []), [y + off] * len(p.get("diffs", [])), ".", color=style["color"],
                        alpha=0.35, ms=4)  # each seed's difference
                ax.errorbar(p["diff"], y + off, xerr=p["ci95"] or 0, fmt="o", ms=4, capsize=2,
                            label=f"{pool} pool" if y == 0 else None, **style)
    ax.axvline(0, color="k", lw=0.8)
    base, raw = (next((r for r in rows if r["steps"] == steps and r["arm"] == a), {}) for a in ("original", "raw_pixels"))
    if raw.get(f"{metric}_mean") is not None and base.get(f"{metric}_mean") is not None:
        ax.axvline(raw[f"{metric}_mean"] - base[f"{metric}_mean"], color="0.5", ls="--", lw=0.8, label="raw pixels")
    ax.grid(axis="x", alpha=0.3)
    ax.set_yticks(range(len(arms)), [f"{r['arm']} (n={len(r['seeds'])})" for r in arms], fontsize=7)
    ax.set_ylim(len(arms) - 0.5, -0.5)


def plot(rows_by_split: dict, path, steps: int) -> None:
    """The study's picture: per split (validation, held-out), each arm's paired differences to
    `original` on k-NN and the linear probe: what each arm changes, not absolute accuracies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = {split: [r for r in rows if r["steps"] == steps and r["arm"] not in ("original", "raw_pixels")
                      and r.get("knn_top1_mean_vs_original")] for split, rows in rows_by_split.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, sum(0.32 * len(a) + 1.0 for a in panels.values()) + 0.6),
                             dpi=100, squeeze=False, gridspec_kw={"height_ratios": [len(a) + 2 for a in panels.values()]})
    for row_axes, (split, arms) in zip(axes, panels.items()):
        for ax, metric in zip(row_axes, ("knn_top1", "lp_top1")):
            _diff_panel(ax, rows_by_split[split], arms, metric, steps)
            ax.set_title(f"{split} split: {'k-NN' if metric == 'knn_top1' else 'linear probe'}, top-1 minus "
                         "original (points)", fontsize=9)
        row_axes[1].set_yticklabels([])
        row_axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{steps} steps; small dots: each seed's paired difference; whiskers: 95 % t interval over seeds "
                 "(none with one seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_budget(rows, path) -> bool:
    """k-NN (mean pool, mean over seeds) against pretraining steps for every arm run at more than one
    budget, with the raw-pixel and random-encoder levels: does the gap grow with training?"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = curve_arms(rows)
    if not arms:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, arm in enumerate(arms):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["steps"])
        seeds = ", ".join(str(len(r["seeds"])) for r in mine)
        ax.plot([r["steps"] for r in mine], [r[HEADLINE] for r in mine], "o-", color=f"C{i}",
                label=f"{arm} (seeds: {seeds})")
    for name, style in (("raw_pixels", "--"), ("random", ":")):
        level = [r[HEADLINE] for r in rows if r["arm"] == name and r.get(HEADLINE) is not None]
        if level:
            ax.axhline(level[0], color="0.4", ls=style, lw=1, label=name.replace("_", " "))
    ax.set_xscale("log")
    budgets = sorted({r["steps"] for r in rows if r["arm"] in arms})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("pretraining steps (each its own run, cosine schedule to 0)")
    ax.set_ylabel("k-NN top-1, mean pool (%)")
    ax.set_title("mean over seeds (how many per budget in the legend)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- the held-out confirmation
PREREGISTRATION = ROOT / "benchmarks" / "preregistered.md"
FAMILY_1 = ("improved", "unif_umae_mean_100x", "unif_wi_mean_1x", "lowpass")   # each against original
FACTORIAL = {"original": (0, 0, 0), "curriculum": (1, 0, 0), "lap_interior_1x": (0, 1, 0), "unif_wi_mean_1x": (0, 0, 1),
             "improved_no_uniformity": (1, 1, 0), "improved_no_laplacian": (1, 0, 1),
             "improved_no_curriculum": (0, 1, 1), "improved": (1, 1, 1)}          # (curriculum, Laplacian, uniformity)
EFFECTS = {"C": (1, 0, 0), "L": (0, 1, 0), "U": (0, 0, 1), "CxL": (1, 1, 0), "CxU": (1, 0, 1), "LxU": (0, 1, 1),
           "CxLxU": (1, 1, 1)}
LEAVE_ONE_OUT = {"curriculum": "improved_no_curriculum", "Laplacian": "improved_no_laplacian",
                 "uniformity": "improved_no_uniformity"}


def registered_at(path=PREREGISTRATION) -> str:
    """The 'registered: YYYY-MM-DD HH:MM UTC' line of the preregistration, as 'YYYY-MM-DD HH:MM'."""
    line = next((x for x in Path(path).read_text().splitlines() if x.startswith("registered: ")), None)
    if line is None:
        raise ValueError(f"{path} has no 'registered: YYYY-MM-DD HH:MM UTC' line")
    return line.split(": ", 1)[1].replace(" UTC", "").strip()


def check_registered(records: dict, when: str) -> None:
    """Refuse held-out records dated before the registration: they could have shaped it."""
    early = sorted(f"{a}/s{s}/{st} ({r.get('date')})" for (a, s, st), r in records.items() if str(r.get("date")) < when)
    if early:
        raise ValueError(f"held-out records dated before the preregistration ({when} UTC): {', '.join(early[:5])}")


def read_correct(path, dataset, preset, steps: int) -> dict:
    """{(arm, seed): {metric: bool array}} of the held-out records' per-image correctness."""
    out = {}
    for r in read_jsonl(path):
        if r.get("dataset") == dataset and r.get("preset") == preset and r.get("steps") == steps:
            out[(r["arm"], r["seed"])] = {m: unpack_bits(r[m], r["n"]) for m in r if m.endswith(("_mean", "_cls"))}
    return out


def claim(p_holm, interval: dict) -> str:
    """The preregistered wording: 'detected' below a Holm-adjusted 0.05, else what the interval rules out."""
    if interval.get("ci95") is None:
        return "one seed: screening only"
    lo, hi = interval["diff"] - interval["ci95"], interval["diff"] + interval["ci95"]
    if p_holm is not None and p_holm < 0.05:
        return f"detected ({'+' if interval['diff'] > 0 else '-'})"
    return f"not detected; an effect larger than {max(abs(lo), abs(hi)):.2f} is ruled out (95 %)"


def family(comparisons: dict) -> dict:
    """{name: interval} -> the same with Holm-adjusted p and the claim, over the family."""
    adjusted = holm({k: v["p"] for k, v in comparisons.items() if v})
    return {k: {**v, "p_holm": adjusted.get(k), "claim": claim(adjusted.get(k), v)} for k, v in comparisons.items() if v}


def factorial(values: dict) -> dict:
    """values: {arm: {seed: value}} for the eight cells. Per seed with all eight, each effect's
    contrast (cells coded -1 / +1 per factor, the product over the effect's factors, sum / 4), and
    the 'sum of parts' contrast (improved - original) - sum over additions (addition - original)."""
    seeds = sorted(set.intersection(*(set(values.get(a, {})) for a in FACTORIAL))) if values else []
    per_effect = {e: [] for e in EFFECTS}
    parts = []
    for s in seeds:
        for e, factors in EFFECTS.items():
            per_effect[e].append(sum(math.prod(1 if lv else -1 for lv, f in zip(levels, factors) if f) * values[a][s]
                                     for a, levels in FACTORIAL.items()) / 4)
        o = values["original"][s]
        parts.append(values["improved"][s] - o - sum(values[a][s] - o for a in ("curriculum", "lap_interior_1x",
                                                                                  "unif_wi_mean_1x")))
    if not seeds:
        return {}
    return {"seeds": seeds, "effects": family({e: mean_interval(v) for e, v in per_effect.items()}),
            "sum_less_than_parts": mean_interval(parts)}


def heldout_analysis(records: dict, correct: dict, steps: int = 500) -> dict:
    """The registered analysis of the held-out records at `steps`, for the headline and the probe."""
    out = {}
    for m in (HEADLINE, "lp_top1_mean"):
        values = {}
        for (a, s, st), r in records.items():
            if st == steps and r.get(m) is not None:
                values.setdefault(a, {})[s] = r[m]
        base, bits = values.get("original", {}), lambda a: {s: c[m] for (x, s), c in correct.items() if x == a and m in c}
        vs_original = family({a: paired(base, values[a]) for a in FAMILY_1 if a in values})
        for a, row in vs_original.items():
            row["bootstrap95"] = bootstrap_paired(bits("original"), bits(a))
        loo = {add: paired(values[arm], values.get("improved", {})) for add, arm in LEAVE_ONE_OUT.items() if arm in values}
        out[m] = {"vs_original": vs_original, "factorial": factorial(values),
                  "leave_one_out": {k: v for k, v in loo.items() if v}, "seeds": {a: sorted(v) for a, v in values.items()}}
    return out


def fmt_interval(p: dict) -> str:
    if p.get("ci95") is None:
        return f"{p['diff']:+.2f} (1 seed)"
    return f"{p['diff']:+.2f} [{p['diff'] - p['ci95']:+.2f}, {p['diff'] + p['ci95']:+.2f}]"


METRIC_NAMES = {HEADLINE: "k-NN top-1, mean pool (primary)", "lp_top1_mean": "linear probe top-1, mean pool (secondary)"}


HYPOTHESES = {"improved": "H1, the improved variant", "unif_umae_mean_100x": "H2, the arm that ranked first (U-MAE 100x)",
              "unif_wi_mean_1x": "H3, Wang-Isola uniformity 1x alone", "lowpass": "H4, the low-pass target"}
FACTORS = {"C": "the curriculum", "L": "the Laplacian loss", "U": "the uniformity term"}


def _stated(v: dict) -> str:
    """One comparison as the registration words it: estimate, interval, Holm p, claim."""
    return f"{fmt_interval(v)} (Holm p {_p(v.get('p_holm'))}): {v['claim']}"


def heldout_verdict(analysis: dict) -> list[str]:
    """The registered analysis as the README's verdict, one line per question, every number with its
    interval and its Holm correction, all on the held-out split."""
    k, lp = analysis[HEADLINE], analysis["lp_top1_mean"]
    lines = []
    for arm, name in HYPOTHESES.items():
        if arm in k["vs_original"]:
            v, b = k["vs_original"][arm], k["vs_original"][arm].get("bootstrap95")
            lines.append(f"- **{name}**, against `original` over {v['n']} seeds: k-NN {_stated(v)}"
                         + (f"; over test images [{b[0]:+.2f}, {b[1]:+.2f}]" if b else "")
                         + (f". Linear probe (family 1b): {_stated(lp['vs_original'][arm])}." if arm in lp["vs_original"] else "."))
    f = k["factorial"]
    if f:
        mains = "; ".join(f"{FACTORS[e]} {_stated(f['effects'][e])}" for e in FACTORS)
        inter = [e for e in f["effects"] if e not in FACTORS]
        found = [e for e in inter if f["effects"][e]["claim"].startswith("detected")]
        widest = max(abs(f["effects"][e]["diff"]) + (f["effects"][e]["ci95"] or 0) for e in inter)
        lines.append(f"- **Inside `improved`** (the 2 x 2 x 2 factorial, {len(f['seeds'])} seeds, k-NN, Holm over 7): "
                     f"main effects: {mains}. Interactions: "
                     + ("detected for " + "; ".join(f"{e} {_stated(f['effects'][e])}" for e in found) if found else
                        f"none detected (an interaction larger than {widest:.2f} is ruled out for each, 95 %)")
                     + f". Is the sum less than its parts? {fmt_interval(f['sum_less_than_parts'])} (not tested again).")
    return lines


def heldout_markdown(analysis: dict, registered: str) -> str:
    lines = [f"**Held-out confirmation** (test images 5,000-9,999; fresh seeds; registered {registered} UTC).", ""]
    for m, a in analysis.items():
        lines += [f"*{METRIC_NAMES.get(m, m)}*. Family 1, against original (Holm over the arms present):", "",
                  table(["arm", "seeds", "Δ [95 % t over seeds]", "bootstrap over images (95 %)", "p", "p (Holm)",
                         "MDE", "claim"],
                        [[k, str(v["n"]), fmt_interval(v),
                          "" if not v.get("bootstrap95") else f"[{v['bootstrap95'][0]:+.2f}, {v['bootstrap95'][1]:+.2f}]",
                          _p(v.get("p")), _p(v.get("p_holm")), "" if v.get("mde") is None else f"{v['mde']:.2f}", v["claim"]]
                         for k, v in a["vs_original"].items()]), ""]
        f = a["factorial"]
        if f:
            lines += [f"Family 2, the 2 x 2 x 2 factorial (seeds {f['seeds']}; Holm over 7):", "",
                      table(["effect", "estimate [95 %]", "p", "p (Holm)", "claim"],
                            [[k, fmt_interval(v), _p(v.get("p")), _p(v.get("p_holm")), v["claim"]]
                             for k, v in f["effects"].items()]), "",
                      f"Sum less than its parts? (improved - original) - Σ(addition - original): "
                      f"{fmt_interval(f['sum_less_than_parts'])}", ""]
        if a["leave_one_out"]:
            lines += ["Leave-one-out (improved minus improved without the addition; descriptive):", "",
                      table(["addition", "seeds", "what it adds inside improved [95 %]"],
                            [[k, str(v["n"]), fmt_interval(v)] for k, v in a["leave_one_out"].items()]), ""]
    return "\n".join(lines) + "\n"


def _p(p) -> str:
    return "" if p is None else f"{p:.3f}" if p >= 0.001 else "<0.001"


# ----------------------------------------------------------------------------- exploratory analyses (declared)
def learning_curve_slope(records: dict, arm: str = "unif_umae_mean_100x") -> dict | None:
    """Per seed run at every budget of `arm`, the OLS slope of its k-NN gap to original against
    log2(steps): points per doubling of training, with a t interval over seeds."""
    gaps = {}
    for (a, s, st), r in records.items():
        o = records.get(("original", s, st))
        if a == arm and o and r.get(HEADLINE) is not None and o.get(HEADLINE) is not None:
            gaps.setdefault(s, []).append((math.log2(st), r[HEADLINE] - o[HEADLINE]))
    budgets = max((len(v) for v in gaps.values()), default=0)
    return slope({s: v for s, v in gaps.items() if len(v) == budgets}) if budgets > 1 else None


def still_rising(records: dict, arm: str, lo: int = 2000, hi: int = 4000) -> dict | None:
    """Paired over seeds: the arm's k-NN at `hi` steps minus at `lo`."""
    at = lambda st: {s: r[HEADLINE] for (a, s, x), r in records.items() if a == arm and x == st and r.get(HEADLINE) is not None}  # noqa: E731
    return paired(at(lo), at(hi))


def winners_curse(records: dict, steps: int = 500, metric: str = HEADLINE) -> dict | None:
    """The arm ranked first (on the headline) on the screening seed (0), measured on `metric`
    without that seed, with its p-value and a Bonferroni (= Holm for the smallest p) correction over
    every arm that was screened."""
    screened = sorted({a for (a, s, st) in records if st == steps and s == 0 and a in ARMS and a != "original"})
    ranked = sorted(screened, key=lambda a: -records[(a, 0, steps)].get(HEADLINE, -1))
    if not ranked:
        return None
    best = ranked[0]
    at = lambda a: {s: r[metric] for (x, s, st), r in records.items() if x == a and st == steps and s != 0  # noqa: E731
                    and r.get(metric) is not None}
    p = paired(at("original"), at(best))
    if not p or p["p"] is None:
        return None
    return {"arm": best, "screened": len(screened), **p, "p_bonferroni": min(1.0, p["p"] * len(screened))}


def analyses_markdown(records: dict, args) -> str:
    """The validation records' exploratory analyses declared in benchmarks/preregistered.md, as lines
    (args: the study's dataset and preset, for the compute-matched reading's FLOPs)."""
    lines = []
    for metric, name in ((HEADLINE, "k-NN"), ("lp_top1_mean", "linear-probe")):
        w = winners_curse(records, metric=metric)
        if w:
            lines.append(f"- Winner's curse: `{w['arm']}` was ranked first on seed 0 among {w['screened']} screened "
                         f"arms; without seed 0 its {name} gain is {fmt_interval(w)} over {w['n']} seeds (p "
                         f"{_p(w['p'])}; {_p(w['p_bonferroni'])} after correcting for the {w['screened']} arms screened).")
    sl = learning_curve_slope(records)
    if sl and sl.get("ci95") is not None:
        hi = abs(sl["diff"]) + sl["ci95"]
        lines.append(f"- Learning curve: the U-MAE arm's k-NN gap changes by {fmt_interval(sl)} points per doubling of "
                     f"the steps (OLS slope against log2 steps per seed, {sl['n']} seeds at 500, 2000 and 4000): "
                     f"a growth or shrinkage faster than {hi:.2f} points per doubling is ruled out (95 %).")
    for arm in ("original", "unif_umae_mean_100x"):
        r = still_rising(records, arm)
        if r and r.get("ci95") is not None:
            lines.append(f"- Still rising? `{arm}` at 4000 minus 2000 steps: {fmt_interval(r)} k-NN over {r['n']} "
                         f"paired seeds (p {_p(r['p'])}).")
    matched = matched_markdown(compute_matched(records, args))
    return "\n".join(lines + ([matched.rstrip()] if matched else [])) + "\n"


def seeds_table(rows, half_width: float = 0.5, effect: float | None = None) -> str:
    """For every arm with at least 3 paired seeds: the paired spread and the seeds a target needs."""
    lines = []
    for r in rows:
        for m in (HEADLINE, "lp_top1_mean"):
            p = r.get(f"{m}_vs_original")
            if p and p["n"] >= 3:
                need = seeds_needed(p["sd"], half_width=None if effect else half_width, effect=effect)
                lines.append([r["arm"], str(r["steps"]), m, str(p["n"]), f"{p['sd']:.2f}", f"{p['ci95']:.2f}", str(need)])
    target = f"an effect of {effect} (5 %, power 80 %)" if effect else f"a 95 % half-width of {half_width}"
    return table(["arm", "steps", "metric", "seeds", "sd of paired Δ", "95 % half-width now", f"seeds for {target}"], lines)


def seeds_text(args) -> str:
    rows = summarise(read_records(Path(args.records), args.dataset, args.preset))
    return seeds_table(rows, args.half_width or 0.5, args.effect)


HELDOUT_MARKS = ("<!-- held-out confirmation: generated by `python -m maehelpers study report --readme README.md` -->",
                 "<!-- end of generated held-out confirmation -->")


def heldout_progress(held: dict, steps: int = 500) -> tuple[int, int]:
    """(registered held-out runs recorded, registered runs in all)."""
    return (sum((a, s, steps) in held for a in HELDOUT_ARMS for s in HELDOUT_SEEDS),
            len(HELDOUT_ARMS) * len(HELDOUT_SEEDS))


def heldout_report(args, interim: bool = False) -> tuple[str, dict | None]:
    """The held-out stage as markdown: its per-arm table and the registered analysis once all registered
    runs are in (or with `interim`), else how many are; and the analysis itself (None before)."""
    held = read_records(Path(args.records), args.dataset, args.preset, "heldout")
    if not held:
        return "", None
    done, total = heldout_progress(held)
    rows = summarise(held)
    table_md = f"Per arm, held-out split, 500 steps:\n\n{arm_table(rows, 500, flops_ratios(rows, args))}\n\n"
    if done < total and not interim:
        return (f"Held-out stage: {done} of {total} registered runs recorded; the registered analysis is reported when "
                "all are in (`report --interim` shows it before).\n"), None
    when = registered_at()
    check_registered(held, when)
    analysis = heldout_analysis(held, read_correct(correct_path(args.records), args.dataset, args.preset, 500))
    note = "" if done == total else f"**Interim: {done} of {total} registered runs; no claim.**\n\n"
    verdict = (f"**Verdict on the held-out split** (registered {when} UTC; test images 5,000-9,999; seeds "
               f"{HELDOUT_SEEDS[0]}-{HELDOUT_SEEDS[-1]}; effects in points of top-1, 95 % intervals):\n\n"
               + "\n".join(heldout_verdict(analysis)) + "\n\n")
    return note + verdict + table_md + heldout_markdown(analysis, when), analysis


def report(args) -> Path:
    records = read_records(Path(args.records), args.dataset, args.preset)
    rows = summarise(records)
    stem = Path(args.out) / f"ablation_{args.dataset}{'' if args.preset == 'ablation' else '_' + args.preset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    steps = sorted({r["steps"] for r in rows if r["steps"]})
    config = arm_config("original", args, 0, steps[0] if steps else 500)
    matched = compute_matched(records, args)
    flops = flops_ratios([r for r in rows if r["steps"] == (steps[0] if steps else 500)], args)
    save_json({"dataset": args.dataset, "preset": args.preset, "headline": HEADLINE, "rows": rows,
               "records": len(records), "config_of_original": to_dict(config), "compute_matched": matched,
               "flops_vs_original": {f"{a}/{st}": v for (a, st), v in flops.items()},
               "command": "python -m maehelpers study report"}, stem.with_suffix(".json"))
    tables = readme_tables(rows, flops)
    held = read_records(Path(args.records), args.dataset, args.preset, "heldout")
    heldout_md, analysis = heldout_report(args, getattr(args, "interim", False))
    if analysis:
        Path(f"{stem}_heldout.json").write_text(json.dumps(analysis, indent=1, default=float) + "\n")
    stem.with_suffix(".md").write_text(markdown(rows) + "\n" + matched_markdown(matched) + "\n" + tables + "\n" + heldout_md)
    if args.readme:
        replace_readme_tables(args.readme, tables)
        replace_readme_tables(args.readme, analyses_markdown(records, args), ANALYSES_MARKS)
        replace_readme_tables(args.readme, heldout_report(args)[0], HELDOUT_MARKS)
    done, total = heldout_progress(held)
    held_name = "held-out" + ("" if done == total else f" (interim, {done} of {total} runs)")
    for st in steps:
        plot({"validation": rows, held_name: summarise(held) if held else []}, stem.parent / f"{stem.name}_{st}.png", st)
    plot_budget(rows, stem.parent / f"{stem.name}_budget.png")
    plot_health({split: read_records(Path(args.records), args.dataset, args.preset, split) for split in EVAL_SPLITS},
                stem.parent / f"{stem.name}_health.png")
    print(stem.with_suffix(".md").read_text())
    return stem


def health_pairs(records: dict, steps: int = 500) -> dict:
    """{arm: [(change in effective rank, change in k-NN), one per seed]}: each arm minus `original` at
    the same seed, for the runs whose records hold the feature health."""
    base = {s: r for (a, s, st), r in records.items() if a == "original" and st == steps and "effective_rank" in r}
    out = {}
    for (arm, seed, st), r in sorted(records.items()):
        if arm != "original" and st == steps and "effective_rank" in r and seed in base and r.get(HEADLINE) is not None:
            out.setdefault(arm, []).append((r["effective_rank"] - base[seed]["effective_rank"],
                                            r[HEADLINE] - base[seed][HEADLINE]))
    return out


def plot_health(records_by_split: dict, path) -> bool:
    """Does a gain come with a higher effective rank? Per split, each (arm, seed) as a point: change in
    the final encoder's effective rank against change in k-NN, both paired with `original`."""
    import matplotlib.pyplot as plt
    pairs = {split: health_pairs(r) for split, r in records_by_split.items()}
    if not any(pairs.values()):
        return False
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
    for ax, (split, by_arm) in zip(axes[0], pairs.items()):
        for i, (arm, pts) in enumerate(sorted(by_arm.items())):
            ax.plot(*zip(*pts), "o", color=f"C{i % 10}", ms=5, label=arm)
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("effective rank, arm minus original (same seed)")
        ax.set_ylabel("k-NN top-1, mean pool, arm minus original")
        ax.set_title(f"{split} split: does a gain come with a higher rank?", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

