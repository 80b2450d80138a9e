"""The study's command line, parsed into a StudySettings.

    python -m maehelpers study run --stage dose            # every arm, seed 0
    python -m maehelpers study run --stage heldout         # registration 1 (benchmarks/preregistered.md)
    python -m maehelpers study run --stage long --threads 1  # registration 2, 16,000 steps; twice for two workers
    python -m maehelpers study run --arms original unif_umae_mean_100x --seeds 0 1 2 --steps 2000
    python -m maehelpers study report --doc docs/study.md  # tables, plots and analyses from the records
    python -m maehelpers study verify --arms original --seeds 0   # rerun a record, compare the numbers
    python -m maehelpers study seeds --half-width 0.5      # how many seeds an interval needs, from the records
"""
import argparse
import dataclasses
import importlib
import json
from pathlib import Path

import torch

from ..evaluate import EVAL_SPLITS
from .arms import ARMS, BASELINES, LONG_MONITOR, LONG_STEPS, arm_spec, steps_per_epoch
from .settings import StudySettings


DEFAULTS = StudySettings()


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
    p.add_argument("--data-root", default=DEFAULTS.data_root)
    p.add_argument("--runs-root", default=DEFAULTS.runs_root)
    p.add_argument("--records", default=DEFAULTS.records)
    p.add_argument("--out", default=DEFAULTS.out)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--doc", help="report: also write the generated blocks into this docs page (docs/study.md)")
    p.add_argument("--front", help="report: also write the table of findings into this front page (README.md)")
    p.add_argument("--stamp", action="store_true",
                   help="verify: append a 'verified' line (commit, date, threads) to each record that reproduced")
    p.add_argument("--interim", action="store_true",
                   help="report: analyse the held-out records before all registered runs are in")
    p.add_argument("--half-width", type=float, help="seeds: the 95 %% half-width wanted (points)")
    p.add_argument("--effect", type=float, help="seeds: the effect to detect (points; 5 %% two-sided, power 80 %%)")
    return p


def parse(argv=None, prog: str = "python -m maehelpers study") -> StudySettings:
    """The settings of a command line, with every check that needs no work: steps a multiple of an
    epoch, arms known; a registered stage fixes its own split, budget and monitor."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    extra = {k: tuple(v) for k, v in json.loads(Path(args.arms_file).read_text()).items()} if args.arms_file else {}
    names = {f.name for f in dataclasses.fields(StudySettings)}
    settings = StudySettings(**{k: v for k, v in vars(args).items() if k in names}, extra_arms=extra)
    settings = for_stage(settings)
    if settings.steps % steps_per_epoch(settings):
        p.error(f"--steps must be a multiple of {steps_per_epoch(settings)} (one epoch of the preset)")
    for arm in settings.arms or []:
        if arm not in BASELINES:
            arm_spec(arm, settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return settings


def for_stage(settings: StudySettings) -> StudySettings:
    """What a registered stage fixes: held-out split; for the long stage 16,000 steps, fine-tuning and
    its monitor. (With --arms the command runs those arms with the options given.)"""
    if settings.arms:
        return settings
    if settings.stage in ("heldout", "long"):
        settings = dataclasses.replace(settings, split="heldout")
    if settings.stage == "long":
        settings = dataclasses.replace(settings, steps=LONG_STEPS, ft=True, monitor=dict(LONG_MONITOR))
    return settings


def main(argv=None) -> int:
    """Run a stage or arms, then report; verify; refresh; seeds."""
    from .report import report, seeds_text
    from .stages import run_stage
    from .upkeep import refresh_health, refresh_recon, verify
    settings = parse(argv)
    if settings.command == "verify":
        return verify(settings)
    if settings.command == "seeds":
        print(seeds_text(settings))
        return 0
    if settings.command == "refresh-recon":
        refresh_recon(settings)
    if settings.command == "refresh-health":
        refresh_health(settings)
    if settings.command == "run":
        run_stage(settings)
    report(settings)
    return 0
