"""The seeded study: arms (a variant and its overrides, as data), one JSON record per (arm, seed,
steps, split), resumable and additive, so a study grows over sessions and anyone can rerun a line.

    python -m maehelpers study run --stage dose            # every arm, seed 0
    python -m maehelpers study run --stage heldout         # the preregistered confirmation (benchmarks/preregistered.md)
    python -m maehelpers study run --stage long --threads 1  # the registered 16,000-step stage; run it twice for two workers
    python -m maehelpers study run --arms original unif_umae_mean_100x --seeds 0 1 2 --steps 2000
    python -m maehelpers study report --readme README.md   # tables, plots and analyses from the records
    python -m maehelpers study verify --arms original --seeds 0   # rerun a record, compare the numbers
    python -m maehelpers study seeds --half-width 0.5      # how many seeds an interval needs, from the records

From a notebook: `study.compare({"mine": ("original", {"variant.extra_terms": (("my_term", 0.1),)})},
seeds=(0, 1, 2))` runs `original` and the arm paired by seed and returns the paired differences.

Every run appends one JSON line to the records (arm, variant, overrides, seed, steps, split, probe
and k-NN top-1 on cls and mean-pooled features, fine-tuning top-1 or null, reconstruction metrics,
pretraining time, load, git commit: a commit only for a clean tree, else 'dirty:<hash> on <commit>').
A run whose (arm, seed, steps) already has a record on its split is skipped; results on CPU are
deterministic for a given thread count.

Protocol: every arm gets the same data, model, steps, probe and evaluation masks (matched by STEPS,
not compute; the time column says what each costs). Headline: k-NN on the MEAN of the patch tokens
(its history, told plainly, is in benchmarks/preregistered.md); the cls-token numbers are kept
beside it. Differences to `original` are paired by seed, with a 95 % t interval. Baselines are
records too: `random` (the same encoder untrained) and `raw_pixels`. Splits: `validation` scores
test images 0..max_test-1 (every choice was made there), `heldout` the next max_test, which no
choice saw.
"""
import argparse
import contextlib
import fcntl
import importlib
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .config import make_config
from .evaluate import (EVAL_SPLITS, POOLS, cached_features, evaluate_run, knn_predict, linear_probe, load_eval_data,
                       make_scratch_run, raw_pixel_baseline, recon_run, run_config)
from .pretrain import cpu_name, pick_device, pretrain
from .monitor import monitor_curve
from .runs import git_commit, pack_bits, read_jsonl, read_results, unpack_bits
from .stats import paired

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE = "knn_top1_mean"
METRICS = ("lp_top1_mean", "knn_top1_mean", "lp_top1_cls", "knn_top1_cls", "ft_top1", "nmse_masked",
           "psnr_masked", "psnr_masked_floor", "hf_error_masked", "pretrain_time_s")


def _uniformity_arms():
    """Both forms x both features x 0.1, 1, 10, 100 times today's weight (0.01). The U-MAE form at
    1.0 is U-MAE's pretraining-script strength (lambda 0.01 on (cos / tau)^2 with tau 0.1)."""
    arms = {}
    for form, short in (("wang_isola", "wi"), ("umae", "umae")):
        for feat in ("mean", "cls"):
            for times, w in (("0.1x", 0.001), ("1x", 0.01), ("10x", 0.1), ("100x", 1.0)):
                arms[f"unif_{short}_{feat}_{times}"] = ("original", {
                    "variant.uniformity_weight": w, "variant.uniformity_form": form,
                    "variant.uniformity_features": feat})
    return arms


# arm -> (variant in VARIANTS, dotted overrides): data, not code branches
ARMS = {
    "original": ("original", {}),
    "improved": ("improved", {}),
    "curriculum": ("curriculum", {}),
    "decreasing": ("decreasing", {}),
    "random_ratio": ("random_ratio", {}),
    "lowpass": ("lowpass", {}),
    "original_pixels": ("original_pixels", {}),   # plain-pixel target: what norm-pix targets buy on the probes
    "lap_interior_1x": ("laplacian", {}),
    "lap_interior_10x": ("laplacian", {"variant.laplacian_weight": 0.5}),
    "lap_replicate_1x": ("laplacian", {"variant.laplacian_form": "replicate"}),
    "lap_replicate_10x": ("laplacian", {"variant.laplacian_form": "replicate", "variant.laplacian_weight": 0.5}),
    **_uniformity_arms(),
    # improved without one of its three additions: with curriculum, lap_interior_1x, unif_wi_mean_1x,
    # original and improved they make the full 2 x 2 x 2 factorial (benchmarks/preregistered.md)
    "improved_no_curriculum": ("improved", {"variant.mask_schedule": "constant", "variant.mask_ratio_start": 0.75}),
    "improved_no_laplacian": ("improved", {"variant.laplacian_weight": 0.0}),
    "improved_no_uniformity": ("improved", {"variant.uniformity_weight": 0.0}),
}
BASELINES = ("random", "raw_pixels")
# the held-out confirmation (benchmarks/preregistered.md): arms, fresh seeds no earlier record used
HELDOUT_ARMS = ("original", "improved", "unif_umae_mean_100x", "unif_wi_mean_1x", "improved_no_curriculum",
                "improved_no_laplacian", "improved_no_uniformity", "curriculum", "lap_interior_1x", "lowpass")
HELDOUT_SEEDS = tuple(range(100, 110))
# the long-budget stage (benchmarks/preregistered.md, "Where MAE starts to work"): 16,000 steps, fresh
# seeds, scored on the held-out split, fine-tuned, beside scratch and raw pixels with the same seeds
LONG_ARMS = ("original", "improved", "unif_umae_mean_100x")
LONG_SEEDS = (200, 201, 202)
LONG_STEPS = 16000
# its k-NN monitor: the whole probe split as bank and every validation image as query, so a point is the
# validation k-NN of the encoder at that step; points at doublings and at 6,000 and 12,000
LONG_MONITOR = {"train.monitor_at": (500, 1000, 2000, 4000, 6000, 8000, 12000, 16000),
                "train.monitor_bank": 5000, "train.monitor_queries": 5000}


# ----------------------------------------------------------------------------- one run -> one record
class LoadMonitor:
    """Samples the 1-minute load average while a run trains, so timings taken under load are marked."""

    def __init__(self, every_s: float = 10.0):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), daemon=True)

    def _loop(self, every_s):
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def steps_per_epoch(args) -> int:
    """Of the preset, whose train.max_images fixes the pretraining set (the ablation preset: 125)."""
    t = make_config("original", args.preset, args.dataset).train
    return t.max_images // t.batch_size


def arm_spec(arm: str, args) -> tuple:
    """(variant, overrides) of an arm: the project's ARMS, or arms given to compare() / --arms-file."""
    extra = getattr(args, "extra_arms", None) or {}
    if arm not in extra and arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join([*ARMS, *extra, *BASELINES])}")
    return extra.get(arm) or ARMS[arm]


def arm_config(arm: str, args, seed: int, steps: int):
    variant, overrides = arm_spec(arm, args)
    epochs = steps // steps_per_epoch(args)
    return make_config(variant, args.preset, args.dataset, seed, {
        **overrides, "train.epochs": epochs, "train.warmup_epochs": 0.05 * epochs, "eval.pool": "mean",
        **getattr(args, "monitor", {})})


def run_arm(arm: str, seed: int, steps: int, args, data) -> dict:
    """Pretrain (resuming if interrupted), evaluate on args.split and describe one (arm, seed, steps)."""
    run = Path(args.runs_root) / args.dataset / f"{arm}_s{seed}_{steps}"
    if arm == "random":
        cfg = arm_config("original", args, seed, steps)
        make_scratch_run(cfg, run, seed)
        overrides, load, reused = {}, [os.getloadavg()[0]], False
    else:
        cfg = arm_config(arm, args, seed, steps)
        overrides = arm_spec(arm, args)[1]
        reused = read_results(run).get("status") == "done"
        with LoadMonitor() as monitor:
            if not reused:
                pretrain(cfg, run, data_root=args.data_root, progress=not args.quiet, device=args.device)
        load = monitor.samples
        recon_run(run, data[1], args.device)
    t0 = time.time()
    res = evaluate_run(run, args.data_root, ("lp", "knn") + (("ft",) if args.ft else ()), data=data,
                       device=args.device, progress=False,
                       overrides={"eval.pool": "mean", **({"eval.ft_epochs": args.ft_epochs} if args.ft else {})})
    bits = {"correct": correctness(run, data, res, args.device)} if args.split == "heldout" else {}
    provenance = _provenance(load, args.device)
    if reused:  # the pretraining's own threads, commit and load stay in its first record
        provenance = {f"eval_{k}": v for k, v in provenance.items()}
    return {"arm": arm, "variant": cfg.variant.name, "overrides": overrides, "seed": seed, "steps": steps,
            **{m: res.get(m) for m in METRICS}, **last_health(run), "monitor": monitor_curve(read_jsonl(run / "log_epochs.jsonl")),
            "ft_recipe": (res.get("ft") or {}).get("recipe"),
            "ft_epochs": args.ft_epochs if args.ft else None,
            "eval_time_s": round(time.time() - t0, 1), **provenance, **bits}


def correctness(run, data, res: dict, device) -> dict:
    """Per scored image, whether each probe was right, as packed bits (base64): what the bootstrap
    over test images resamples. Recomputed from the run's cached features with the same seeds, and
    checked against the recorded top-1, so the bits are the record's own predictions."""
    train, test = data
    cfg = run_config(run)
    e, device = cfg.eval, pick_device(device)
    feats = {split: cached_features(run, d, split, e.batch_size, device, False, amp=cfg.train.amp)
             for split, d in (("train", train), ("test", test))}
    out, allowed = {"n": len(test)}, bits_tolerance(device)
    for pool in POOLS:
        tr, te = feats["train"][pool], feats["test"][pool]
        right = {"knn": knn_predict(tr, train.labels, te, e.knn_k, e.knn_t, device=device) == test.labels,
                 "lp": linear_probe(tr, train.labels, te, test.labels, e.lp_epochs, e.batch_size, e.lp_lr, cfg.seed,
                                    device, False, predict=True)["pred"] == test.labels}
        for probe, ok in right.items():
            name, again = f"{probe}_top1_{pool}", 100.0 * ok.float().mean().item()
            if abs(again - res[name]) > allowed:
                raise RuntimeError(f"{run.name}: {name} recomputed {again:.4f} differs from its record {res[name]:.4f} "
                                   f"by more than {allowed}; the probe is not deterministic here")
            out[name] = pack_bits(ok)
            if again != res[name]:
                out.setdefault("recomputed_minus_record", {})[name] = again - res[name]
    ft = res.get("ft") or {}
    if ft.get("correct"):  # the fine-tuned classifier's own predictions, made when it was scored
        right = unpack_bits(ft["correct"], len(test))
        if abs(100.0 * right.mean() - res["ft_top1"]) > 1e-9:
            raise RuntimeError(f"{run.name}: fine-tuning bits give {100 * right.mean():.4f}, its record {res['ft_top1']:.4f}")
        out["ft_top1"] = ft["correct"]
    return out


def bits_tolerance(device: torch.device) -> float:
    """How far (points) recomputed bits may be from the record: none on the CPU, where every number is
    deterministic; on CUDA 0.2 (10 of 5,000 images), since TF32 matmuls and atomics may move a
    prediction that sits on a tie. What the comparison differed by is kept with the bits."""
    return 1e-9 if device.type == "cpu" else 0.2


def correct_path(records) -> Path:
    """Where the per-image correctness of the held-out records lives: beside the records."""
    records = Path(records)
    return records.with_name(records.stem + "_correct.jsonl")


def raw_pixel_record(args, steps: int, data, seed: int = 0) -> dict:
    """Linear probe (its seed: `seed`) and k-NN on the normalised pixels themselves (the same value under
    both pools); on the held-out split with each image's correctness, as every record there."""
    raw = raw_pixel_baseline(arm_config("original", args, seed, steps), *data, seed=seed, device=args.device)
    bits = {"n": len(data[1]), **{f"{probe}_top1_{pool}": raw[f"{probe}_correct"]
                                  for probe in ("lp", "knn") for pool in POOLS}}
    return {"arm": "raw_pixels", "variant": None, "overrides": {}, "seed": seed, "steps": steps,
            **{m: None for m in METRICS}, "lp_top1_mean": raw["lp_top1"], "lp_top1_cls": raw["lp_top1"],
            "knn_top1_mean": raw["knn_top1"], "knn_top1_cls": raw["knn_top1"], **_provenance([os.getloadavg()[0]]),
            **({"correct": bits} if args.split == "heldout" else {})}


def _provenance(load, device: str = "cpu") -> dict:
    threads = torch.get_num_threads()
    machine = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    return {"threads": threads, "load_max": round(max(load), 2), "under_load": max(load) > threads + 0.75,
            "device": device, "machine": machine, "torch": torch.__version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}


# ----------------------------------------------------------------------------- records
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


# ----------------------------------------------------------------------------- stages
def plan(args, records) -> list[tuple]:
    """The (arm, seed, steps) runs that a stage asks for, finished ones left out."""
    steps = args.steps
    if args.arms:  # raw pixels' probe takes the seed on the held-out split; elsewhere one record (seed 0)
        todo = [(a, 0 if a == "raw_pixels" and getattr(args, "split", "validation") != "heldout" else s, steps)
                for s in args.seeds or [0] for a in args.arms]
    elif args.stage == "long":  # seed-major; every seed: the three arms, scratch fine-tuning, raw pixels
        todo = [(a, s, LONG_STEPS) for s in args.seeds or LONG_SEEDS for a in (*LONG_ARMS, "random", "raw_pixels")]
    elif args.stage == "heldout":  # seed-major, so that every arm grows together
        todo = [(a, s, steps) for s in args.seeds or HELDOUT_SEEDS for a in HELDOUT_ARMS]
    elif args.stage == "dose":
        todo = [(a, 0, steps) for a in ["original", "random", "raw_pixels", *[a for a in ARMS if a != "original"]]]
    else:
        best = ranked_arms(records, steps)
        if args.stage == "confirm":
            top = best[0][1] if best else 0
            arms = ["original", "random"] + [a for a, v in best if v >= top - 1.0]
            todo = [(a, s, steps) for s in (0, 1, 2) for a in arms]
        elif args.stage == "power":
            todo = [(a, s, steps) for s in range(10) for a in ["original"] + [a for a, _ in best[:2]]]
        elif args.stage == "ft":  # fine-tuning: original, the best arm and the random encoder (scratch recipe)
            args.ft = True
            todo = [(a, s, steps) for s in (0, 1, 2) for a in ["original", best[0][0], "random"]]
        elif args.stage == "budget":  # does the gap grow with training? original and the best arm
            todo = [(a, s, n * steps) for n in (4, 8) for s in (0, 1) for a in ["original", best[0][0]]]
        else:
            raise ValueError(f"unknown stage {args.stage!r}")
    return pending(args, todo, records)


def pending(args, todo, records) -> list[tuple]:
    """The runs of `todo` not yet recorded (or recorded without the fine-tuning budget asked for)."""
    return [k for k in dict.fromkeys(todo) if k not in records or
            (args.ft and k[0] != "raw_pixels" and records[k].get("ft_epochs") != args.ft_epochs)]


def ranked_arms(records, steps) -> list[tuple]:
    """Arms other than original and the baselines, by mean headline metric at `steps`, best first."""
    by_arm = {}
    for (arm, _, st), r in records.items():
        if st == steps and arm in ARMS and arm != "original" and r.get(HEADLINE) is not None:
            by_arm.setdefault(arm, []).append(r[HEADLINE])
    return sorted(((a, statistics.fmean(v)) for a, v in by_arm.items()), key=lambda x: -x[1])


def fresh_seeds_only(args, todo) -> None:
    """A held-out run must use a seed that no validation record used: refuse before any work."""
    used = {s for (_, s, _) in read_records(Path(args.records), args.dataset, args.preset)}
    reused = sorted({s for a, s, _ in todo if s in used and a not in BASELINES})
    if reused:
        raise SystemExit(f"seeds {reused} already have validation records; the held-out confirmation needs fresh "
                         f"seeds (the preregistered ones are {HELDOUT_SEEDS[0]}-{HELDOUT_SEEDS[-1]})")


def run_stage(args) -> None:
    """Run what the stage still needs, one (arm, seed, steps) at a time. Several workers may share a
    records file: each run is claimed first (a lock beside the run folders, freed when its process
    ends) and the records are read again before every run, so a worker takes only what no other
    worker has done or is doing, and an interrupted stage resumes where it stopped."""
    out = Path(args.records)
    todo = plan(args, read_records(out, args.dataset, args.preset, args.split))
    if args.split == "heldout":
        fresh_seeds_only(args, todo)
    print(f"{len(todo)} runs to do: {', '.join(f'{a}/s{s}/{st}' for a, s, st in todo)}", flush=True)
    start, took, data = time.time(), [], None
    while True:
        est = statistics.median(took) if took else 0.0
        if args.budget_minutes and time.time() - start + est > 60 * args.budget_minutes:
            print(f"stopping: the next run (~{est / 60:.0f} min) would pass --budget-minutes {args.budget_minutes}")
            break
        records = read_records(out, args.dataset, args.preset, args.split)
        with claim_next(args, pending(args, todo, records)) as key:
            if key is None:
                break
            t0 = time.time()
            data = data or load_eval_data(arm_config("original", args, 0, key[2]), args.data_root, args.split)
            record = run_one(args, key, records.get(key), data)
            write_record(args, out, key, record)
            took.append(time.time() - t0)
            left = len(pending(args, todo, read_records(out, args.dataset, args.preset, args.split)))
            print(f"{key[0]} s{key[1]} {key[2]} steps: k-NN mean {record['knn_top1_mean']:.2f}, LP mean "
                  f"{record['lp_top1_mean']:.2f} ({took[-1]:.0f} s"
                  f"{', under load' if record.get('under_load', record.get('eval_under_load')) else ''})"
                  + (f"; {left} runs left, about {left * statistics.median(took) / 60:.0f} min of this worker's pace"
                     if left else ""), flush=True)


def run_one(args, key, prior: dict | None, data) -> dict:
    """One (arm, seed, steps): raw pixels or an arm, with the thread count of an earlier record of it,
    and refused if it adds to a record of another encoder."""
    arm, seed, steps = key
    with threads_of(prior):
        record = raw_pixel_record(args, steps, data, seed) if arm == "raw_pixels" else run_arm(arm, seed, steps, args, data)
    same_encoder(prior, record, key)
    return record


def write_record(args, out: Path, key, record: dict) -> None:
    """The record, and its per-image bits in a file of their own (so the records stay readable)."""
    head = {"dataset": args.dataset, "preset": args.preset, "split": args.split}
    if "correct" in record:
        append_record({**head, "arm": key[0], "seed": key[1], "steps": key[2], **record.pop("correct")},
                      correct_path(out))
    append_record({**head, **record}, out)


@contextlib.contextmanager
def claim_next(args, todo):
    """Yield the first run of `todo` that no other worker holds, holding its claim (an flock on
    runs_root/<dataset>/.claims/<run>.lock) until the block ends; None when every run is taken."""
    folder = Path(args.runs_root) / args.dataset / ".claims"
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


ENCODER_METRICS = ("lp_top1_mean", "knn_top1_mean", "lp_top1_cls", "knn_top1_cls")


@contextlib.contextmanager
def threads_of(prior: dict | None):
    """Run with the thread count an earlier record of the same run was made with (a run that adds to it,
    such as fine-tuning, may have to pretrain again, and CPU results are deterministic per thread count)."""
    before = torch.get_num_threads()
    if prior and prior.get("threads"):
        torch.set_num_threads(prior["threads"])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def same_encoder(prior: dict | None, record: dict, key) -> None:
    """A record that adds to an earlier one must describe the same encoder: its probe and k-NN equal the
    earlier record's, or nothing is recorded (the merged record would mix two different encoders)."""
    differ = [f"{m} {prior[m]:.4f} -> {record[m]:.4f}" for m in ENCODER_METRICS
              if prior and prior.get(m) is not None and record.get(m) != prior[m]]
    if differ:
        raise RuntimeError(f"{key}: the encoder evaluated now differs from its record ({', '.join(differ)}); "
                           "nothing recorded. Was it pretrained again with another thread count or code?")


HEALTH = ("effective_rank", "uniformity_wi", "uniformity_umae")  # pretrain.feature_health_of, last epoch


def last_health(run: Path) -> dict:
    """The feature health of a run's last epoch, from its log (empty for runs logged before it existed)."""
    rows = [r for r in read_jsonl(run / "log_epochs.jsonl") if "effective_rank" in r]
    return {k: rows[-1][k] for k in HEALTH} if rows else {}


def refresh_health(args) -> None:
    """Measure the feature health of every recorded run whose folder is here and whose record lacks
    it (the final encoder on the same 256 training images the per-epoch log uses), and append it to
    its record, on both splits."""
    from .data import load_dataset
    from .pretrain import HEALTH_IMAGES, feature_health_of, load_mae
    cfg = arm_config("original", args, 0, args.steps)
    images = load_dataset(args.dataset, "pretrain", args.data_root, max_images=HEALTH_IMAGES).images
    for split in EVAL_SPLITS:
        for (arm, seed, steps), r in read_records(Path(args.records), args.dataset, args.preset, split).items():
            run = Path(args.runs_root) / args.dataset / f"{arm}_s{seed}_{steps}"
            if "effective_rank" in r or not (run / "checkpoint_last.pt").exists():
                continue
            health = feature_health_of(load_mae(run)[0], images, cfg.model.img_size)
            append_record({"dataset": args.dataset, "preset": args.preset, "arm": arm, "seed": seed, "steps": steps,
                           "split": split, **health, "health_git_commit": git_commit()}, Path(args.records))
            print(f"{arm} s{seed} ({split}): effective rank {health['effective_rank']:.1f}")


def refresh_recon(args) -> None:
    """Recompute the reconstruction metrics of every recorded run whose folder is here, with the
    current code, and append them as records (later lines replace earlier values): for when a
    metric's definition changed after the runs."""
    records = read_records(Path(args.records), args.dataset, args.preset)
    _, test = load_eval_data(arm_config("original", args, 0, args.steps), args.data_root)
    for (arm, seed, steps), r in records.items():
        run = Path(args.runs_root) / args.dataset / f"{arm}_s{seed}_{steps}"
        if not (run / "checkpoint_last.pt").exists():
            continue
        res = recon_run(run, test, args.device, force=True)
        append_record({"dataset": args.dataset, "preset": args.preset, "arm": arm, "seed": seed, "steps": steps,
                       **{m: res[m] for m in ("nmse_masked", "psnr_masked", "psnr_masked_floor", "hf_error_masked",
                                              "hf_error_floor")}, "recon_git_commit": git_commit()}, Path(args.records))
        print(f"{arm} s{seed}: PSNR {res['psnr_masked']:.2f} (floor {res['psnr_masked_floor']:.2f})")


def verify(args) -> int:
    """Rerun recorded (arm, seed, steps) runs from scratch in a temporary folder and compare every
    accuracy with its record (fine-tuning too with --ft): the check that a committed number reproduces."""
    records = read_records(Path(args.records), args.dataset, args.preset, args.split)
    keys = [(a, s, args.steps) for a in args.arms or ["original"] for s in args.seeds or [0]]
    data, failed = None, 0
    with tempfile.TemporaryDirectory() as tmp:
        args.runs_root = tmp
        for key in keys:
            if key not in records:
                print(f"{key}: no record to compare with")
                failed += 1
                continue
            data = data or load_eval_data(arm_config("original", args, 0, key[2]), args.data_root, args.split)
            args.ft_epochs = records[key].get("ft_epochs") or args.ft_epochs  # at the record's own budget
            again = raw_pixel_record(args, key[2], data) if key[0] == "raw_pixels" else run_arm(*key, args, data)
            tuned = ("ft_top1",) if args.ft and records[key].get("ft_top1") is not None else ()
            differ = 0
            for m in ("lp_top1_mean", "lp_top1_cls", "knn_top1_mean", "knn_top1_cls", *tuned):
                same = again[m] == records[key][m]
                differ += not same
                print(f"{key[0]} s{key[1]} {key[2]}: {m} recorded {records[key][m]:.4f}, rerun {again[m]:.4f}"
                      f" {'same' if same else 'DIFFERENT'} (recorded with {records[key].get('threads')} threads, "
                      f"commit {str(records[key].get('git_commit'))[:7]})")
            failed += bool(differ)
            if getattr(args, "stamp", False) and not differ:  # the record now names code that reproduces it
                append_record({"dataset": args.dataset, "preset": args.preset, "split": args.split, "arm": key[0],
                               "seed": key[1], "steps": key[2], "verified_git_commit": git_commit(),
                               "verified_threads": torch.get_num_threads(), "verified_metrics": 4 + len(tuned),
                               "verified_date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")},
                              Path(args.records))
    return 1 if failed else 0



# ----------------------------------------------------------------------------- command line and notebooks
def build_parser(prog: str = "python -m maehelpers study") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "report", "verify", "refresh-recon", "refresh-health", "seeds"),
                   help="run: pretrain and evaluate what a stage or --arms asks for; report: tables, plots and "
                        "analyses from the records; verify: rerun records and compare; refresh-recon: recompute "
                        "reconstruction metrics; refresh-health: measure the feature health of recorded runs "
                        "that lack it; seeds: how many seeds an interval or effect needs")
    p.add_argument("--stage", default="dose",
                   help="dose | confirm | power | ft | budget | heldout | long (ignored with --arms)")
    p.add_argument("--split", choices=EVAL_SPLITS, default="validation",
                   help="score on test images 0..max_test-1 (validation) or the next max_test (heldout); "
                        "--stage heldout implies heldout")
    p.add_argument("--arms", nargs="+", help=f"arms: {', '.join([*ARMS, *BASELINES])}")
    p.add_argument("--arms-file", help="a JSON file {arm: [variant, {overrides}]} of arms of your own")
    p.add_argument("--import", dest="imports", nargs="+", default=[],
                   help="modules to import first (ones that register loss terms or mask schedules)")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 (heldout stage: the preregistered seeds)")
    p.add_argument("--steps", type=int, default=500, help="pretraining steps (a multiple of an epoch: 125 in ablation)")
    p.add_argument("--ft", action="store_true", help="also fine-tune (scratch recipe for the random arm)")
    p.add_argument("--ft-epochs", type=int, default=20,
                   help="fine-tuning epochs on the probe's training images (20: the smallest budget at which "
                        "fine-tuning passed its probe on the measured curve, benchmarks/ft_curve.py; the "
                        "records before it used 10)")
    p.add_argument("--budget-minutes", type=float, default=0, help="stop before a run that would not fit")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu (deterministic records) or cuda (with --preset ablation_gpu)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--preset", default="ablation")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--runs-root", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--records", default=str(RESULTS / "ablation_runs.jsonl"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--readme", help="report: also write the tables into this README, between its markers")
    p.add_argument("--stamp", action="store_true",
                   help="verify: append a 'verified' line (commit, date, threads) to each record that reproduced")
    p.add_argument("--interim", action="store_true",
                   help="report: analyse the held-out records before all registered runs are in")
    p.add_argument("--half-width", type=float, help="seeds: the 95 %% half-width wanted (points)")
    p.add_argument("--effect", type=float, help="seeds: the effect to detect (points; 5 %% two-sided, power 80 %%)")
    return p


def parse(argv=None, prog: str = "python -m maehelpers study") -> argparse.Namespace:
    """Parsed arguments with every check that needs no work: steps a multiple of an epoch, arms known."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    args.extra_arms = {k: tuple(v) for k, v in json.loads(Path(args.arms_file).read_text()).items()} \
        if args.arms_file else {}
    if args.stage in ("heldout", "long") and not args.arms:
        args.split = "heldout"
    if args.stage == "long" and not args.arms:  # as registered: 16,000 steps, fine-tuned, its monitor
        args.steps, args.ft, args.monitor = LONG_STEPS, True, LONG_MONITOR
    if args.steps % steps_per_epoch(args):
        p.error(f"--steps must be a multiple of {steps_per_epoch(args)} (one epoch of the preset)")
    for arm in args.arms or []:
        if arm not in BASELINES:
            arm_spec(arm, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def compare(arms: dict, seeds=(0, 1, 2), steps: int | None = 500, dataset: str = "fashion_mnist", preset: str = "ablation",
            records=None, runs_root=None, data_root=None, device: str = "cpu", metrics=(HEADLINE, "lp_top1_mean"),
            progress: bool = False) -> dict:
    """Run `original` and each of `arms` ({name: (variant, {dotted overrides})}) at the same seeds,
    budget and data (finished runs are reused), then return, per arm and metric, the paired
    difference to `original` (mean, 95 % interval, p, minimum detectable effect, seeds, and the
    per-seed differences). steps None: one epoch of the preset. Records and run folders go to
    runs_root (default runs/study), never to the project's committed records unless asked."""
    seeds, runs_root = tuple(seeds), Path(runs_root or "runs/study")
    records = records or runs_root / "records.jsonl"
    argv = ["run", "--arms", "original", *arms, "--seeds", *map(str, seeds), "--steps", str(steps or 0),
            "--dataset", dataset, "--preset", preset, "--device", device]
    for flag, value in (("--records", records), ("--runs-root", runs_root), ("--data-root", data_root)):
        argv += [flag, str(value)] if value is not None else []
    args = build_parser().parse_args(argv + ([] if progress else ["--quiet"]))
    args.extra_arms = {k: (v[0], dict(v[1])) for k, v in arms.items()}
    args.steps = steps = steps or steps_per_epoch(args)
    if args.steps % steps_per_epoch(args):
        raise ValueError(f"steps must be a multiple of {steps_per_epoch(args)} (one epoch of the preset)")
    Path(args.records).parent.mkdir(parents=True, exist_ok=True)
    run_stage(args)
    found = read_records(Path(args.records), dataset, preset)
    by_arm = lambda a, m: {s: r[m] for (arm, s, st), r in found.items()  # noqa: E731
                           if arm == a and st == steps and s in seeds and r.get(m) is not None}
    return {arm: {m: paired(by_arm("original", m), by_arm(arm, m)) for m in metrics} for arm in arms}
