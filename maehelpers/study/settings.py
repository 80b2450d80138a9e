"""StudySettings: everything a study command needs, in one dataclass. The command line
(study/cli.py) and compare() both make one; the study's functions read nothing else."""
from dataclasses import dataclass, field

from ..paths import RESULTS, ROOT


@dataclass
class StudySettings:
    command: str = "run"                 # run | report | verify | refresh-recon | refresh-health | seeds
    stage: str = "dose"                  # dose | confirm | power | ft | budget | heldout | long (unless arms)
    split: str = "validation"            # validation: test images 0..max_test-1; heldout: the next max_test
    arms: list | None = None             # arms to run instead of a stage's
    seeds: list | None = None            # None: the stage's (0 with arms)
    steps: int = 500                     # pretraining steps, a multiple of one epoch of the preset
    ft: bool = False                     # also fine-tune (the scratch recipe for the random arm)
    ft_epochs: int = 20
    budget_minutes: float = 0            # stop before a run that would not fit (0: no limit)
    threads: int = 0                     # torch threads (0: torch's default)
    device: str = "cpu"                  # cpu keeps records deterministic; cuda with preset ablation_gpu
    dataset: str = "fashion_mnist"
    preset: str = "ablation"
    data_root: str = str(ROOT / "data")
    runs_root: str = str(ROOT / "runs" / "ablation")
    records: str = str(RESULTS / "ablation_runs.jsonl")
    out: str = str(RESULTS)              # the report's files and pictures
    quiet: bool = False
    doc: str | None = None               # report: write the generated blocks into this docs page
    front: str | None = None             # report: write the table of findings into this front page
    stamp: bool = False                  # verify: append a 'verified' line to each record that reproduced
    interim: bool = False                # report: analyse a registered stage before all its runs are in
    half_width: float | None = None      # seeds: the 95 % half-width wanted
    effect: float | None = None          # seeds: the effect to detect
    extra_arms: dict = field(default_factory=dict)   # arms of your own: {name: (variant, {dotted overrides})}
    monitor: dict = field(default_factory=dict)      # the stage's k-NN monitor settings (dotted overrides)
