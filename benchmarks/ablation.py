"""Ablation of the three improvements on real images, several seeds, paired by seed.

    python benchmarks/ablation.py                       # Fashion-MNIST (Debian package), 3 seeds
    python benchmarks/ablation.py --dataset stl10 --preset fast --seeds 0 1 2

Every variant gets the same data, model, step budget (runs are matched by STEPS, not compute: the
curriculum sees more visible patches early and costs more time, which the table reports), probe,
and evaluation masks. Reported per variant: linear-probe and k-NN top-1 (mean and sd over seeds),
the paired difference to `original` with a 95 % t interval, masked-region PSNR, pretraining time.
Baselines under the same probe: a randomly initialised encoder (per seed) and raw pixels.
Fine-tuning is left out here for time (see notebooks 04). Runs are resumable: finished ones are
reused, so an interrupted ablation continues where it stopped.

Results: benchmarks/results/ablation_<dataset>.{json,md,png}.
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maehelpers.config import make_config, to_dict  # noqa: E402
from maehelpers.data import FASHION_SYSTEM_DIR, prepare  # noqa: E402
from maehelpers.evaluate import (evaluate_run, knn_top1, linear_probe, load_eval_data, make_scratch_run,  # noqa: E402
                                 recon_run)
from maehelpers.pretrain import device_name, pretrain  # noqa: E402
from maehelpers.runs import read_results, save_json  # noqa: E402
from maehelpers.viz import plot_results  # noqa: E402

VARIANTS = ["original", "curriculum", "laplacian", "uniformity", "uniformity_umae", "improved"]
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_sd(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def paired_diff(a, b):
    """Mean of b - a over seeds and its 95 % t interval half-width (None with one seed)."""
    d = [y - x for x, y in zip(a, b)]
    m, sd = mean_sd(d)
    half = T_975.get(len(d) - 1, 1.96) * sd / math.sqrt(len(d)) if len(d) > 1 else None
    return m, half


def raw_pixel_baseline(cfg, train, test, seed):
    size = cfg.model.img_size
    tr = prepare(train.images, size).flatten(1)
    te = prepare(test.images, size).flatten(1)
    e = cfg.eval
    return {"lp_top1": linear_probe(tr, train.labels, te, test.labels, e.lp_epochs, e.batch_size, e.lp_lr, seed,
                                    progress=False)["top1"],
            "knn_top1": knn_top1(tr, train.labels, te, test.labels, e.knn_k, e.knn_t)}


def run_all(args) -> dict:
    runs_root = Path(args.runs_root) / args.dataset
    per_run = {}
    data = None
    for seed in args.seeds:
        for variant in args.variants:
            cfg = make_config(variant, args.preset, args.dataset, seed)
            run = runs_root / f"{variant}_s{seed}"
            if read_results(run).get("status") != "done":
                t0 = time.time()
                pretrain(cfg, run, data_root=args.data_root, progress=not args.quiet)
                print(f"{run.name}: pretrained in {time.time() - t0:.0f} s", flush=True)
            data = data or load_eval_data(cfg, args.data_root)
            evaluate_run(run, args.data_root, ("lp", "knn"), data=data, progress=False)
            if "psnr_masked" not in read_results(run):
                recon_run(run, data[1])
            per_run[(variant, seed)] = read_results(run)
        cfg = make_config("original", args.preset, args.dataset, seed)
        scratch = make_scratch_run(cfg, runs_root / f"random_s{seed}", seed)
        evaluate_run(scratch, args.data_root, ("lp", "knn"), data=data, progress=False)
        per_run[("random encoder", seed)] = read_results(scratch)
        print(f"seed {seed} done", flush=True)
    raw = raw_pixel_baseline(make_config("original", args.preset, args.dataset), *data, seed=0)
    return summarise(args, per_run, raw, data)


def summarise(args, per_run, raw, data) -> dict:
    names = list(args.variants) + ["random encoder"]
    rows, errors = [], {}
    orig = {m: [per_run[("original", s)][m] for s in args.seeds] for m in ("lp_top1", "knn_top1")}
    for name in names:
        row = {"run": name, "seeds": len(args.seeds)}
        for metric in ("lp_top1", "knn_top1", "psnr_masked", "pretrain_time_s"):
            vals = [per_run[(name, s)].get(metric) for s in args.seeds]
            if None in vals:
                continue
            row[metric], row[f"{metric}_sd"] = mean_sd(vals)
            if metric in orig and name != "original" and "original" in args.variants:
                row[f"{metric}_diff"], row[f"{metric}_ci95"] = paired_diff(orig[metric], vals)
            errors[(name, metric)] = row[f"{metric}_sd"]
        rows.append(row)
    rows.append({"run": "raw pixels", "seeds": 1, **raw})
    cfg = make_config(args.variants[0], args.preset, args.dataset)
    margin = {}
    if "original" in args.variants and len(args.seeds) > 1:
        o, r = rows[names.index("original")], rows[names.index("random encoder")]
        for m in ("lp_top1", "knn_top1"):
            sd = max(o[f"{m}_sd"], r[f"{m}_sd"], 1e-9)
            margin[m] = {"gap": o[m] - r[m], "gap_in_sd": (o[m] - r[m]) / sd, "clear": o[m] - r[m] > 3 * sd}
    return {"dataset": args.dataset, "preset": args.preset, "seeds": list(args.seeds), "rows": rows,
            "original_vs_random": margin, "n_train_probe": len(data[0]), "n_test": len(data[1]),
            "config": to_dict(cfg), "matched_by": "steps",
            "machine": device_name(torch.device("cpu")),
            "torch": torch.__version__, "command": " ".join(sys.argv)}, errors


def write(summary, errors, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"ablation_{summary['dataset']}"
    save_json(summary, stem.with_suffix(".json"))

    def pm(row, m, digits=2):
        if m not in row:
            return "-"
        sd = row.get(f"{m}_sd")
        return f"{row[m]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None and row["seeds"] > 1 else "")

    def diff(row, m):
        if f"{m}_diff" not in row:
            return "-"
        ci = row[f"{m}_ci95"]
        return f"{row[f'{m}_diff']:+.2f}" + (f" ± {ci:.2f}" if ci is not None else "")

    lines = ["| variant | LP top-1 | Δ LP vs original (95% CI) | k-NN top-1 | Δ k-NN vs original (95% CI) "
             "| masked PSNR (dB) | pretrain time (s) |", "|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        lines.append(f"| {row['run']} | {pm(row, 'lp_top1')} | {diff(row, 'lp_top1')} | {pm(row, 'knn_top1')} | "
                     f"{diff(row, 'knn_top1')} | {pm(row, 'psnr_masked')} | {pm(row, 'pretrain_time_s', 0)} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot_results(summary["rows"], stem.with_suffix(".png"), metrics=("lp_top1", "knn_top1"), errors=errors)
    return stem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--preset", default="ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--runs-root", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.dataset == "fashion_mnist" and not FASHION_SYSTEM_DIR.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "install_fashion_mnist.sh")], check=True)
    t0 = time.time()
    summary, errors = run_all(args)
    summary["total_time_s"] = round(time.time() - t0, 1)
    stem = write(summary, errors, Path(args.out))
    print(stem.with_suffix(".md").read_text())
    print(json.dumps(summary["original_vs_random"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
