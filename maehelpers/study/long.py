"""The long-budget stage (registration 2 in benchmarks/preregistered.md), analysed as registered:
where MAE starts to work, and whether the gains of the held-out stage survive there.

Seven hypotheses (L1-L7), one Holm family. Each is a paired contrast over seeds 200-202 on the
held-out images, tested with the combined interval: seeds and test images both as samples
(stats.combined). The seed interval, conditional on these images, is shown beside it. The k-NN
monitor's slope over the last doubling (8,000 to 16,000 steps) is reported where MAE does not pass
raw pixels. An arm that ends above the best arm fixed in advance is named, untested. Records
first written before the registration are refused.
"""
import statistics
from pathlib import Path

from .arms import HEADLINE, LONG_ARMS, LONG_SEEDS, LONG_STEPS
from .heldout import claim, contrast, values_and_bits
from .records import check_registered, correct_path, first_dates, read_correct, read_records, registered_at
from .stats import holm, mean_interval
from .tables import _p, fmt_interval, table

BEST = "unif_umae_mean_100x"   # fixed in the registration: the arm every earlier stage ranked first
PROBE = "lp_top1_mean"
HYPOTHESES = {  # name: (what, metric, contrast over arms)
    "L1": ("`improved` minus `original`", HEADLINE, {"improved": 1, "original": -1}),
    "L2": ("`unif_umae_mean_100x` minus `original`", HEADLINE, {BEST: 1, "original": -1}),
    "L3": ("`original` minus raw pixels", HEADLINE, {"original": 1, "raw_pixels": -1}),
    "L4": ("`original` minus raw pixels", PROBE, {"original": 1, "raw_pixels": -1}),
    "L5": ("the best arm (`unif_umae_mean_100x`) minus raw pixels", HEADLINE, {BEST: 1, "raw_pixels": -1}),
    "L6": ("the best arm (`unif_umae_mean_100x`) minus raw pixels", PROBE, {BEST: 1, "raw_pixels": -1}),
    "L7": ("fine-tuned `original` minus fine-tuned scratch", "ft_top1", {"original": 1, "random": -1}),
}
DESCRIPTIVE = {
    "L1 on the probe": (PROBE, {"improved": 1, "original": -1}),
    "L2 on the probe": (PROBE, {BEST: 1, "original": -1}),
    "L1 fine-tuned": ("ft_top1", {"improved": 1, "original": -1}),
    "L2 fine-tuned": ("ft_top1", {BEST: 1, "original": -1}),
    "`improved` fine-tuned minus scratch": ("ft_top1", {"improved": 1, "random": -1}),
    "`unif_umae_mean_100x` fine-tuned minus scratch": ("ft_top1", {BEST: 1, "random": -1}),
    "L1 on the cls token (k-NN)": ("knn_top1_cls", {"improved": 1, "original": -1}),
    "L2 on the cls token (k-NN)": ("knn_top1_cls", {BEST: 1, "original": -1}),
}
METRIC_NAMES = {HEADLINE: "k-NN", PROBE: "probe", "ft_top1": "fine-tuning", "knn_top1_cls": "k-NN, cls token"}


def progress(held: dict) -> tuple[int, int]:
    """(registered records of the stage that are in, all of them): each arm fine-tuned, scratch, raw pixels."""
    keys = [(a, s, LONG_STEPS) for s in LONG_SEEDS for a in (*LONG_ARMS, "random", "raw_pixels")]
    done = sum(k in held and (k[0] == "raw_pixels" or held[k].get("ft_top1") is not None) for k in keys)
    return done, len(keys)


def analysis(held: dict, correct: dict) -> dict:
    """Every registered hypothesis (combined interval, Holm over the seven on its p), the descriptive
    comparisons, and the monitor's slope over the last doubling."""
    tested = {}
    for name, (_, metric, coefs) in HYPOTHESES.items():
        values, bits = values_and_bits(held, correct, metric, LONG_STEPS)
        c = contrast(values, bits, coefs) if all(a in values for a in coefs) else None
        if c and c.get("combined"):
            tested[name] = c
    adjusted = holm({k: v["combined"]["p"] for k, v in tested.items()})
    for k, v in tested.items():
        v.update(p_holm=adjusted[k], claim=claim(adjusted[k], v["combined"]))
    described = {}
    for name, (metric, coefs) in DESCRIPTIVE.items():
        values, bits = values_and_bits(held, correct, metric, LONG_STEPS)
        described[name] = contrast(values, bits, coefs) if all(a in values for a in coefs) else None
    knn = values_and_bits(held, correct, HEADLINE, LONG_STEPS)[0]
    return {"hypotheses": tested, "descriptive": {k: v for k, v in described.items() if v},
            "slope": {a: last_doubling(held, a) for a in LONG_ARMS},
            "knn_means": {a: statistics.fmean(knn[a].values()) for a in LONG_ARMS if a in knn}}


def last_doubling(held: dict, arm: str, lo: int = 8000, hi: int = LONG_STEPS) -> dict | None:
    """Per seed, the monitor's k-NN (mean pool, validation images) at `hi` minus at `lo` steps: the
    gain of the last doubling, with a t interval over seeds."""
    gains = []
    for (a, s, st), r in held.items():
        curve = {p[0]: p[1] for p in r.get("monitor") or []}
        if a == arm and st == LONG_STEPS and lo in curve and hi in curve:
            gains.append(curve[hi] - curve[lo])
    return {**mean_interval(gains), "diffs": gains} if gains else None


def passes(v: dict | None) -> str:
    """'passes', 'falls short' or 'not resolved': a detected positive, a detected negative, neither."""
    if not v:
        return "not measured"
    return ("passes" if v["combined"]["diff"] > 0 else "falls short") if v["claim"].startswith("detected") else "not resolved"


def _it(v: dict) -> str:
    """passes() as the verb of a sentence whose subject is the arm."""
    return "is not resolved" if passes(v) == "not resolved" else passes(v)


def shown(v: dict) -> str:
    """The interval of a pass-or-fall-short question, with its Holm p where it is not resolved (an
    interval that excludes 0 is not a detection once the family is corrected; say why)."""
    return fmt_interval(v["combined"]) + (f", Holm p {_p(v['p_holm'])}" if passes(v) == "not resolved" else "")


def answer(v: dict, negative: str, neither: str = "not detected") -> str:
    """The front page's short answer to a registered question: yes, `negative` (both detected), or `neither`."""
    return {"passes": "yes, detected", "falls short": f"no: {negative} (detected)"}.get(passes(v), neither)


def largest_advantage(v: dict) -> float:
    """The largest advantage that a not-detected difference leaves open: the combined interval's upper end."""
    return max(v["combined"]["diff"] + v["combined"]["ci95"], 0)


def verdict(a: dict) -> list[str]:
    """The registered questions, one plain sentence each, with the numbers behind them."""
    h, lines = a["hypotheses"], []
    for arm, k_name, p_name in (("`original`", "L3", "L4"), (f"the best arm (`{BEST}`)", "L5", "L6")):
        if k_name in h and p_name in h:
            lines.append(f"- **Does {arm} pass raw pixels at 16,000 steps?** On k-NN it {_it(h[k_name])} "
                         f"({shown(h[k_name])}); on the linear probe it {_it(h[p_name])} ({shown(h[p_name])}).")
    if "L3" in h and passes(h["L3"]) != "passes":
        s = a["slope"].get("original")
        how = "does not pass" if passes(h["L3"]) == "falls short" else "is not shown to pass"
        lines.append(f"- **The paper's MAE (`original`) {how} raw pixels on k-NN within 16,000 steps.** The monitor's last doubling "
                     "(8,000 to 16,000 steps) added " + (f"{fmt_interval(s)} k-NN points (validation images, "
                                                         f"{s['n']} seeds)." if s else "an unmeasured amount."))
    if "L7" in h:
        v = h["L7"]["combined"]
        lines.append("- **Does pretraining beat scratch for fine-tuning (20 epochs)?** "
                     + ("Yes: " if passes(h["L7"]) == "passes" else
                        "No: scratch is ahead, " if passes(h["L7"]) == "falls short" else "No advantage detected: ")
                     + f"{fmt_interval(v)}" + ("" if passes(h["L7"]) != "not resolved" else
                                               f"; an advantage above {largest_advantage(h['L7']):.2f} points is ruled out") + ".")
    for name, what in (("L1", "the improved variant's"), ("L2", "the U-MAE arm's")):
        if name in h:
            v, claim = h[name], h[name]["claim"]
            said = (f"Yes: {what} gain survives at 16,000 steps" if claim.startswith("detected (+)") else
                    "No, it reverses" if claim.startswith("detected (-)") else
                    "Not detected: the gain measured at 500 steps is not detected at 16,000 steps")
            ruled = "" if claim.startswith("detected") else f"; an effect larger than {claim.split('larger than ')[1].split(' ')[0]} is ruled out"
            lines.append(f"- **Does {what} gain survive at 16,000 steps?** {said} "
                         f"({fmt_interval(v['combined'])} on k-NN{ruled}).")
    means = a.get("knn_means", {})
    above = [arm for arm in means if BEST in means and means[arm] > means[BEST]]
    if above:  # registered: "if another arm ends above it, that is said, with no test"
        lines.append(f"- **The best arm was fixed in advance as `{BEST}`; "
                     + ", ".join(f"`{arm}` ({means[arm]:.2f})" for arm in above)
                     + f" ended above it ({means[BEST]:.2f}) on k-NN** (means over seeds; said, not tested).")
    return lines


def markdown(a: dict, registered: str) -> str:
    rows = [[k, HYPOTHESES[k][0], METRIC_NAMES[HYPOTHESES[k][1]], str(v["n"]), fmt_interval(v["combined"]),
             fmt_interval(v), _boot(v), _p(v["combined"]["p"]), _p(v["p_holm"]), f"{v['combined']['mde']:.2f}", v["claim"]]
            for k, v in a["hypotheses"].items()]
    out = [f"**The registered family** (registered {registered} UTC; held-out images 5,000-9,999; seeds "
           f"{LONG_SEEDS[0]}-{LONG_SEEDS[-1]}; Holm over the seven p-values of the combined test):", "",
           table(["", "difference", "on", "seeds", "seeds and images (95 %, the test)", "over seeds only", "over images only",
                  "p", "p (Holm)", "MDE", "claim"], rows), ""]
    if a["descriptive"]:
        out += ["Descriptive, not tested:", "",
                table(["comparison", "seeds", "seeds and images (95 %)", "over seeds only"],
                      [[k, str(v["n"]), fmt_interval(v["combined"]) if v.get("combined") else "", fmt_interval(v)]
                       for k, v in a["descriptive"].items()]), ""]
    slopes = [f"`{arm}` {fmt_interval(s)}" for arm, s in a["slope"].items() if s]
    if slopes:
        out += ["The k-NN monitor's last doubling, 8,000 to 16,000 steps (validation images, per seed, t interval): "
                + "; ".join(slopes) + ".", ""]
    return "\n".join(out)


def _boot(v: dict) -> str:
    b = v.get("bootstrap95")
    return "" if not b else f"[{b[0]:+.2f}, {b[1]:+.2f}]"


def report(settings, interim: bool = False) -> tuple[str, dict | None]:
    """The stage as markdown for docs/study.md, and its analysis (None until every record is in,
    unless interim)."""
    held = {k: v for k, v in read_records(Path(settings.records), settings.dataset, settings.preset, "heldout").items()
            if k[2] == LONG_STEPS}
    done, total = progress(held)
    if done < total and not interim:
        return (f"Status: {done} of {total} registered records are in. The registered analysis is reported when all "
                "are (`study report --interim` shows it before, labelled and without claims).\n"), None
    when = registered_at(stage="long")
    check_registered({k: d for k, d in first_dates(settings.records, settings.dataset, settings.preset, "heldout").items()
                      if k[2] == LONG_STEPS}, when)
    a = analysis(held, read_correct(correct_path(settings.records), settings.dataset, settings.preset, LONG_STEPS))
    if done < total:
        return f"**Interim: {done} of {total} registered records; no claim.**\n\n" + markdown(a, when), a
    return "\n".join(verdict(a)) + "\n\n" + markdown(a, when), a
