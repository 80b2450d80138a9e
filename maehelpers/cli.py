"""Command line: `python -m maehelpers {run,pretrain,evaluate,study,export} ...` (see `--help`)."""
import argparse
import ast
import json
import os
import sys
from pathlib import Path

from .config import DATASETS, PRESETS, VARIANTS, make_config
from .series import CPU_PRESET, cpu_duration, cpu_paths, run_banner


def _overrides(args) -> dict:
    out = {f"{k}": v for k, v in (args.set or [])}
    for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("img_size", "model.img_size"), ("max_images", "train.max_images")):
        if getattr(args, flag, None) is not None:
            out[key] = getattr(args, flag)
    return out


def add_common(p: argparse.ArgumentParser, preset: str | None = "paper", preset_help: str = "(default paper)") -> None:
    p.add_argument("--preset", default=preset, help=f"one of {', '.join(PRESETS)} {preset_help}")
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

    r = sub.add_parser("run", help="execute the notebook series 00-05 with papermill",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"Run notebooks 00-05 in order.\n\nWithout a GPU:\n{cpu_paths()}\n  the paper's "
                                   f"setting (STL-10, 224 px): --preset paper, {cpu_duration('paper')}")
    add_common(r, None, f"(default: paper on a GPU; without one {CPU_PRESET}, the CPU-sized series, "
                  f"{cpu_duration(CPU_PRESET)})")
    r.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                   help="a notebook parameter, e.g. -p epochs 2 (Python literals; else a string)")
    r.add_argument("--only", help="comma-separated notebook numbers, e.g. 03,05")

    e = sub.add_parser("evaluate", help="linear probe, k-NN and fine-tuning of every run under --runs-root")
    add_common(e)
    e.add_argument("--steps", default="lp,knn,ft", help="comma-separated: lp, knn, ft")
    e.add_argument("--force", action="store_true", help="redo steps that already have results")

    x = sub.add_parser("export", help="a run as a timm encoder or a Hugging Face ViTMAEForPreTraining, with a model card")
    x.add_argument("run", help="the run folder, e.g. runs/original")
    x.add_argument("--to", choices=("timm", "hf"), required=True)
    x.add_argument("out", help="the folder to write")
    x.add_argument("--img-size", type=int, help="timm: another image size (position embeddings interpolated)")

    s = sub.add_parser("study", add_help=False, help="the seeded study: run | report | verify | refresh-recon | refresh-health | seeds "
                                                     "(python -m maehelpers study --help)")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def export_command(args) -> None:
    from .export import export_hf, export_timm
    try:
        out = export_timm(args.run, args.out, args.img_size) if args.to == "timm" else export_hf(args.run, args.out)
    except ImportError as e:
        raise ValueError(f"{e.name or e}: the export needs the optional packages, pip install -e .[export]") from e
    print(f"wrote {out}/ (model card: {out}/README.md)")


def study_command(argv) -> int:
    """`python -m maehelpers study ...` (maehelpers/study/cli.py)."""
    from .study.cli import main
    return main(argv)


def literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_command(args, cuda: bool | None = None) -> None:
    """cuda: whether a GPU will be used (default: asked of torch, or read from --device)."""
    from .series import preflight, run_series
    if cuda is None:
        import torch
        cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    preset = args.preset or ("paper" if cuda else CPU_PRESET)
    data_root, runs_root = Path(args.data_root).resolve(), Path(args.runs_root).resolve()
    make_config("original", preset, args.dataset)  # unknown names fail here, before any work
    preflight(args.dataset, data_root)  # offline without STL-10: stop at once, naming the choices
    print(run_banner(preset, args.dataset, cuda, chosen=args.preset is None), flush=True)
    params = {"dataset": args.dataset, "preset": preset, "data_root": str(data_root),
              "runs_root": str(runs_root), "seed": args.seed, "device": args.device, "live_widgets": False,
              "official_look": False}  # no 450 MB download unasked: -p official_look True
    params.update({k: literal(v) for k, v in args.parameter})
    out = run_series(params, args.only, runs_root)
    print(f"executed notebooks: {out}/")
    table = runs_root / "compare" / "compare.md"
    if table.exists():
        print(table.read_text())


def evaluate_command(args) -> None:
    from .notebook import evaluate_all, setup
    paths = setup(args.data_root, args.runs_root, device=args.device)
    print(evaluate_all(paths, tuple(s.strip() for s in args.steps.split(",")), args.force))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the study has a parser of its own (its --help included)
    args = argparse.Namespace(command="study", rest=argv[1:]) if argv[:1] == ["study"] else build_parser().parse_args(argv)
    from .data import DataError
    from .distributed import AgreedError, close_world
    from .pretrain import pretrain
    from .train_log import NonFiniteLossError
    from .series import SeriesError
    from .runs import CheckpointError
    try:
        if args.command == "study":
            return study_command(args.rest)
        if args.command == "export":
            export_command(args)
        elif args.command == "run":
            run_command(args)
        elif args.command == "evaluate":
            evaluate_command(args)
        elif args.command == "pretrain":
            cfg = make_config(args.variant, args.preset, args.dataset, args.seed, _overrides(args))
            run_dir = Path(args.runs_root) / (args.run_name or args.variant)
            result = pretrain(cfg, run_dir, data_root=args.data_root, resume=args.resume,
                              device=args.device, progress=not args.no_progress)
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
                print(json.dumps({k: result[k] for k in ("variant", "pretrain_time_s", "pretrain_final_loss",
                                                         "world_size") if k in result}, indent=1))
                print(f"wrote {run_dir}/")
    except (ValueError, DataError, CheckpointError, NonFiniteLossError, SeriesError, FileNotFoundError,
            AgreedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the checkpoint was saved, rerun with --resume to continue", file=sys.stderr)
        return 130
    close_world()  # under torchrun: the process group ends with the command
    return 0
