"""The study's tables: per arm and budget, mean and sd over seeds and the paired difference to
`original`, in markdown for the docs."""
import statistics

from .arms import ARMS, BASELINES, HEADLINE, METRICS
from .stats import paired, seeds_needed


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
    """The docs' study tables (docs/study.md), generated from the summary rows: every arm at the
    shortest budget,
    the learning curve, and fine-tuning where run."""
    base = min((r["steps"] for r in rows), default=0)
    parts = [f"Per arm, at {base} steps:", arm_table(rows, base, flops), "By budget (the learning curve):", budget_table(rows)]
    if any(r.get("ft") for r in rows):
        parts += ["Fine-tuning:", ft_table(rows)]
    return "\n\n".join(parts) + "\n"


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


def fmt_interval(p: dict) -> str:
    if p.get("ci95") is None:
        return f"{p['diff']:+.2f} (1 seed)"
    return f"{p['diff']:+.2f} [{p['diff'] - p['ci95']:+.2f}, {p['diff'] + p['ci95']:+.2f}]"


def _p(p) -> str:
    return "" if p is None else f"{p:.3f}" if p >= 0.001 else "<0.001"
