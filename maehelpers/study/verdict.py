"""What the study's committed records say, for notebook 05: is one run's difference bigger than the
noise, and the study's current verdict in three lines.

Everything is read from the records in the repository (benchmarks/results/ablation_runs.jsonl, which
a clone or the Colab install carries along); nothing is recomputed. The study ran on Fashion-MNIST
at the `ablation` preset for 500 steps; at another setting its spread is a guide, not a measurement.
"""
import statistics

import matplotlib.pyplot as plt

from ..paths import RESULTS
from .arms import HEADLINE
from .heldout import heldout_analysis, heldout_progress
from .records import correct_path, read_correct, read_records
from .stats import paired, seeds_needed
from .tables import _p, fmt_interval


STUDY = {"dataset": "fashion_mnist", "preset": "ablation", "steps": 500}
SPLITS = {"validation": "validation (exploratory)", "heldout": "held-out (preregistered)"}
Z95 = 1.96  # a single difference lies within +-1.96 sd of its mean 95 % of the time


def study_paired(arm: str, split: str = "validation", metric: str = HEADLINE, records=None) -> dict | None:
    """The study's paired differences arm - original (stats.paired) on one split."""
    found = read_records(records, STUDY["dataset"], STUDY["preset"], split)
    by = lambda name: {s: r[metric] for (a, s, st), r in found.items()  # noqa: E731
                       if a == name and st == STUDY["steps"] and r.get(metric) is not None}
    return paired(by("original"), by(arm))


def noise_check(yours: float, dataset: str, preset: str, arm: str = "improved", records=None) -> dict:
    """Your difference (arm - original, one seed, in points of the headline) against the spread of
    the study's per-seed differences for the same arm (both splits). Returns the numbers and the
    sentence that says whether one seed can tell."""
    by_split = {s: study_paired(arm, s, records=records) for s in SPLITS}
    diffs = [d for p in by_split.values() if p for d in p["diffs"]]
    if len(diffs) < 2:
        return {"by_split": by_split, "text": f"The study has fewer than two seeds of `{arm}`: no spread to compare with."}
    sd = statistics.stdev(diffs)
    band = Z95 * sd
    inside = abs(yours) < band
    text = (f"Your difference, {yours:+.2f} points, against {len(diffs)} paired seeds of the study (sd {sd:.2f}): "
            f"one seed's difference is noise up to about ±{band:.1f} points, so yours is "
            + ("inside that band and one seed cannot tell it from noise. " if inside else
               "outside that band: a hint worth confirming, and one seed is screening only. ")
            + (f"An interval that excludes 0 for an effect of {abs(yours):.2f} needs about "
               f"{seeds_needed(sd, effect=abs(yours))} paired seeds (80 % power)." if yours else ""))
    if (dataset, preset) != (STUDY["dataset"], STUDY["preset"]):
        text = (f"The study ran on {STUDY['dataset']} with preset {STUDY['preset']}, not on {dataset} with {preset}: "
                "its spread is a guide only. ") + text
    return {"by_split": by_split, "sd": sd, "band": band, "inside": inside, "yours": yours, "text": text}


def draw_noise(check: dict, arm: str = "improved"):
    """Each of the study's seeds as a dot per split, the noise band of one seed, your difference as a line."""
    fig, ax = plt.subplots(figsize=(7, 2.2))
    rows = [(s, p) for s, p in check["by_split"].items() if p]
    for y, (split, p) in enumerate(rows):
        ax.plot(p["diffs"], [y] * len(p["diffs"]), "o", color="0.5", ms=6)
    if "band" in check:
        ax.axvspan(-check["band"], check["band"], color="C0", alpha=0.12, label="one seed's noise (±1.96 sd)")
        ax.axvline(check["yours"], color="C3", lw=2, label=f"yours: {check['yours']:+.2f}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [SPLITS[s] for s, _ in rows])
    ax.set_xlabel(f"{arm} minus original, k-NN top-1 on the mean pool (points), one dot per seed")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def verdict(records=None) -> dict:
    """The study's current verdict in three lines, from the records: the improved variant, the arm that
    ranked first, and the state of the preregistered held-out confirmation."""
    arms = {"improved": "The improved variant", "unif_umae_mean_100x": "The arm that ranked first (U-MAE uniformity)"}
    held = read_records(records, STUDY["dataset"], STUDY["preset"], "heldout")
    done, total = heldout_progress(held, STUDY["steps"])
    registered = {}
    if done >= total:  # the registered analysis: Holm over the four confirmatory comparisons
        path = records or RESULTS / "ablation_runs.jsonl"
        registered = heldout_analysis(held, read_correct(correct_path(path), STUDY["dataset"], STUDY["preset"],
                                                         STUDY["steps"]))[HEADLINE]["vs_original"]
    wording = {"validation": lambda arm, p: (f"exploratory (nominal p {_p(p['p'])}, uncorrected, on the images "
                                             "that chose the arms)" if p.get("p") is not None else "screening only"),
               "heldout": lambda arm, p: ("no claim until all runs are in" if not registered else
                                          f"{registered[arm]['claim']} (Holm p {_p(registered[arm]['p_holm'])}; with the "
                                          f"test images as a sample too {fmt_interval(registered[arm]['combined'])})")}
    result, lines = {}, []
    for arm, label in arms.items():
        result[arm] = {s: study_paired(arm, s, records=records) for s in SPLITS}
        parts = [f"{SPLITS[s]}{'' if done >= total or s == 'validation' else ', interim'} {p['diff']:+.2f} ± "
                 f"{p['ci95'] or 0:.2f} over {p['n']} seeds: {wording[s](arm, p)}" for s, p in result[arm].items() if p]
        lines.append(f"{label}, k-NN on the mean pool vs original: " + "; ".join(parts) + ".")
    lines.append(f"The preregistered held-out confirmation has {done} of its {total} runs; "
                 + ("the held-out claims above are its registered, Holm-corrected ones; the rest is in "
                    "docs/study.md." if done >= total else
                    "until all are in, no held-out difference above is a verdict (claims use the registered "
                    "analysis only)."))
    return {"lines": lines, "paired": result, "heldout_done": done, "heldout_total": total}


def draw_verdict(v: dict):
    """The paired differences behind the verdict: per arm and split, each seed a dot, the mean with its
    95 % interval as a bar (viz.draw_paired's layout)."""
    from ..viz import draw_paired
    interim = v["heldout_done"] < v["heldout_total"]
    label = {**SPLITS, "heldout": SPLITS["heldout"] + (f", interim ({v['heldout_done']} of {v['heldout_total']} runs)"
                                                      if interim else "")}
    return draw_paired({arm: {label[s]: p for s, p in splits.items()} for arm, splits in v["paired"].items()})
