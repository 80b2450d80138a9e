"""The seeded study: is a difference between MAE variants bigger than the noise of seeds and test images?

Arms are data (a variant and dotted overrides, arms.py). Every run appends one JSON record per
(arm, seed, steps, split) to benchmarks/results/ablation_runs.jsonl (records.py): probe and k-NN
top-1 on the cls token and the mean pool, fine-tuning, reconstruction metrics, time, load, machine
and git commit. A run already recorded is skipped, so a study grows over sessions; CPU results are
deterministic for a given thread count, so anyone can rerun a line (`study verify`).

Headline: k-NN on the MEAN of the patch tokens (its history, told plainly, is in
benchmarks/preregistered.md), the cls-token numbers beside it. Differences to `original` are paired
by seed. Splits: `validation` scores test images 0..max_test-1 (every choice was made there),
`heldout` the next max_test, which no choice saw. Two stages were registered before their first run
and are analysed exactly as registered: the held-out confirmation (heldout.py) and the 16,000-step
stage (long.py).

Modules: arms, settings (StudySettings), records, run (one run -> one record), stages (plans and
workers; compare), upkeep (verify, refresh), stats, flops, tables, plots, heldout, long,
exploratory, report, verdict (notebook 05's lines), cli.

From a notebook: `study.compare({"mine": ("original", {"variant.extra_terms": (("my_term", 0.1),)})},
seeds=(0, 1, 2))` runs `original` and the arm paired by seed and returns the paired differences.
"""
from .arms import ARMS, BASELINES, HEADLINE, METRICS, arm_config
from .records import append_record, correct_path, read_records
from .settings import StudySettings
from .stages import compare, plan, run_stage


__all__ = ["ARMS", "BASELINES", "HEADLINE", "METRICS", "StudySettings", "append_record", "arm_config", "compare",
           "correct_path", "plan", "read_records", "run_stage"]
