"""Keeping the records honest: rerun a record and compare (verify, and stamp the commit that
reproduces it), and recompute what a newer definition changed (reconstruction metrics, feature health)."""
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..evaluate import EVAL_SPLITS, load_eval_data, recon_run
from ..runs import git_commit
from .arms import arm_config
from .records import append_record, read_records
from .run import raw_pixel_record, run_arm


def verify(settings) -> int:
    """Rerun recorded (arm, seed, steps) runs from scratch in a temporary folder and compare every
    accuracy with its record (fine-tuning too with --ft): the check that a committed number reproduces."""
    records = read_records(Path(settings.records), settings.dataset, settings.preset, settings.split)
    keys = [(a, s, settings.steps) for a in settings.arms or ["original"] for s in settings.seeds or [0]]
    data, failed = None, 0
    with tempfile.TemporaryDirectory() as tmp:
        settings.runs_root = tmp
        for key in keys:
            if key not in records:
                print(f"{key}: no record to compare with")
                failed += 1
                continue
            data = data or load_eval_data(arm_config("original", settings, 0, key[2]), settings.data_root, settings.split)
            settings.ft_epochs = records[key].get("ft_epochs") or settings.ft_epochs  # at the record's own budget
            again = raw_pixel_record(settings, key[2], data) if key[0] == "raw_pixels" else run_arm(*key, settings, data)
            tuned = ("ft_top1",) if settings.ft and records[key].get("ft_top1") is not None else ()
            differ = 0
            for m in ("lp_top1_mean", "lp_top1_cls", "knn_top1_mean", "knn_top1_cls", *tuned):
                same = again[m] == records[key][m]
                differ += not same
                print(f"{key[0]} s{key[1]} {key[2]}: {m} recorded {records[key][m]:.4f}, rerun {again[m]:.4f}"
                      f" {'same' if same else 'DIFFERENT'} (recorded with {records[key].get('threads')} threads, "
                      f"commit {str(records[key].get('git_commit'))[:7]})")
            failed += bool(differ)
            if getattr(settings, "stamp", False) and not differ:  # the record now names code that reproduces it
                append_record({"dataset": settings.dataset, "preset": settings.preset, "split": settings.split, "arm": key[0],
                               "seed": key[1], "steps": key[2], "verified_git_commit": git_commit(),
                               "verified_threads": torch.get_num_threads(), "verified_metrics": 4 + len(tuned),
                               "verified_date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")},
                              Path(settings.records))
    return 1 if failed else 0


def refresh_health(settings) -> None:
    """Measure the feature health of every recorded run whose folder is here and whose record lacks
    it (the final encoder on the same 256 training images the per-epoch log uses), and append it to
    its record, on both splits."""
    from .checkpoints import load_mae
    from .data import load_dataset
    from .train_log import HEALTH_IMAGES, feature_health_of
    cfg = arm_config("original", settings, 0, settings.steps)
    images = load_dataset(settings.dataset, "pretrain", settings.data_root, max_images=HEALTH_IMAGES).images
    for split in EVAL_SPLITS:
        for (arm, seed, steps), r in read_records(Path(settings.records), settings.dataset, settings.preset, split).items():
            run = Path(settings.runs_root) / settings.dataset / f"{arm}_s{seed}_{steps}"
            if "effective_rank" in r or not (run / "checkpoint_last.pt").exists():
                continue
            health = feature_health_of(load_mae(run)[0], images, cfg.model.img_size)
            append_record({"dataset": settings.dataset, "preset": settings.preset, "arm": arm, "seed": seed, "steps": steps,
                           "split": split, **health, "health_git_commit": git_commit()}, Path(settings.records))
            print(f"{arm} s{seed} ({split}): effective rank {health['effective_rank']:.1f}")


def refresh_recon(settings) -> None:
    """Recompute the reconstruction metrics of every recorded run whose folder is here, with the
    current code, and append them as records (later lines replace earlier values): for when a
    metric's definition changed after the runs."""
    records = read_records(Path(settings.records), settings.dataset, settings.preset)
    _, test = load_eval_data(arm_config("original", settings, 0, settings.steps), settings.data_root)
    for (arm, seed, steps), r in records.items():
        run = Path(settings.runs_root) / settings.dataset / f"{arm}_s{seed}_{steps}"
        if not (run / "checkpoint_last.pt").exists():
            continue
        res = recon_run(run, test, settings.device, force=True)
        append_record({"dataset": settings.dataset, "preset": settings.preset, "arm": arm, "seed": seed, "steps": steps,
                       **{m: res[m] for m in ("nmse_masked", "psnr_masked", "psnr_masked_floor", "hf_error_masked",
                                              "hf_error_floor")}, "recon_git_commit": git_commit()}, Path(settings.records))
        print(f"{arm} s{seed}: PSNR {res['psnr_masked']:.2f} (floor {res['psnr_masked_floor']:.2f})")
