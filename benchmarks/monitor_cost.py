"""What the k-NN monitor costs: the share of pretraining time it takes, in the `ablation` preset.

    python benchmarks/monitor_cost.py [--threads 1] [--steps 500] [--off] [--quick]

Pretrains `original` (preset ablation, Fashion-MNIST, 500 steps) with the monitor's defaults and
reports the seconds its points took (each point times itself) against the run's pretraining time,
both measured in the same run, so load on the machine moves both alike. --off also pretrains the
same run with the monitor off and reports the ratio of the two wall times (noisier under load).
--quick: the smoke preset on synthetic data (for the test). Results: benchmarks/results/monitor_cost.json.
"""
import argparse
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maehelpers.config import make_config  # noqa: E402
from maehelpers.generated import marks, replace_block  # noqa: E402
from maehelpers.monitor import MONITOR_KEYS  # noqa: E402
from maehelpers.devices import cpu_name  # noqa: E402
from maehelpers.pretrain import pretrain
from maehelpers.runs import git_commit, read_jsonl, save_json  # noqa: E402


DOC_MARKS = marks("monitor cost", "python benchmarks/monitor_cost.py")  # in docs/performance.md


def summary(out: dict) -> str:
    """The docs' sentence, from the JSON the command writes."""
    on, m = out["with_monitor"], out["monitor"]
    loaded = on["load_before"] > out["threads"] + 0.75 or on["load_after"] > out["threads"] + 0.75
    return (f"In the `{out['preset']}` preset ({out['steps']} steps of {out['dataset']}, {out['threads']} thread): "
            f"{on['points']} points of {m['queries']} queries against a bank of {m['bank']} took {on['monitor_s']:.1f} s "
            f"of {on['pretrain_s']:.1f} s of pretraining, **{100 * out['share_of_pretraining']:.1f} %** "
            f"(`{out['command']}`, {out['date']} UTC, {out['machine']}"
            + (f", 1-minute load {on['load_before']}-{on['load_after']}: measured under load; both times share it" if loaded else "")
            + "). The share is of the run's own time, so load moves both sides alike." + (
                f" With the monitor off the same run took {out['without_monitor']['pretrain_s']:.1f} s (wall ratio "
                f"{out['wall_ratio_on_off']:.3f})." if out.get("without_monitor") else ""))


def measure(cfg, run_dir, data_root) -> dict:
    load0 = os.getloadavg()[0]
    res = pretrain(cfg, run_dir, data_root=data_root, progress=False)
    points = [r for r in read_jsonl(Path(run_dir) / "log_epochs.jsonl") if MONITOR_KEYS[0] in r]
    return {"pretrain_s": res["pretrain_time_s"], "monitor_s": round(sum(r["monitor_s"] for r in points), 2),
            "points": len(points), "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=500, help="pretraining steps (a multiple of 125 in ablation)")
    p.add_argument("--off", action="store_true", help="also time the same run with the monitor off")
    p.add_argument("--quick", action="store_true", help="smoke preset, synthetic data (seconds)")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset, dataset = ("smoke", "synthetic") if args.quick else ("ablation", "fashion_mnist")
    base = make_config("original", preset, dataset)
    epochs = max(1, args.steps // (base.train.max_images // base.train.batch_size)) if not args.quick else 2
    cfg = make_config("original", preset, dataset, 0, {"train.epochs": epochs, "train.warmup_epochs": 0.05 * epochs,
                                                       "train.tensorboard": False})
    with tempfile.TemporaryDirectory() as tmp:
        on = measure(cfg, Path(tmp) / "on", args.data_root)
        off = measure(make_config("original", preset, dataset, 0, {"train.epochs": epochs, "train.monitor_points": 0,
                                                                   "train.warmup_epochs": 0.05 * epochs,
                                                                   "train.tensorboard": False}),
                      Path(tmp) / "off", args.data_root) if args.off else None
    t = cfg.train
    out = {"preset": preset, "dataset": dataset, "steps": epochs * (t.max_images // t.batch_size),
           "monitor": {"points": t.monitor_points, "bank": t.monitor_bank, "queries": t.monitor_queries},
           "with_monitor": on, "share_of_pretraining": round(on["monitor_s"] / on["pretrain_s"], 4),
           "without_monitor": off, "wall_ratio_on_off": round(on["pretrain_s"] / off["pretrain_s"], 4) if off else None,
           "threads": args.threads, "machine": cpu_name(), "torch": torch.__version__, "git_commit": git_commit(),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/monitor_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"monitor: {on['points']} points took {on['monitor_s']:.1f} s of {on['pretrain_s']:.1f} s of pretraining "
          f"({100 * out['share_of_pretraining']:.1f} %; load {on['load_before']}-{on['load_after']})"
          + (f"; wall time with / without: {out['wall_ratio_on_off']:.3f}" if off else ""))
    if not args.quick:
        save_json(out, Path(args.out) / "monitor_cost.json")
        replace_block(ROOT / "docs" / "performance.md", summary(out), DOC_MARKS)
    return out


if __name__ == "__main__":
    main()
