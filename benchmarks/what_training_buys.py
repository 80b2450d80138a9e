"""What training buys, in one picture: the same test images under the same masks, reconstructed by
the same arm and seed after 500 and after 16,000 pretraining steps (the study's long-budget stage).

    python benchmarks/what_training_buys.py --long-run runs/ablation/fashion_mnist/original_s200_16000

The 16,000-step run folder comes from `python -m maehelpers study run --stage long` (its arm and seed
are read from it). The 500-step run of the same arm and seed is pretrained here with the study's own
config for that budget (preset ablation, its own schedule), unless --short-run names one. Writes
docs/figures/what_training_buys.png and, beside it, a JSON file with the runs, seeds, images and
each model's masked PSNR.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maehelpers.checkpoints import load_mae  # noqa: E402
from maehelpers.evaluate import load_eval_data, run_config  # noqa: E402
from maehelpers.pretrain import pretrain  # noqa: E402
from maehelpers.runs import git_commit  # noqa: E402
from maehelpers.study.arms import arm_config  # noqa: E402
from maehelpers.study.settings import StudySettings  # noqa: E402
from maehelpers.viz import draw_recon_grid, save  # noqa: E402


def short_run(long_run: Path, steps: int, runs_root: Path) -> Path:
    """The run of the same arm and seed at `steps`, with the study's config for that budget."""
    cfg = run_config(long_run)
    arm = long_run.name.rsplit("_s", 1)[0]
    folder = runs_root / f"{arm}_s{cfg.seed}_{steps}"
    pretrain(arm_config(arm, StudySettings(dataset=cfg.dataset, preset=cfg.preset), cfg.seed, steps), folder,
             data_root=str(ROOT / "data"), progress=False)
    return folder


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long-run", required=True, help="the 16,000-step run folder")
    p.add_argument("--short-run", help="the 500-step run folder of the same arm and seed (default: pretrained here)")
    p.add_argument("--steps", type=int, default=500, help="the short budget")
    p.add_argument("--images", type=int, default=6, help="validation test images shown (the first N)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-root", default=str(ROOT / "runs" / "what_training_buys"))
    p.add_argument("--out", default=str(ROOT / "docs" / "figures" / "what_training_buys.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    long_run = Path(args.long_run)
    short = Path(args.short_run) if args.short_run else short_run(long_run, args.steps, Path(args.runs_root))
    models = {}
    for folder in (short, long_run):
        model, cfg = load_mae(folder)
        models[f"{cfg.train.epochs * (cfg.train.max_images // cfg.train.batch_size):,} steps"] = model
    cfg = run_config(long_run)
    _, test = load_eval_data(cfg, str(ROOT / "data"), "validation")
    fig, psnr, _ = draw_recon_grid(models, test.images[:args.images], cfg.model.img_size)
    fig.suptitle(f"{long_run.name.rsplit('_s', 1)[0]}, seed {cfg.seed}: the same validation images under the same masks "
                 f"(ratio 0.75, mask seed 0), after {' and after '.join(models)}", fontsize=9)
    save(fig, args.out)
    info = {"runs": [str(short), str(long_run)], "arm": long_run.name.rsplit("_s", 1)[0], "seed": cfg.seed,
            "images": f"validation test images 0-{args.images - 1}", "mask_seed": 0, "mask_ratio": 0.75,
            "psnr_masked_borrowed": {k: round(float(v.mean()), 2) for k, v in psnr.items()},
            "command": "python benchmarks/what_training_buys.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
