"""The validation records' analyses (exploratory: those images chose what the held-out stage tests).
Declared in registration 1: the learning curve's slope, "still rising", and the winner's curse of
the screening. Added since, and said so: raw pixels against the longer runs, and fine-tuning paired
by seed (its budget was chosen on seed 0, which is among these seeds)."""
import math

from .arms import ARMS, HEADLINE
from .flops import compute_matched
from .stats import mean_interval, paired, slope
from .tables import _p, fmt_interval, matched_markdown


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


def winners_curse(records: dict, steps: int = 500, metric: str = HEADLINE, first: dict | None = None) -> dict | None:
    """The arm ranked first (on the headline) on the screening seed (0), measured on `metric`
    without that seed, with its p-value and a Bonferroni (= Holm for the smallest p) correction over
    the arms screened when it was chosen. first: {(arm, seed, steps): date of the record's first
    line}; with it, an arm first run after the winner's confirmation began (its first record at
    another seed) was not among those it was chosen from, and is left out of the count."""
    screened = {a for (a, s, st) in records if st == steps and s == 0 and a in ARMS and a != "original"}
    ranked = sorted(screened, key=lambda a: -records[(a, 0, steps)].get(HEADLINE, -1))
    if not ranked:
        return None
    best = ranked[0]
    if first:
        chosen = min((d for (a, s, st), d in first.items() if a == best and st == steps and s != 0), default=None)
        if chosen:
            screened = {a for a in screened if first.get((a, 0, steps), "") <= chosen}
    at = lambda a: {s: r[metric] for (x, s, st), r in records.items() if x == a and st == steps and s != 0  # noqa: E731
                    and r.get(metric) is not None}
    p = paired(at("original"), at(best))
    if not p or p["p"] is None:
        return None
    return {"arm": best, "screened": len(screened), **p, "p_bonferroni": min(1.0, p["p"] * len(screened))}


def raw_pixels_short(records: dict, arm: str, steps: int, metric: str) -> dict | None:
    """Raw pixels minus the arm at `steps`, per seed (raw pixels: their one record, which has no seed
    on the validation split): how far the encoder falls short, with a t interval over its seeds."""
    raw = next((r.get(metric) for (a, s, st), r in records.items() if a == "raw_pixels" and r.get(metric) is not None), None)
    mine = {s: r[metric] for (a, s, st), r in records.items() if a == arm and st == steps and r.get(metric) is not None}
    if raw is None or not mine:
        return None
    return {**mean_interval([raw - v for v in mine.values()]), "raw": raw}


def fine_tuning_pairs(records: dict, steps: int = 500, epochs: int = 20) -> dict:
    """Fine-tuning at `epochs`, paired by seed: the U-MAE arm and scratch against `original`, the U-MAE
    arm against scratch, and the U-MAE arm without seed 0 (on which the budget was chosen)."""
    ft = lambda a: {s: r["ft_by_epochs"][epochs] for (x, s, st), r in records.items()  # noqa: E731
                    if x == a and st == steps and epochs in r.get("ft_by_epochs", {})}
    umae, orig, scratch = ft("unif_umae_mean_100x"), ft("original"), ft("random")
    return {"umae_vs_original": paired(orig, umae), "scratch_vs_original": paired(orig, scratch),
            "umae_vs_scratch": paired(scratch, umae),
            "umae_vs_original_without_0": paired({s: v for s, v in orig.items() if s}, {s: v for s, v in umae.items() if s})}


def analyses_markdown(records: dict, settings, first: dict | None = None) -> str:
    """The validation records' exploratory analyses, as lines (settings: the study's dataset and
    preset, for the compute-matched reading's FLOPs; first: the records' first dates)."""
    lines = []
    for metric, name in ((HEADLINE, "k-NN"), ("lp_top1_mean", "linear-probe")):
        w = winners_curse(records, metric=metric, first=first)
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
    for metric, name in ((HEADLINE, "k-NN"), ("lp_top1_mean", "linear probe")):
        parts = [(arm, raw_pixels_short(records, arm, 4000, metric)) for arm in ("unif_umae_mean_100x", "original")]
        parts = [(a, r) for a, r in parts if r and r.get("ci95") is not None]
        if parts:
            said = "; ".join(f"`{a}` {fmt_interval(r)} ({'detected' if r['p'] < 0.05 else 'not detected'}, p {_p(r['p'])})"
                             for a, r in parts)
            lines.append(f"- Raw pixels ({parts[0][1]['raw']:.2f}, one record) minus the 4000-step encoders on the {name}, "
                         f"over {parts[0][1]['n']} seeds: {said}.")
    f = fine_tuning_pairs(records)
    if f["umae_vs_original"] and f["umae_vs_original"].get("ci95") is not None:
        u, w0, sc, us = (f[k] for k in ("umae_vs_original", "umae_vs_original_without_0", "scratch_vs_original",
                                        "umae_vs_scratch"))
        lo_adv = -(sc["diff"] - sc["ci95"])   # the largest pretraining advantage the interval leaves
        lines.append(f"- Fine-tuning at 20 epochs, paired by seed (its budget was chosen on seed 0, which is among "
                     f"these {u['n']} seeds): `unif_umae_mean_100x` minus `original` {fmt_interval(u)} (nominal p "
                     f"{_p(u['p'])}, uncorrected" + (f"; without seed 0: {fmt_interval(w0)} over {w0['n']} seeds"
                                                     if w0 and w0.get("ci95") is not None else
                                                     f"; without seed 0: {fmt_interval(w0)}" if w0 else "")
                     + f"); scratch minus `original` {fmt_interval(sc)}: no advantage of pretraining detected, one "
                       f"above {lo_adv:.1f} points is ruled out; `unif_umae_mean_100x` minus scratch {fmt_interval(us)}.")
    matched = matched_markdown(compute_matched(records, settings))
    return "\n".join(lines + ([matched.rstrip()] if matched else [])) + "\n"
