"""How long the series takes on this machine: the figures that every suggestion to a user quotes.

    bash scripts/install_fashion_mnist.sh && python benchmarks/series_time.py [--quick]

1. The CPU-sized real-data series, timed as a user runs it: `python -m maehelpers run --dataset
   fashion_mnist --preset ablation` (notebooks 00-05, in a scratch runs folder), wall time.
2. The set-up check: `python -m maehelpers run --dataset synthetic --preset smoke`.
3. The `paper` and `fast` presets are too long to run here for a figure; their duration is projected
   from measured step times at their sizes (pretraining step, fine-tuning step, feature extraction),
   times the steps that the series takes on STL-10 (both variants, fine-tuning of three encoders,
   features of the probe's images for three encoders). The projection says what it counts.

Writes maehelpers/measured_durations.json (package data: the messages of `python -m maehelpers run`
read it), with the machine, its load, torch's threads, the date and the commit, and the durations
table of docs/performance.md from it.
--quick: the smoke series and one step per timing, into a temporary file (a test of this script).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from maehelpers.config import make_config  # noqa: E402
from maehelpers import series  # noqa: E402
from maehelpers.generated import replace_block  # noqa: E402
from maehelpers.series import MEASURED_FILE  # noqa: E402
from maehelpers.model import MAE, ViTClassifier  # noqa: E402
from maehelpers.devices import cpu_name  # noqa: E402
from maehelpers.runs import git_commit  # noqa: E402
from speed import step_fn, timed  # noqa: E402

STL10 = {"pretrain_images": 100_000, "probe_train": 5_000, "probe_test": 8_000}  # the unlabeled, train, test splits


def timed_series(dataset: str, preset: str, runs_root: Path) -> dict:
    """Run the series as a user would (one command, notebooks 00-05) and time it."""
    command = ["python", "-m", "maehelpers", "run", "--dataset", dataset, "--preset", preset]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *command[1:], "--runs-root", str(runs_root)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    total = round(time.perf_counter() - t0, 1)
    print(f"{dataset}/{preset}: {total:.0f} s", flush=True)
    return {"command": " ".join(command), "dataset": dataset, "preset": preset, "total_s": total}


def _median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    return statistics.median(timed(step) for _ in range(repeats))


def step_times(preset: str, repeats: int) -> dict:
    """Median seconds of one pretraining step, one fine-tuning step and one feature batch (fp32, CPU)."""
    cfg = make_config("original", preset)
    m, t, e = cfg.model, cfg.train, cfg.eval
    torch.manual_seed(0)
    mae, clf = MAE(**asdict(m)), ViTClassifier(10, drop_path=e.ft_drop_path, **asdict(m))
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-4)
    x_pre, x_ft = torch.randn(t.batch_size, 3, m.img_size, m.img_size), torch.randn(e.batch_size, 3, m.img_size, m.img_size)
    labels = torch.randint(0, 10, (e.batch_size,))

    pretrain_step = step_fn(mae, "ours", x_pre, torch.device("cpu"))  # benchmarks/speed.py's step, mask 0.75

    def ft_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x_ft), labels).backward()
        opt.step()

    @torch.no_grad()
    def features():
        mae.forward_encoder(x_ft, 0.0)

    return {"pretrain_step_s": _median_seconds(pretrain_step, repeats), "pretrain_batch": t.batch_size,
            "ft_step_s": _median_seconds(ft_step, repeats), "ft_batch": e.batch_size,
            "features_batch_s": _median_seconds(features, repeats), "features_batch": e.batch_size}


def projection(preset: str, steps: dict) -> dict:
    """The series on STL-10 on this CPU: both variants pretrained, three encoders (original, improved,
    scratch) fine-tuned and encoded for the probes. Not counted: the download, the probes on cached
    features and the reconstruction metrics (seconds each, see benchmarks/speed.py)."""
    cfg = make_config("original", preset)
    per_epoch = STL10["pretrain_images"] // cfg.train.batch_size
    pretrain_s = 2 * cfg.train.epochs * per_epoch * steps["pretrain_step_s"]
    ft_s = 3 * cfg.eval.ft_epochs * (STL10["probe_train"] // cfg.eval.batch_size) * steps["ft_step_s"]
    feats_s = 3 * (STL10["probe_train"] + STL10["probe_test"]) / cfg.eval.batch_size * steps["features_batch_s"]
    return {"preset": preset, "dataset": "stl10", **{k: round(v, 4) for k, v in steps.items()},
            "pretrain_s": round(pretrain_s), "finetune_s": round(ft_s), "features_s": round(feats_s),
            "total_s": round(pretrain_s + ft_s + feats_s),
            "counts": "2 variants pretrained + 3 encoders fine-tuned and encoded; not the download, probes or recon"}


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke series and one step per timing (a test)")
    p.add_argument("--out", default=None, help=f"default: {MEASURED_FILE} (--quick: a temporary file)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) / "durations.json" if args.quick else MEASURED_FILE)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        timings = [timed_series("synthetic", "smoke", Path(tmp) / "smoke")]
        if not args.quick:
            timings.append(timed_series("fashion_mnist", "ablation", Path(tmp) / "ablation"))
    presets = ("smoke",) if args.quick else ("fast", "paper")
    projected = [projection(p, step_times(p, 1 if args.quick else 5)) for p in presets]
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
              "machine": machine(), "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "series": {s["preset"]: s for s in timings}, "projected_cpu": {p["preset"]: p for p in projected},
              "command": "python benchmarks/series_time.py"}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if out == MEASURED_FILE:  # the docs quote what was just measured
        series.measured.cache_clear()
        replace_block(ROOT / "docs" / "performance.md", series.durations_table(), series.DURATIONS_MARKS)
        print("docs/performance.md: the durations table rewritten")
    return result


if __name__ == "__main__":
    main()
