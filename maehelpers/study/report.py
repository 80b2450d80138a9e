"""The study's report, computed from the records alone:

    python -m maehelpers study report --doc docs/study.md

writes ablation_<dataset>.{json,md} and the pictures into --out and, with --doc, the docs page's
generated blocks (tests keep them in step with the records). Each registered stage is analysed as
its registration in benchmarks/preregistered.md says, and refused if a record predates it.
"""
import json
import os
from pathlib import Path

from ..config import to_dict
from ..evaluate import EVAL_SPLITS
from ..generated import marks, replace_block
from ..runs import save_json
from .arms import HEADLINE, HELDOUT_SEEDS, arm_config
from .exploratory import analyses_markdown
from .flops import compute_matched, flops_ratios
from .heldout import heldout_analysis, heldout_markdown, heldout_progress, heldout_verdict
from .long import report as long_report
from .plots import plot, plot_budget, plot_health, plot_long
from .records import check_registered, correct_path, first_dates, read_correct, read_records, registered_at
from .tables import arm_table, fmt_interval, markdown, matched_markdown, readme_tables, seeds_table, summarise


COMMAND = "python -m maehelpers study report --doc docs/study.md"
TABLES_MARKS = marks("ablation tables", COMMAND)
ANALYSES_MARKS = marks("study analyses", COMMAND)
HELDOUT_MARKS = marks("held-out confirmation", COMMAND)
LONG_MARKS = marks("long-budget stage", COMMAND)


def seeds_text(settings) -> str:
    rows = summarise(read_records(Path(settings.records), settings.dataset, settings.preset))
    return seeds_table(rows, settings.half_width or 0.5, settings.effect)


def heldout_report(settings, interim: bool = False) -> tuple[str, dict | None]:
    """The held-out stage as markdown: its per-arm table and the registered analysis once all registered
    runs are in (or with `interim`), else how many are; and the analysis itself (None before)."""
    held = read_records(Path(settings.records), settings.dataset, settings.preset, "heldout")
    if not held:
        return "", None
    done, total = heldout_progress(held)
    rows = summarise(held)
    table_md = f"Per arm, held-out split, 500 steps:\n\n{arm_table(rows, 500, flops_ratios(rows, settings))}\n\n"
    if done < total and not interim:
        return (f"Held-out stage: {done} of {total} registered runs recorded; the registered analysis is reported when "
                "all are in (`report --interim` shows it before).\n"), None
    when = registered_at()
    check_registered({k: d for k, d in first_dates(settings.records, settings.dataset, settings.preset, "heldout").items()
                      if k[2] == 500}, when)
    analysis = heldout_analysis(held, read_correct(correct_path(settings.records), settings.dataset, settings.preset, 500))
    note = "" if done == total else f"**Interim: {done} of {total} registered runs; no claim.**\n\n"
    verdict = (f"**Verdict on the held-out split** (registered {when} UTC; test images 5,000-9,999; seeds "
               f"{HELDOUT_SEEDS[0]}-{HELDOUT_SEEDS[-1]}; effects in points of top-1, 95 % intervals):\n\n"
               + "\n".join(heldout_verdict(analysis)) + "\n\n")
    return note + verdict + table_md + heldout_markdown(analysis, when), analysis


def report(settings) -> Path:
    """Tables, analyses and pictures from the records: ablation_<dataset>.{json,md} and the pictures in
    settings.out; with settings.doc, the docs page's generated blocks; with settings.front, the front
    page's table of findings."""
    records = read_records(Path(settings.records), settings.dataset, settings.preset)
    held = read_records(Path(settings.records), settings.dataset, settings.preset, "heldout")
    rows = summarise(records)
    stem = Path(settings.out) / f"ablation_{settings.dataset}{'' if settings.preset == 'ablation' else '_' + settings.preset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    steps = sorted({r["steps"] for r in rows if r["steps"]})
    flops = flops_ratios([r for r in rows if r["steps"] == (steps[0] if steps else 500)], settings)
    tables = readme_tables(rows, flops)
    heldout_md, heldout_analysis_ = heldout_report(settings, settings.interim)
    long_md, long_analysis = long_report(settings, settings.interim)
    matched = compute_matched(records, settings)
    save_json({"dataset": settings.dataset, "preset": settings.preset, "headline": HEADLINE, "rows": rows,
               "records": len(records), "config_of_original": to_dict(arm_config("original", settings, 0, steps[0] if steps else 500)),
               "compute_matched": matched, "flops_vs_original": {f"{a}/{st}": v for (a, st), v in flops.items()},
               "command": "python -m maehelpers study report"}, stem.with_suffix(".json"))
    for name, analysis in (("heldout", heldout_analysis_), ("long", long_analysis)):
        if analysis:
            Path(f"{stem}_{name}.json").write_text(json.dumps(analysis, indent=1, default=float) + "\n")
    stem.with_suffix(".md").write_text("\n".join([markdown(rows), matched_markdown(matched), tables, heldout_md, long_md]))
    draw(stem, rows, records, held, steps, settings)   # before the docs, which link the pictures that exist
    if settings.doc:
        write_doc(settings, records, tables)
    if settings.front:
        replace_block(settings.front, findings(settings), FINDINGS_MARKS)
    print(stem.with_suffix(".md").read_text())
    return stem


def write_doc(settings, records: dict, tables: str) -> None:
    """The docs page's generated blocks (docs/study.md), each from the records alone."""
    first = first_dates(settings.records, settings.dataset, settings.preset)
    replace_block(settings.doc, tables, TABLES_MARKS)
    replace_block(settings.doc, analyses_markdown(records, settings, first), ANALYSES_MARKS)
    replace_block(settings.doc, heldout_report(settings)[0], HELDOUT_MARKS)
    picture = Path(settings.out) / f"ablation_{settings.dataset}_long.png"
    link = f"\n\n![where MAE starts to work]({os.path.relpath(picture, Path(settings.doc).parent)})" if picture.exists() else ""
    replace_block(settings.doc, long_report(settings)[0] + link, LONG_MARKS)


def draw(stem: Path, rows, records: dict, held: dict, steps: list, settings) -> None:
    """The study's pictures, beside its report."""
    done, total = heldout_progress(held)
    held_name = "held-out" + ("" if done == total else f" (interim, {done} of {total} runs)")
    for st in steps:
        plot({"validation": rows, held_name: summarise(held) if held else []}, stem.parent / f"{stem.name}_{st}.png", st)
    plot_budget(rows, stem.parent / f"{stem.name}_budget.png")
    plot_long(records, held, stem.parent / f"{stem.name}_long.png")
    plot_health({split: read_records(Path(settings.records), settings.dataset, settings.preset, split) for split in EVAL_SPLITS},
                stem.parent / f"{stem.name}_health.png")


FINDINGS_MARKS = marks("findings", "python -m maehelpers study report --doc docs/study.md --front README.md")
REG1 = "docs/study.md#registration-1-the-held-out-confirmation-500-steps"
REG2 = "docs/study.md#registration-2-where-mae-starts-to-work-16000-steps"


def findings(settings) -> str:
    """The front page's table: each registered claim with its combined interval (seeds and test images
    as samples) and a link to its section; a stage still running says how far it is."""
    from .long import answer, largest_advantage, passes, shown
    rows = ["| question (registered) | answer | interval (95 %, seeds and test images) | |", "|---|---|---|---|"]
    held = heldout_report(settings)[1]
    if held:
        vs, f = held[HEADLINE]["vs_original"], held[HEADLINE]["factorial"]["effects"]
        for arm, what in (("improved", "Does the improved variant beat the paper's MAE? (k-NN, 500 steps)"),
                          ("unif_umae_mean_100x", "Does the arm that ranked first (U-MAE uniformity) beat it?")):
            rows.append(f"| {what} | {'yes, detected' if vs[arm]['claim'].startswith('detected (+)') else vs[arm]['claim']} "
                        f"| {fmt_interval(vs[arm]['combined'])} | [registration 1]({REG1}) |")
        rows.append(f"| Inside `improved`, what carries the gain? | the uniformity term ({f['U']['claim'].split(';')[0]}); "
                    f"the curriculum: {f['C']['claim'].split(';')[0]} | {fmt_interval(f['U']['combined'])}; "
                    f"{fmt_interval(f['C']['combined'])} | [registration 1]({REG1}) |")
    text, long = long_report(settings)
    h = long["hypotheses"] if long else {}
    on_both = lambda k, p: f"k-NN: {passes(h[k])}; probe: {passes(h[p])}"
    questions = (("Does the paper's MAE pass raw pixels at 16,000 steps?", ("L3", "L4"),  # said only once all are in
                  lambda: on_both("L3", "L4")),
                 ("Does the arm that ranked first pass raw pixels at 16,000 steps?", ("L5", "L6"),
                  lambda: on_both("L5", "L6")),
                 ("Does pretraining beat scratch for fine-tuning at 16,000 steps?", ("L7",),
                  lambda: answer(h["L7"], "scratch is ahead", f"no advantage detected; one above "
                                                             f"{largest_advantage(h['L7']):.2f} points is ruled out")),
                 ("Does the improved variant's gain survive at 16,000 steps? (k-NN)", ("L1",),
                  lambda: answer(h["L1"], "it reverses", h["L1"]["claim"])))
    for what, names, said in questions:
        if all(n in h for n in names):
            rows.append(f"| {what} | {said()} | {'; '.join(shown(h[n]) for n in names)} "
                        f"| [registration 2]({REG2}) |")
        else:
            rows.append(f"| {what} | runs in progress ({text.split('Status: ')[-1].split(' are in')[0].strip()}) "
                        f"| | [registration 2]({REG2}) |")
    return "\n".join(rows) + "\n"
