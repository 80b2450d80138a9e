"""The study's records: one JSON line per run (arm, seed, steps, split), later lines filling in or
replacing earlier values; the per-image correctness of the held-out records in a file of their own;
and the date each record was first written, which the registrations check."""
import json
import os
from pathlib import Path

from ..paths import PREREGISTRATION, RESULTS
from ..runs import read_jsonl, unpack_bits


def read_records(path=None, dataset: str | None = None, preset: str | None = None,
                 split: str = "validation") -> dict:
    """{(arm, seed, steps): record} of one dataset, preset and evaluation split, later lines filling
    in or replacing earlier values. Records without a split are validation records: every record
    written before the held-out split existed was scored on the first eval.max_test test images."""
    merged = {}
    for r in read_jsonl(path or RESULTS / "ablation_runs.jsonl"):
        if (dataset and r.get("dataset") != dataset) or (preset and r.get("preset") != preset) \
                or r.get("split", "validation") != split:
            continue
        key = (r["arm"], r["seed"], r["steps"])
        ft = dict(merged.get(key, {}).get("ft_by_epochs", {}))  # each fine-tuning budget keeps its own score
        if r.get("ft_top1") is not None:
            ft[r.get("ft_epochs")] = r["ft_top1"]
        merged[key] = {**merged.get(key, {}), **{k: v for k, v in r.items() if v is not None}, **({"ft_by_epochs": ft} if ft else {})}
    return merged


def append_record(record: dict, path) -> None:
    """One line, in one write to a file opened for appending: two workers never interleave lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def correct_path(records) -> Path:
    """Where the per-image correctness of the held-out records lives: beside the records."""
    records = Path(records)
    return records.with_name(records.stem + "_correct.jsonl")


def read_correct(path, dataset, preset, steps: int) -> dict:
    """{(arm, seed): {metric: bool array}} of the held-out records' per-image correctness (probes on
    both pools, fine-tuning where it was recorded)."""
    out = {}
    for r in read_jsonl(path):
        if r.get("dataset") == dataset and r.get("preset") == preset and r.get("steps") == steps:
            bits = {m: unpack_bits(r[m], r["n"]) for m in r if m.endswith(("_mean", "_cls")) or m == "ft_top1"}
            out[(r["arm"], r["seed"])] = {**out.get((r["arm"], r["seed"]), {}), **bits}
    return out


def first_dates(path=None, dataset: str | None = None, preset: str | None = None, split: str = "validation") -> dict:
    """{(arm, seed, steps): the date of its FIRST dated line}: when the run was first recorded (later
    lines, such as a fine-tuning added days after, do not move it)."""
    out = {}
    for r in read_jsonl(path or RESULTS / "ablation_runs.jsonl"):
        if (dataset and r.get("dataset") != dataset) or (preset and r.get("preset") != preset) \
                or r.get("split", "validation") != split or not r.get("date"):
            continue
        out.setdefault((r["arm"], r["seed"], r["steps"]), r["date"])
    return out


REGISTRATIONS = {"heldout": "registered", "long": "registered (long budget)"}   # the line each stage's date is on


def registered_at(path=PREREGISTRATION, stage: str = "heldout") -> str:
    """The 'registered ...: YYYY-MM-DD HH:MM UTC' line of a stage's registration, as 'YYYY-MM-DD HH:MM'."""
    head = REGISTRATIONS[stage] + ": "
    line = next((x for x in Path(path).read_text().splitlines() if x.startswith(head)), None)
    if line is None:
        raise ValueError(f"{path} has no '{head}YYYY-MM-DD HH:MM UTC' line")
    return line.split(": ", 1)[1].replace(" UTC", "").strip()


def check_registered(first: dict, when: str) -> None:
    """Refuse records of a registered stage first written before its registration: they could have
    shaped it. first: {(arm, seed, steps): date of the record's first line} (first_dates)."""
    early = sorted(f"{a}/s{s}/{st} ({d})" for (a, s, st), d in first.items() if str(d) < when)
    if early:
        raise ValueError(f"records first written before their registration ({when} UTC): {', '.join(early[:5])}")
