"""Command line: `python -m maehelpers pretrain ...` (see `--help`)."""
import argparse
import json
import sys
from pathlib import Path

from .config import DATASETS, PRESETS, VARIANTS, make_config


def _overrides(args) -> dict:
    out = {f"{k}": v for k, v in (args.set or [])}
    for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("img_size", "model.img_size"), ("max_images", "train.max_images")):
        if getattr(args, flag, None) is not None:
            out[key] = getattr(args, flag)
    return out


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default paper)")
    p.add_argument("--dataset", default="stl10", help=f"one of {', '.join(DATASETS)} (default stl10)")
    p.add_argument("--data-root", default="data", help="where datasets live or are downloaded to")
    p.add_argument("--runs-root", default="runs", help="parent of the run folders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maehelpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain one variant into <runs-root>/<run-name>/")
    p.add_argument("--variant", default="original", help=f"one of {', '.join(VARIANTS)}")
    add_common(p)
    p.add_argument("--run-name", default=None, help="run folder name (default: the variant)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--max-images", type=int, help="use only the first N images (0 = all)")
    p.add_argument("--set", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="any config field, e.g. --set variant.laplacian_weight 0.1")
    p.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DataError
    from .pretrain import NonFiniteLossError, pretrain
    from .runs import CheckpointError
    try:
        if args.command == "pretrain":
            cfg = make_config(args.variant, args.preset, args.dataset, args.seed, _overrides(args))
            run_dir = Path(args.runs_root) / (args.run_name or args.variant)
            result = pretrain(cfg, run_dir, data_root=args.data_root, resume=args.resume,
                              device=args.device, progress=not args.no_progress)
            print(json.dumps({k: result[k] for k in ("variant", "pretrain_time_s", "pretrain_final_loss")
                              if k in result}, indent=1))
            print(f"wrote {run_dir}/")
    except (ValueError, DataError, CheckpointError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the checkpoint was saved, rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0
