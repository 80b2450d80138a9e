"""The held-out confirmation (registration 1 in benchmarks/preregistered.md), analysed as registered:
paired t tests over seeds with Holm's correction per family, the factorial contrasts, a bootstrap
over the held-out images, and the wording of each claim.

Added after the registration, and labelled so: the combined interval, which treats the seeds and
the test images both as samples (the registered seed intervals are conditional on these 5,000
images), with a check of which detections survive it; the cls-token and single-addition lines; and
the bootstrap and combined interval for the factorial and leave-one-out contrasts too.
"""
import math

from .arms import HEADLINE, HELDOUT_ARMS, HELDOUT_SEEDS
from .stats import combined, holm, image_bootstrap, mean_interval
from .tables import _p, fmt_interval, table


FAMILY_1 = ("improved", "unif_umae_mean_100x", "unif_wi_mean_1x", "lowpass")   # each against original
FACTORIAL = {"original": (0, 0, 0), "curriculum": (1, 0, 0), "lap_interior_1x": (0, 1, 0), "unif_wi_mean_1x": (0, 0, 1),
             "improved_no_uniformity": (1, 1, 0), "improved_no_laplacian": (1, 0, 1),
             "improved_no_curriculum": (0, 1, 1), "improved": (1, 1, 1)}          # (curriculum, Laplacian, uniformity)
EFFECTS = {"C": (1, 0, 0), "L": (0, 1, 0), "U": (0, 0, 1), "CxL": (1, 1, 0), "CxU": (1, 0, 1), "LxU": (0, 1, 1),
           "CxLxU": (1, 1, 1)}
LEAVE_ONE_OUT = {"curriculum": "improved_no_curriculum", "Laplacian": "improved_no_laplacian",
                 "uniformity": "improved_no_uniformity"}
ALONE = {"the curriculum": "curriculum", "the Laplacian loss": "lap_interior_1x"}   # each addition alone, vs original
SUM_OF_PARTS = {"improved": 1, "original": 2, "curriculum": -1, "lap_interior_1x": -1, "unif_wi_mean_1x": -1}
METRICS = (HEADLINE, "lp_top1_mean", "knn_top1_cls")   # the primary, family 1b, and the cls token (descriptive)


def contrast(values: dict, bits: dict, coefs: dict) -> dict | None:
    """A linear contrast over arms, sum_a coefs[a] * accuracy(a), per seed (the seeds every arm of it
    has): its t interval over seeds and, where every arm has per-image bits, the bootstrap over the
    test images (the same images for every arm and seed) and the combined interval. values: {arm:
    {seed: accuracy}}; bits: {arm: {seed: bool array}}."""
    seeds = sorted(set.intersection(*(set(values.get(a, {})) for a in coefs)))
    if not seeds:
        return None
    per_seed = [sum(c * values[a][s] for a, c in coefs.items()) for s in seeds]
    out = {**mean_interval(per_seed), "seeds": seeds, "diffs": per_seed}
    if all(s in bits.get(a, {}) for a in coefs for s in seeds):
        per_image = 100.0 * sum(c * sum(bits[a][s].astype(float) for s in seeds) for a, c in coefs.items()) / len(seeds)
        boot = image_bootstrap(per_image)
        out.update(bootstrap95=(boot["lo"], boot["hi"]), combined=combined(out, boot["se"]))
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
    """{name: interval} -> the same with Holm-adjusted p and the claim over the family; where the
    combined interval exists, its own Holm-adjusted p and whether the claim survives it."""
    comparisons = {k: v for k, v in comparisons.items() if v}
    adjusted = holm({k: v["p"] for k, v in comparisons.items()})
    both = holm({k: v["combined"]["p"] for k, v in comparisons.items() if v.get("combined")})
    out = {}
    for k, v in comparisons.items():
        row = {**v, "p_holm": adjusted.get(k), "claim": claim(adjusted.get(k), v)}
        if k in both:
            row["combined"] = {**v["combined"], "p_holm": both[k]}
            row["survives_images"] = both[k] < 0.05 if row["claim"].startswith("detected") else None
        out[k] = row
    return out


def factorial(values: dict, bits: dict | None = None) -> dict:
    """values: {arm: {seed: value}} for the eight cells. Each effect's contrast (cells coded -1 / +1
    per factor, the product over the effect's factors, sum / 4) per seed with all eight, and the
    'sum of parts' contrast (improved - original) - sum over additions (addition - original)."""
    if not values or not all(values.get(a) for a in FACTORIAL):
        return {}
    bits = bits or {}
    coefs = {e: {a: math.prod(1 if lv else -1 for lv, f in zip(levels, factors) if f) / 4 for a, levels in FACTORIAL.items()}
             for e, factors in EFFECTS.items()}
    effects = {e: contrast(values, bits, c) for e, c in coefs.items()}
    if not all(effects.values()):
        return {}
    return {"seeds": effects["C"]["seeds"], "effects": family(effects),
            "sum_less_than_parts": contrast(values, bits, SUM_OF_PARTS)}


def values_and_bits(records: dict, correct: dict, metric: str, steps: int) -> tuple[dict, dict]:
    """({arm: {seed: accuracy}}, {arm: {seed: per-image bool array}}) of one metric at `steps`."""
    values, bits = {}, {}
    for (a, s, st), r in records.items():
        if st == steps and r.get(metric) is not None:
            values.setdefault(a, {})[s] = r[metric]
    for (a, s), c in correct.items():
        if metric in c:
            bits.setdefault(a, {})[s] = c[metric]
    return values, bits


def heldout_analysis(records: dict, correct: dict, steps: int = 500) -> dict:
    """The registered analysis of the held-out records at `steps`, for the headline, the probe and
    the cls token; correct: {(arm, seed): {metric: bool array}} (records.read_correct)."""
    out = {}
    for m in METRICS:
        values, bits = values_and_bits(records, correct, m, steps)
        vs = lambda arm, base="original": contrast(values, bits, {arm: 1, base: -1}) if arm in values and base in values else None  # noqa: E731
        out[m] = {"vs_original": family({a: vs(a) for a in FAMILY_1}), "factorial": factorial(values, bits),
                  "leave_one_out": {k: v for k, v in ((add, vs("improved", arm)) for add, arm in LEAVE_ONE_OUT.items()) if v},
                  "alone": {k: v for k, v in ((name, vs(arm)) for name, arm in ALONE.items()) if v},
                  "seeds": {a: sorted(v) for a, v in values.items()}}
    return out


METRIC_NAMES = {HEADLINE: "k-NN top-1, mean pool (primary)", "lp_top1_mean": "linear probe top-1, mean pool (family 1b)",
                "knn_top1_cls": "k-NN top-1, cls token (descriptive)"}
HYPOTHESES = {"improved": "H1, the improved variant", "unif_umae_mean_100x": "H2, the arm that ranked first (U-MAE 100x)",
              "unif_wi_mean_1x": "H3, Wang-Isola uniformity 1x alone", "lowpass": "H4, the low-pass target"}
FACTORS = {"C": "the curriculum", "L": "the Laplacian loss", "U": "the uniformity term"}


def fmt_combined(v: dict) -> str:
    """The combined interval and whether a detection survives it."""
    c = v.get("combined")
    if not c or c.get("ci95") is None:
        return ""
    text = f"seeds and images {fmt_interval(c)}"
    if v.get("survives_images") is not None:
        text += f" (Holm p {_p(c['p_holm'])}: {'survives' if v['survives_images'] else 'does not survive'})"
    return text


def _stated(v: dict) -> str:
    """One comparison as the registration words it (estimate, seed interval, Holm p, claim), then the
    combined interval."""
    combined_text = fmt_combined(v)
    return (f"{fmt_interval(v)} over seeds (Holm p {_p(v.get('p_holm'))}): {v['claim']}"
            + (f"; {combined_text}" if combined_text else ""))


def heldout_verdict(analysis: dict) -> list[str]:
    """The registered analysis as the docs' verdict, one line per question, every number with its
    interval and its Holm correction, all on the held-out split."""
    k, lp, cls = analysis[HEADLINE], analysis["lp_top1_mean"], analysis.get("knn_top1_cls", {})
    lines = []
    for arm, name in HYPOTHESES.items():
        if arm in k["vs_original"]:
            v = k["vs_original"][arm]
            lines.append(f"- **{name}**, against `original` over {v['n']} seeds: k-NN {_stated(v)}."
                         + (f" Linear probe (family 1b): {_stated(lp['vs_original'][arm])}." if arm in lp["vs_original"] else "")
                         + (f" k-NN on the cls token (descriptive): {fmt_interval(cls['vs_original'][arm])}, "
                            f"{cls['vs_original'][arm]['claim'].split(';')[0]} at Holm 0.05."
                            if arm in cls.get("vs_original", {}) else ""))
    f = k["factorial"]
    if f:
        mains = "; ".join(f"{FACTORS[e]} {_stated(f['effects'][e])}" for e in FACTORS)
        inter = [e for e in f["effects"] if e not in FACTORS]
        found = [e for e in inter if f["effects"][e]["claim"].startswith("detected")]
        widest = max(abs(f["effects"][e]["diff"]) + (f["effects"][e]["ci95"] or 0) for e in inter)
        lines.append(f"- **Inside `improved`** (the 2 x 2 x 2 factorial, {len(f['seeds'])} seeds, k-NN, Holm over 7; each "
                     f"effect is a contrast divided by 4): main effects: {mains}. Interactions: "
                     + ("detected for " + "; ".join(f"{e} {_stated(f['effects'][e])}, that is, the effect of one of its "
                                                    f"two additions is {2 * f['effects'][e]['diff']:+.2f} points larger with "
                                                    f"the other than without" for e in found) if found else
                        f"none detected (an interaction larger than {widest:.2f} is ruled out for each, 95 %)")
                     + f". Is the sum less than its parts? {fmt_interval(f['sum_less_than_parts'])} (not tested again).")
    alone = k.get("alone", {})
    if alone:
        lines.append("- **Each addition alone**, against `original` (descriptive, k-NN): "
                     + "; ".join(f"{name} {fmt_interval(v)}" + (f" ({fmt_combined(v)})" if fmt_combined(v) else "")
                                 for name, v in alone.items())
                     + ". The factorial's main effect averages an addition over the other two; alone it can differ.")
    return lines


def heldout_markdown(analysis: dict, registered: str) -> str:
    lines = [f"**Held-out confirmation** (test images 5,000-9,999; fresh seeds; registered {registered} UTC). "
             "Seed intervals are conditional on these 5,000 images; the combined interval treats seeds and images "
             "both as samples (added after the registration).", ""]
    for m, a in analysis.items():
        label = "" if m == HEADLINE else " Exploratory where not registered: the factorial and leave-one-out below are."
        lines += [f"*{METRIC_NAMES.get(m, m)}*.{label} Family 1, against original (Holm over the arms present):", "",
                  table(["arm", "seeds", "Δ [95 % t over seeds]", "over images (95 %)", "seeds and images (95 %)", "p",
                         "p (Holm)", "MDE", "claim"],
                        [[k, str(v["n"]), fmt_interval(v), _boot(v), fmt_interval(v["combined"]) if v.get("combined") else "",
                          _p(v.get("p")), _p(v.get("p_holm")), "" if v.get("mde") is None else f"{v['mde']:.2f}", v["claim"]]
                         for k, v in a["vs_original"].items()]), ""]
        f = a["factorial"]
        if f:
            lines += [f"Family 2, the 2 x 2 x 2 factorial (seeds {f['seeds']}; Holm over 7; contrasts divided by 4)"
                      + ("" if m == HEADLINE else ", exploratory") + ":", "",
                      table(["effect", "estimate [95 % over seeds]", "over images", "seeds and images", "p", "p (Holm)",
                             "MDE", "claim"],
                            [[k, fmt_interval(v), _boot(v), fmt_interval(v["combined"]) if v.get("combined") else "",
                              _p(v.get("p")), _p(v.get("p_holm")), f"{v['mde']:.2f}" if v.get("mde") else "", v["claim"]]
                             for k, v in f["effects"].items()]), "",
                      f"Sum less than its parts? (improved - original) - Σ(addition - original): "
                      f"{fmt_interval(f['sum_less_than_parts'])} over seeds"
                      + (f", {_boot(f['sum_less_than_parts'])} over images" if f["sum_less_than_parts"].get("bootstrap95") else ""),
                      ""]
        if a["leave_one_out"]:
            lines += ["Leave-one-out (improved minus improved without the addition; descriptive" +
                      ("" if m == HEADLINE else ", exploratory") + "):", "",
                      table(["addition", "seeds", "what it adds inside improved [95 %]", "over images", "seeds and images",
                             "MDE"],
                            [[k, str(v["n"]), fmt_interval(v), _boot(v), fmt_interval(v["combined"]) if v.get("combined") else "",
                              f"{v['mde']:.2f}" if v.get("mde") else ""] for k, v in a["leave_one_out"].items()]), ""]
    return "\n".join(lines) + "\n"


def _boot(v: dict) -> str:
    b = v.get("bootstrap95")
    return "" if not b else f"[{b[0]:+.2f}, {b[1]:+.2f}]"


def heldout_progress(held: dict, steps: int = 500) -> tuple[int, int]:
    """(registered held-out runs recorded, registered runs in all)."""
    return (sum((a, s, steps) in held for a in HELDOUT_ARMS for s in HELDOUT_SEEDS),
            len(HELDOUT_ARMS) * len(HELDOUT_SEEDS))
