"""The ablation study: which of the improved variant's additions helps, at which strength, by how much.

    python benchmarks/ablation.py run --stage dose            # every arm, seed 0 (about 1.5 h on 2 cores)
    python benchmarks/ablation.py run --stage confirm         # 3 seeds for arms within 1 point of the best
    python benchmarks/ablation.py run --stage power           # seeds 0-9 for original and the best two arms
    python benchmarks/ablation.py run --stage ft              # fine-tuning (10 epochs): original, best arm, scratch; 3 seeds
    python benchmarks/ablation.py run --stage budget          # original and best arm at 4x and 8x the steps
    python benchmarks/ablation.py run --arms original unif_umae_mean_100x --seeds 0 1 2 --steps 2000
    python benchmarks/ablation.py report --readme README.md   # tables and plots from the records
    python benchmarks/ablation.py verify --arms original --seeds 0   # rerun a record, compare the numbers
    python benchmarks/ablation.py verify --arms random --seeds 0 --ft --threads 1   # fine-tuning included
    python benchmarks/ablation.py refresh-recon               # recompute recorded runs' reconstruction metrics
    python benchmarks/ablation.py run --device cuda --preset ablation_gpu --steps 23400 --arms original ...

Every run appends one JSON line to benchmarks/results/ablation_runs.jsonl (arm, variant, overrides,
seed, steps, probe and k-NN top-1 on cls and mean-pooled features, fine-tuning top-1 or null,
reconstruction metrics, pretraining time, load, git commit). `report` regenerates
ablation_<dataset>.{json,md,png} from those lines alone, so the study grows over sessions and anyone
can rerun any line: a run whose (arm, seed, steps) already has a record is skipped, `--budget-minutes`
stops before a run that would not fit, and results on CPU are deterministic for a given thread count.

Protocol: every arm gets the same data, model, steps, probe and evaluation masks (matched by STEPS,
not compute; the time column says what each costs). Headline: k-NN and linear probe on the MEAN of
the patch tokens, chosen before the runs because (1) the official fine-tuning reads the same pooled
feature, (2) the uniformity term acts on it, and (3) pretraining gives the cls token no target of its
own; the cls-token numbers are kept beside it. Differences to `original` are paired by seed, with a
95 % t interval. Baselines are records too: `random` (the same encoder untrained) and `raw_pixels`.
"""
import argparse
import base64
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maehelpers.config import make_config, to_dict  # noqa: E402
from maehelpers.data import FASHION_SYSTEM_DIR  # noqa: E402
from maehelpers.evaluate import (POOLS, cached_features, evaluate_run, knn_predict, linear_probe,  # noqa: E402
                                 load_eval_data, make_scratch_run, raw_pixel_baseline, recon_run, run_config)
from maehelpers.masking import mask_ratio_at  # noqa: E402
from maehelpers.pretrain import build_model, cpu_name, pretrain  # noqa: E402
from maehelpers.runs import git_commit, read_jsonl, read_results, save_json  # noqa: E402
from speed import flops_per_step  # noqa: E402

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


def arm_config(arm: str, args, seed: int, steps: int):
    variant, overrides = ARMS[arm]
    epochs = steps // steps_per_epoch(args)
    return make_config(variant, args.preset, args.dataset, seed, {
        **overrides, "train.epochs": epochs, "train.warmup_epochs": 0.05 * epochs, "eval.pool": "mean"})


def run_arm(arm: str, seed: int, steps: int, args, data) -> dict:
    """Pretrain (resuming if interrupted), evaluate on args.split and describe one (arm, seed, steps)."""
    run = Path(args.runs_root) / args.dataset / f"{arm}_s{seed}_{steps}"
    if arm == "random":
        cfg = arm_config("original", args, seed, steps)
        make_scratch_run(cfg, run, seed)
        overrides, load, reused = {}, [os.getloadavg()[0]], False
    else:
        cfg = arm_config(arm, args, seed, steps)
        overrides = ARMS[arm][1]
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
            **{m: res.get(m) for m in METRICS}, "ft_recipe": (res.get("ft") or {}).get("recipe"),
            "ft_epochs": args.ft_epochs if args.ft else None,
            "eval_time_s": round(time.time() - t0, 1), **provenance, **bits}


def correctness(run, data, res: dict, device) -> dict:
    """Per scored image, whether each probe was right, as packed bits (base64): what the bootstrap
    over test images resamples. Recomputed from the run's cached features with the same seeds, and
    checked against the recorded top-1, so the bits are the record's own predictions."""
    train, test = data
    cfg = run_config(run)
    e = cfg.eval
    feats = {split: cached_features(run, d, split, e.batch_size, device, False) for split, d in (("train", train), ("test", test))}
    out = {"n": len(test)}
    for pool in POOLS:
        tr, te = feats["train"][pool], feats["test"][pool]
        right = {"knn": knn_predict(tr, train.labels, te, e.knn_k, e.knn_t) == test.labels,
                 "lp": linear_probe(tr, train.labels, te, test.labels, e.lp_epochs, e.batch_size, e.lp_lr, cfg.seed,
                                    device, False, predict=True)["pred"] == test.labels}
        for probe, ok in right.items():
            name = f"{probe}_top1_{pool}"
            if abs(100.0 * ok.float().mean().item() - res[name]) > 1e-9:
                raise RuntimeError(f"{run.name}: {name} recomputed {100 * ok.float().mean().item():.4f} differs from "
                                   f"its record {res[name]:.4f}; the probe is not deterministic here")
            out[name] = pack_bits(ok)
    return out


def pack_bits(ok: torch.Tensor) -> str:
    return base64.b64encode(np.packbits(ok.numpy().astype(np.uint8)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def correct_path(records) -> Path:
    """Where the per-image correctness of the held-out records lives: beside the records."""
    records = Path(records)
    return records.with_name(records.stem + "_correct.jsonl")


def raw_pixel_record(args, steps: int, data) -> dict:
    """Linear probe and k-NN on the normalised pixels themselves (the same value under both pools)."""
    raw = raw_pixel_baseline(arm_config("original", args, 0, steps), *data, device=args.device)
    return {"arm": "raw_pixels", "variant": None, "overrides": {}, "seed": 0, "steps": steps,
            **{m: None for m in METRICS}, "lp_top1_mean": raw["lp_top1"], "lp_top1_cls": raw["lp_top1"],
            "knn_top1_mean": raw["knn_top1"], "knn_top1_cls": raw["knn_top1"], **_provenance([os.getloadavg()[0]])}


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
        merged[key] = {**merged.get(key, {}), **{k: v for k, v in r.items() if v is not None}}
    return merged


def append_record(record: dict, path) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- stages
def plan(args, records) -> list[tuple]:
    """The (arm, seed, steps) runs that a stage asks for, finished ones left out."""
    steps = args.steps
    if args.arms:
        todo = [(a, s, steps) for s in args.seeds or [0] for a in args.arms]
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
    want_ft = args.ft
    return [k for k in dict.fromkeys(todo)
            if k not in records or (want_ft and k[0] != "raw_pixels" and records[k].get("ft_epochs") != args.ft_epochs)]


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
    out = Path(args.records)
    records = read_records(out, args.dataset, args.preset, args.split)
    todo = plan(args, records)
    if args.split == "heldout":
        fresh_seeds_only(args, todo)
    print(f"{len(todo)} runs to do: {', '.join(f'{a}/s{s}/{st}' for a, s, st in todo)}", flush=True)
    start, took = time.time(), []
    data = None
    for arm, seed, steps in todo:
        est = statistics.median(took) if took else 0.0
        if args.budget_minutes and time.time() - start + est > 60 * args.budget_minutes:
            print(f"stopping: the next run (~{est / 60:.0f} min) would pass --budget-minutes {args.budget_minutes}")
            break
        t0 = time.time()
        data = data or load_eval_data(arm_config("original", args, 0, steps), args.data_root, args.split)
        record = raw_pixel_record(args, steps, data) if arm == "raw_pixels" else run_arm(arm, seed, steps, args, data)
        head = {"dataset": args.dataset, "preset": args.preset, "split": args.split}
        if "correct" in record:  # per-image bits in a file of their own, so the records stay readable
            append_record({**head, "arm": arm, "seed": seed, "steps": steps, **record.pop("correct")},
                          correct_path(out))
        append_record({**head, **record}, out)
        took.append(time.time() - t0)
        print(f"{arm} s{seed} {steps} steps: k-NN mean {record['knn_top1_mean']:.2f}, LP mean "
              f"{record['lp_top1_mean']:.2f} ({took[-1]:.0f} s{', under load' if record.get('under_load', record.get('eval_under_load')) else ''})",
              flush=True)


# ----------------------------------------------------------------------------- statistics
# two-sided 95 % and one-sided 80 % quantiles of Student's t by degrees of freedom (normal beyond 30)
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
T_80 = [1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868,
        0.866, 0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855,
        0.854, 0.854]


def t_quantile(table, df: int, normal: float) -> float:
    return table[df - 1] if 1 <= df <= len(table) else normal


def paired(base: dict, arm: dict) -> dict | None:
    """Paired difference arm - base over the seeds both have: mean, 95 % t half-width, n, and the
    minimum detectable effect (two-sided 5 %, power 80 %) at that n. None without a shared seed."""
    seeds = sorted(set(base) & set(arm))
    if not seeds:
        return None
    d = [arm[s] - base[s] for s in seeds]
    n, mean = len(d), statistics.fmean(d)
    if n < 2:
        return {"diff": mean, "ci95": None, "n": n, "mde": None}
    se = statistics.stdev(d) / math.sqrt(n)
    return {"diff": mean, "ci95": t_quantile(T_975, n - 1, 1.960) * se, "n": n,
            "mde": (t_quantile(T_975, n - 1, 1.960) + t_quantile(T_80, n - 1, 0.842)) * se}


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
                row[f"{m}_vs_original"] = paired({s: r[m] for s, r in base.items() if r.get(m) is not None}, vals)
        row["ft_epochs"] = next((r["ft_epochs"] for r in by_seed.values() if r.get("ft_epochs")), None)
        row["under_load"] = any(r.get("under_load") for r in by_seed.values())
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- compute
def pretrain_flops(arm: str, args, steps: int) -> float:
    """Training FLOPs of one run (forward + backward, torch's flop counter), summed over its mask-ratio
    schedule: a step's count depends only on how many patches stay visible."""
    cfg = arm_config(arm, args, 0, steps)
    model, L = build_model(cfg), (cfg.model.img_size // cfg.model.patch_size) ** 2
    imgs = torch.zeros(1, 3, cfg.model.img_size, cfg.model.img_size)
    by_keep, total = {}, 0.0
    for step in range(steps):
        ratio = mask_ratio_at(step / steps, cfg.variant)
        keep = int(L * (1 - ratio))
        if keep not in by_keep:
            by_keep[keep] = flops_per_step(lambda: model(imgs, ratio)[0].backward())
        total += by_keep[keep] * cfg.train.batch_size
    return total


def compute_matched(rows, args, arm: str = "curriculum", steps: int = 500) -> dict | None:
    """`arm` against original at equal training FLOPs: the arm's k-NN at `steps` against original's
    mean k-NN at the steps with the same FLOPs, interpolated linearly in log(steps) between the two
    nearest budgets that original has been run at (a reading of its learning curve, not a run)."""
    curve = sorted((r["steps"], r[HEADLINE]) for r in rows if r["arm"] == "original" and r.get(HEADLINE) is not None)
    mine = next((r for r in rows if r["arm"] == arm and r["steps"] == steps and r.get(HEADLINE) is not None), None)
    if mine is None or len(curve) < 2:
        return None
    ratio = pretrain_flops(arm, args, steps) / pretrain_flops("original", args, steps)
    target = steps * ratio
    (s0, a0), (s1, a1) = next(((p, q) for p, q in zip(curve, curve[1:]) if p[0] <= target <= q[0]), curve[:2])
    matched = a0 + (a1 - a0) * math.log(target / s0) / math.log(s1 / s0)
    return {"arm": arm, "steps": steps, "flops_ratio": ratio, "original_steps_at_equal_flops": target,
            "original_at_equal_flops": matched, "arm_value": mine[HEADLINE], "diff_at_equal_flops": mine[HEADLINE] - matched,
            "diff_at_equal_steps": (mine.get(f"{HEADLINE}_vs_original") or {}).get("diff"),
            "interpolated_between": [s0, s1], "seeds": mine["seeds"]}


# ----------------------------------------------------------------------------- report
def fmt_value(row, m, digits=2) -> str:
    if row.get(m) is None:
        return ""
    sd = row.get(f"{m}_sd")
    return f"{row[m]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def fmt_diff(row, m) -> str:
    p = row.get(f"{m}_vs_original")
    if not p:
        return ""
    return f"{p['diff']:+.2f}" + (f" ± {p['ci95']:.2f}" if p["ci95"] is not None else " (1 seed)")


def markdown(rows) -> str:
    head = ("| arm | steps | seeds | k-NN mean | Δ vs original | LP mean | Δ vs original | k-NN cls | Δ | LP cls | Δ "
            "| FT | nMSE masked | PSNR (floor) | pretrain s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        time_s = fmt_value(r, "pretrain_time_s", 0) + (" *" if r["under_load"] and r.get("pretrain_time_s") else "")
        lines.append(f"| {r['arm']} | {r['steps']} | {len(r['seeds'])} | {fmt_value(r, 'knn_top1_mean')} | "
                     f"{fmt_diff(r, 'knn_top1_mean')} | {fmt_value(r, 'lp_top1_mean')} | {fmt_diff(r, 'lp_top1_mean')} | "
                     f"{fmt_value(r, 'knn_top1_cls')} | {fmt_diff(r, 'knn_top1_cls')} | {fmt_value(r, 'lp_top1_cls')} | "
                     f"{fmt_diff(r, 'lp_top1_cls')} | {fmt_value(r, 'ft_top1')} | {fmt_value(r, 'nmse_masked', 3)} | "
                     f"{fmt_psnr(r)} | {time_s} |")
    return "\n".join(lines) + ("\n\nΔ: paired by seed, mean ± 95 % t half-width; '(1 seed)' has no interval. "
                               "* timing taken while the machine was under load.\n")


def fmt_psnr(row) -> str:
    return f"{row['psnr_masked']:.2f} ({row['psnr_masked_floor']:.2f})" if row.get("psnr_masked") is not None else ""


def table(head: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(cells) + " |" for cells in lines)])


def arm_table(rows, steps: int) -> str:
    """Every arm at one budget: both probes on the mean pool, the cls-token differences, reconstruction."""
    return table(["arm", "seeds", "k-NN, mean pool", "Δ vs original", "LP, mean pool", "Δ", "k-NN, cls Δ", "LP, cls Δ",
                  "nMSE masked", "PSNR masked (floor)"],
                 [[r["arm"], str(len(r["seeds"])), fmt_value(r, "knn_top1_mean"), fmt_diff(r, "knn_top1_mean"),
                   fmt_value(r, "lp_top1_mean"), fmt_diff(r, "lp_top1_mean"), fmt_diff(r, "knn_top1_cls"),
                   fmt_diff(r, "lp_top1_cls"), fmt_value(r, "nmse_masked", 3), fmt_psnr(r)]
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
    """Fine-tuning where it was run; the random encoder is fine-tuned with the scratch recipe."""
    return table(["arm", "steps", "seeds", "fine-tuning top-1", "Δ vs original", "recipe"],
                 [[r["arm"], str(r["steps"]), str(r["ft_top1_n"]), fmt_value(r, "ft_top1"), fmt_diff(r, "ft_top1"),
                   f"{'scratch, no layer-wise decay' if r['arm'] == 'random' else 'layer-wise decay'}, "
                   f"{r.get('ft_epochs')} epochs"]
                  for r in rows if r.get("ft_top1") is not None])


def readme_tables(rows) -> str:
    """The README's tables, generated from the summary rows: every arm at the shortest budget,
    the learning curve, and fine-tuning where run."""
    base = min((r["steps"] for r in rows), default=0)
    parts = [f"Per arm, at {base} steps:", arm_table(rows, base), "By budget (the learning curve):", budget_table(rows)]
    if any(r.get("ft_top1") is not None for r in rows):
        parts += ["Fine-tuning:", ft_table(rows)]
    return "\n\n".join(parts) + "\n"


README_MARKS = ("<!-- ablation tables: generated by `python benchmarks/ablation.py report --readme README.md` -->",
                "<!-- end of generated ablation tables -->")


def replace_readme_tables(path, tables: str) -> None:
    """Put `tables` between the README's two markers, leaving everything else as it is."""
    text = Path(path).read_text()
    start, end = (text.find(m) for m in README_MARKS)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no block between {README_MARKS[0]!r} and {README_MARKS[1]!r}")
    Path(path).write_text(text[:start + len(README_MARKS[0])] + "\n\n" + tables + "\n" + text[end:])


def matched_markdown(m) -> str:
    if not m:
        return ""
    return (f"\nCompute-matched: {m['arm']} at {m['steps']} steps costs {m['flops_ratio']:.3f}x the training FLOPs "
            f"of original; original at {m['original_steps_at_equal_flops']:.0f} steps (interpolated in log steps "
            f"between its {m['interpolated_between'][0]}- and {m['interpolated_between'][1]}-step runs) scores "
            f"{m['original_at_equal_flops']:.2f} k-NN, so {m['arm']} is {m['diff_at_equal_flops']:+.2f} at equal "
            f"FLOPs ({m['diff_at_equal_steps']:+.2f} at equal steps; seeds {m['seeds']}).\n")


def plot(rows, path, steps: int) -> None:
    """Paired differences to `original` (k-NN and linear probe; mean pool filled, cls hollow),
    with 95 % intervals and a zero line: what each arm changes, not absolute accuracies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = [r for r in rows if r["steps"] == steps and r["arm"] not in ("original", "raw_pixels")
            and r.get("knn_top1_mean_vs_original")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.32 * len(arms) + 1.6), dpi=100, sharey=True)
    for ax, metric in zip(axes, ("knn_top1", "lp_top1")):
        for y, r in enumerate(arms):
            for pool, style in (("mean", dict(color="C0")), ("cls", dict(color="C1", mfc="none"))):
                p = r.get(f"{metric}_{pool}_vs_original")
                if p:
                    off = -0.15 if pool == "mean" else 0.15
                    ax.errorbar(p["diff"], y + off, xerr=p["ci95"] or 0, fmt="o", ms=4, capsize=2,
                                label=f"{pool} pool" if y == 0 else None, **style)
        ax.axvline(0, color="k", lw=0.8)
        base, raw = (next((r for r in rows if r["steps"] == steps and r["arm"] == a), {}) for a in ("original", "raw_pixels"))
        if raw.get(f"{metric}_mean") is not None and base.get(f"{metric}_mean") is not None:
            ax.axvline(raw[f"{metric}_mean"] - base[f"{metric}_mean"], color="0.5", ls="--", lw=0.8,
                       label="raw pixels")
        ax.set_title(f"{'k-NN' if metric == 'knn_top1' else 'linear probe'}: top-1 minus original (points)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(arms)), [f"{r['arm']} (n={len(r['seeds'])})" for r in arms], fontsize=7)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{steps} steps; whiskers: paired 95 % t interval over seeds (none with one seed)", fontsize=9)
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
    import tempfile
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
            again = raw_pixel_record(args, key[2], data) if key[0] == "raw_pixels" else run_arm(*key, args, data)
            tuned = ("ft_top1",) if args.ft and records[key].get("ft_top1") is not None else ()
            for m in ("lp_top1_mean", "lp_top1_cls", "knn_top1_mean", "knn_top1_cls", *tuned):
                same = again[m] == records[key][m]
                failed += not same
                print(f"{key[0]} s{key[1]} {key[2]}: {m} recorded {records[key][m]:.4f}, rerun {again[m]:.4f}"
                      f" {'same' if same else 'DIFFERENT'} (recorded with {records[key].get('threads')} threads, "
                      f"commit {str(records[key].get('git_commit'))[:7]})")
    return 1 if failed else 0


def report(args) -> Path:
    records = read_records(Path(args.records), args.dataset, args.preset)
    rows = summarise(records)
    stem = Path(args.out) / f"ablation_{args.dataset}{'' if args.preset == 'ablation' else '_' + args.preset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    steps = sorted({r["steps"] for r in rows if r["steps"]})
    config = arm_config("original", args, 0, steps[0] if steps else 500)
    matched = compute_matched(rows, args)
    save_json({"dataset": args.dataset, "preset": args.preset, "headline": HEADLINE, "rows": rows,
               "records": len(records), "config_of_original": to_dict(config), "compute_matched": matched,
               "command": "python benchmarks/ablation.py report"}, stem.with_suffix(".json"))
    tables = readme_tables(rows)
    stem.with_suffix(".md").write_text(markdown(rows) + matched_markdown(matched) + "\n" + tables)
    if args.readme:
        replace_readme_tables(args.readme, tables)
    for st in steps:
        plot(rows, stem.parent / f"{stem.name}_{st}.png", st)
    plot_budget(rows, stem.parent / f"{stem.name}_budget.png")
    print(stem.with_suffix(".md").read_text())
    return stem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "report", "verify", "refresh-recon"))
    p.add_argument("--stage", default="dose",
                   help="dose | confirm | power | ft | budget | heldout (ignored with --arms)")
    p.add_argument("--split", choices=("validation", "heldout"), default="validation",
                   help="score on test images 0..max_test-1 (validation) or the next max_test (heldout); "
                        "--stage heldout implies heldout")
    p.add_argument("--arms", nargs="+", choices=list(ARMS) + list(BASELINES))
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 (heldout stage: the preregistered seeds)")
    p.add_argument("--steps", type=int, default=500, help="pretraining steps (a multiple of an epoch: 125 in ablation)")
    p.add_argument("--ft", action="store_true", help="also fine-tune (scratch recipe for the random arm)")
    p.add_argument("--ft-epochs", type=int, default=10, help="fine-tuning epochs on the probe's training images "
                                                             "(the ablation preset's 2 leave it far below the probe)")
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
    p.add_argument("--readme", help="also write the tables into this README, between its markers")
    args = p.parse_args(argv)
    if args.stage == "heldout" and not args.arms:
        args.split = "heldout"
    if args.steps % steps_per_epoch(args):
        p.error(f"--steps must be a multiple of {steps_per_epoch(args)} (one epoch of the preset)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "verify":
        return verify(args)
    if args.command == "refresh-recon":
        refresh_recon(args)
    if args.command == "run":
        if args.dataset == "fashion_mnist" and not FASHION_SYSTEM_DIR.exists():
            subprocess.run(["bash", str(ROOT / "scripts" / "install_fashion_mnist.sh")], check=True)
        run_stage(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
