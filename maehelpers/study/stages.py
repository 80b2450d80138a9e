"""The study's stages: which (arm, seed, steps) runs a stage asks for, and the workers that run them.

Resumable and additive: a run whose (arm, seed, steps) already has a record on its split is skipped,
so a study grows over sessions. Several workers may share one records file; each claims the run it
takes. compare() runs `original` and arms of your own, paired by seed, from a notebook.
"""
import contextlib
import dataclasses
import fcntl
import os
import statistics
import time
from pathlib import Path

from ..evaluate import load_eval_data
from .arms import (ARMS, BASELINES, HEADLINE, HELDOUT_ARMS, HELDOUT_SEEDS, LONG_ARMS, LONG_SEEDS, LONG_STEPS,
                   arm_config, steps_per_epoch)
from .records import append_record, correct_path, read_records
from .run import run_one
from .settings import StudySettings
from .stats import paired


def plan(settings, records) -> list[tuple]:
    """The (arm, seed, steps) runs that a stage asks for, finished ones left out."""
    steps = settings.steps
    if settings.arms:  # raw pixels' probe takes the seed on the held-out split; elsewhere one record (seed 0)
        todo = [(a, 0 if a == "raw_pixels" and getattr(settings, "split", "validation") != "heldout" else s, steps)
                for s in settings.seeds or [0] for a in settings.arms]
    elif settings.stage == "long":  # seed-major; every seed: the three arms, scratch fine-tuning, raw pixels
        todo = [(a, s, LONG_STEPS) for s in settings.seeds or LONG_SEEDS for a in (*LONG_ARMS, "random", "raw_pixels")]
    elif settings.stage == "heldout":  # seed-major, so that every arm grows together
        todo = [(a, s, steps) for s in settings.seeds or HELDOUT_SEEDS for a in HELDOUT_ARMS]
    elif settings.stage == "dose":
        todo = [(a, 0, steps) for a in ["original", "random", "raw_pixels", *[a for a in ARMS if a != "original"]]]
    else:
        best = ranked_arms(records, steps)
        if settings.stage == "confirm":
            top = best[0][1] if best else 0
            arms = ["original", "random"] + [a for a, v in best if v >= top - 1.0]
            todo = [(a, s, steps) for s in (0, 1, 2) for a in arms]
        elif settings.stage == "power":
            todo = [(a, s, steps) for s in range(10) for a in ["original"] + [a for a, _ in best[:2]]]
        elif settings.stage == "ft":  # fine-tuning: original, the best arm and the random encoder (scratch recipe)
            settings.ft = True
            todo = [(a, s, steps) for s in (0, 1, 2) for a in ["original", best[0][0], "random"]]
        elif settings.stage == "budget":  # does the gap grow with training? original and the best arm
            todo = [(a, s, n * steps) for n in (4, 8) for s in (0, 1) for a in ["original", best[0][0]]]
        else:
            raise ValueError(f"unknown stage {settings.stage!r}")
    return pending(settings, todo, records)


def pending(settings, todo, records) -> list[tuple]:
    """The runs of `todo` not yet recorded (or recorded without the fine-tuning budget asked for)."""
    return [k for k in dict.fromkeys(todo) if k not in records or
            (settings.ft and k[0] != "raw_pixels" and records[k].get("ft_epochs") != settings.ft_epochs)]


def ranked_arms(records, steps) -> list[tuple]:
    """Arms other than original and the baselines, by mean headline metric at `steps`, best first."""
    by_arm = {}
    for (arm, _, st), r in records.items():
        if st == steps and arm in ARMS and arm != "original" and r.get(HEADLINE) is not None:
            by_arm.setdefault(arm, []).append(r[HEADLINE])
    return sorted(((a, statistics.fmean(v)) for a, v in by_arm.items()), key=lambda x: -x[1])


def fresh_seeds_only(settings, todo) -> None:
    """A held-out run must use a seed that no validation record used: refuse before any work."""
    used = {s for (_, s, _) in read_records(Path(settings.records), settings.dataset, settings.preset)}
    reused = sorted({s for a, s, _ in todo if s in used and a not in BASELINES})
    if reused:
        raise SystemExit(f"seeds {reused} already have validation records; the held-out confirmation needs fresh "
                         f"seeds (the preregistered ones are {HELDOUT_SEEDS[0]}-{HELDOUT_SEEDS[-1]})")


def run_stage(settings) -> None:
    """Run what the stage still needs, one (arm, seed, steps) at a time. Several workers may share a
    records file: each run is claimed first (a lock beside the run folders, freed when its process
    ends) and the records are read again before every run, so a worker takes only what no other
    worker has done or is doing, and an interrupted stage resumes where it stopped."""
    out = Path(settings.records)
    todo = plan(settings, read_records(out, settings.dataset, settings.preset, settings.split))
    if settings.split == "heldout":
        fresh_seeds_only(settings, todo)
    print(f"{len(todo)} runs to do: {', '.join(f'{a}/s{s}/{st}' for a, s, st in todo)}", flush=True)
    start, took, data = time.time(), [], None
    while True:
        est = statistics.median(took) if took else 0.0
        if settings.budget_minutes and time.time() - start + est > 60 * settings.budget_minutes:
            print(f"stopping: the next run (~{est / 60:.0f} min) would pass --budget-minutes {settings.budget_minutes}")
            break
        records = read_records(out, settings.dataset, settings.preset, settings.split)
        with claim_next(settings, pending(settings, todo, records)) as key:
            if key is None:
                break
            t0 = time.time()
            data = data or load_eval_data(arm_config("original", settings, 0, key[2]), settings.data_root, settings.split)
            record = run_one(settings, key, records.get(key), data)
            write_record(settings, out, key, record)
            took.append(time.time() - t0)
            left = len(pending(settings, todo, read_records(out, settings.dataset, settings.preset, settings.split)))
            print(f"{key[0]} s{key[1]} {key[2]} steps: k-NN mean {record['knn_top1_mean']:.2f}, LP mean "
                  f"{record['lp_top1_mean']:.2f} ({took[-1]:.0f} s"
                  f"{', under load' if record.get('under_load', record.get('eval_under_load')) else ''})"
                  + (f"; {left} runs left, about {left * statistics.median(took) / 60:.0f} min of this worker's pace"
                     if left else ""), flush=True)


def write_record(settings, out: Path, key, record: dict) -> None:
    """The record, and its per-image bits in a file of their own (so the records stay readable)."""
    head = {"dataset": settings.dataset, "preset": settings.preset, "split": settings.split}
    if "correct" in record:
        append_record({**head, "arm": key[0], "seed": key[1], "steps": key[2], **record.pop("correct")},
                      correct_path(out))
    append_record({**head, **record}, out)


@contextlib.contextmanager
def claim_next(settings, todo):
    """Yield the first run of `todo` that no other worker holds, holding its claim (an flock on
    runs_root/<dataset>/.claims/<run>.lock) until the block ends; None when every run is taken."""
    folder = Path(settings.runs_root) / settings.dataset / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    for key in todo:
        fd = os.open(folder / f"{key[0]}_s{key[1]}_{key[2]}.lock", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another worker runs it
            os.close(fd)
            continue
        try:
            yield key
        finally:
            os.close(fd)  # closing frees the lock
        return
    yield None


def compare(arms: dict, seeds=(0, 1, 2), steps: int | None = 500, dataset: str = "fashion_mnist", preset: str = "ablation",
            records=None, runs_root=None, data_root=None, device: str = "cpu", metrics=(HEADLINE, "lp_top1_mean"),
            progress: bool = False) -> dict:
    """Run `original` and each of `arms` ({name: (variant, {dotted overrides})}) at the same seeds,
    budget and data (finished runs are reused), then return, per arm and metric, the paired
    difference to `original` (mean, 95 % interval, p, minimum detectable effect, seeds, and the
    per-seed differences). steps None: one epoch of the preset. Records and run folders go to
    runs_root (default runs/study), never to the project's committed records unless asked."""
    seeds, runs_root = tuple(seeds), Path(runs_root or "runs/study")
    settings = StudySettings(arms=["original", *arms], seeds=list(seeds), dataset=dataset, preset=preset, device=device,
                             records=str(records or runs_root / "records.jsonl"), runs_root=str(runs_root),
                             quiet=not progress, extra_arms={k: (v[0], dict(v[1])) for k, v in arms.items()},
                             **({"data_root": str(data_root)} if data_root is not None else {}))
    settings = dataclasses.replace(settings, steps=steps or steps_per_epoch(settings))
    if settings.steps % steps_per_epoch(settings):
        raise ValueError(f"steps must be a multiple of {steps_per_epoch(settings)} (one epoch of the preset)")
    Path(settings.records).parent.mkdir(parents=True, exist_ok=True)
    run_stage(settings)
    found = read_records(Path(settings.records), dataset, preset)
    by_arm = lambda a, m: {s: r[m] for (arm, s, st), r in found.items()  # noqa: E731
                           if arm == a and st == settings.steps and s in seeds and r.get(m) is not None}
    return {arm: {m: paired(by_arm("original", m), by_arm(arm, m)) for m in metrics} for arm in arms}
