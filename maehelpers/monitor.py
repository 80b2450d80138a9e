"""The k-NN monitor: the learning curve of a pretraining run, measured while it trains.

At a few steps of a run (train.monitor_points, evenly spaced, the last at the end; or the steps
listed in train.monitor_at) the encoder embeds a fixed labelled subset: the first
train.monitor_bank images of the probe's training split as the memory bank, and the first
train.monitor_queries of the VALIDATION test images as queries (held-out images are never used).
With the whole probe split as bank and all validation images as queries, a point is exactly the
k-NN evaluation of the encoder at that step.
k-NN top-1 (the evaluation's k and temperature) on the mean-pooled and cls features goes to
log_epochs.jsonl as a row of its own: {"step", "epoch", "knn_top1_mean", "knn_top1_cls",
"monitor_s"}.

It does not change training: the pass is in eval mode without gradients, on whole images, and
draws no random numbers (training's own draws are a function of (seed, step) anyway), so the final
encoder is bit-identical with the monitor on or off (tested). Its cost is measured by
benchmarks/monitor_cost.py.
"""
import time
from dataclasses import dataclass

import torch

from .data import DataError, ImageSet, prepare
from .devices import amp_dtype
from .evaluate import load_eval_data
from .model import pool_tokens
from .probes import knn_top1


MONITOR_KEYS = ("knn_top1_mean", "knn_top1_cls")


def monitor_steps(total_steps: int, points: int, at: tuple = ()) -> list[int]:
    """The steps measured: those in `at` that the run reaches, else `points` evenly spaced ending at
    the last step (500 steps, 8 points: 62, 125, 188, 250, 312, 375, 438, 500); [] when off."""
    if at:
        return sorted({s for s in at if 0 < s <= total_steps})
    return sorted({round(total_steps * k / points) for k in range(1, points + 1)} - {0}) if points > 0 else []


@dataclass
class KnnMonitor:
    bank: ImageSet          # labelled images the queries' neighbours are drawn from
    queries: ImageSet       # labelled validation images that are classified
    img_size: int
    k: int = 20
    t: float = 0.07
    batch_size: int = 256
    amp: bool = True

    @torch.no_grad()
    def features(self, model, images_u8) -> dict:
        device = next(model.parameters()).device
        dtype = amp_dtype(device, self.amp)
        out = {"mean": [], "cls": []}
        for i in range(0, len(images_u8), self.batch_size):
            x = prepare(images_u8[i:i + self.batch_size], self.img_size, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                tokens = model.forward_tokens(x)
            for pool in out:
                out[pool].append(pool_tokens(tokens, pool).float())
        return {pool: torch.cat(v) for pool, v in out.items()}

    def measure(self, model) -> dict:
        """k-NN top-1 (%) of the model's current encoder on both pools, and the seconds it took."""
        model = getattr(model, "module", model)
        t0, was_training = time.perf_counter(), model.training
        model.eval()
        bank, queries = self.features(model, self.bank.images), self.features(model, self.queries.images)
        model.train(was_training)
        out = {f"knn_top1_{pool}": round(knn_top1(bank[pool], self.bank.labels, queries[pool], self.queries.labels,
                                                   self.k, self.t), 4) for pool in ("mean", "cls")}
        return {**out, "monitor_s": round(time.perf_counter() - t0, 3)}


def make_monitor(cfg, data_root, download: bool = True) -> tuple[KnnMonitor | None, str]:
    """The run's monitor on the validation split, or None and why (off, or no labelled split)."""
    t = cfg.train
    if t.monitor_points <= 0 and not t.monitor_at:
        return None, "off (train.monitor_points 0)"
    try:
        bank, queries = load_eval_data(cfg, data_root, "validation", download)
    except (DataError, OSError, ValueError) as err:
        return None, f"off: no labelled validation split ({err})"
    if bank.labels is None or queries.labels is None:
        return None, "off: the dataset has no labels"
    bank, queries = bank.head(t.monitor_bank), queries.head(t.monitor_queries)
    return KnnMonitor(bank, queries, cfg.model.img_size, cfg.eval.knn_k, cfg.eval.knn_t, cfg.eval.batch_size, t.amp), \
        f"k-NN of {len(queries)} validation images among {len(bank)} labelled training images"


def monitor_curve(rows) -> list[list]:
    """[[step, k-NN mean, k-NN cls], ...] from a run's log_epochs.jsonl rows: what a record keeps."""
    return [[r["step"], *(r[k] for k in MONITOR_KEYS)] for r in rows if MONITOR_KEYS[0] in r]
