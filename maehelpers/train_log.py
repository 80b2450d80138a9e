"""What pretraining writes while it trains: the step and epoch logs (kept on the device between flushes),
TensorBoard, the feature health of each epoch, reconstructions, and the measured duration.

The logs are log_steps.jsonl (a row per step) and log_epochs.jsonl (a row per epoch, and the k-NN
monitor's rows, monitor.py). On CUDA the rows stay on the device and are written every `log_every`
steps, so no step waits for the GPU; each flush is the only collective of those steps under torchrun.
"""
import io
import json
import math
import time
from pathlib import Path

import torch

from .data import prepare
from .distributed import World, sum_over_ranks
from .model import pool_tokens


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (or fp16's loss scale collapsed); training stopped."""


class StepLog:
    """Per-step rows kept on the device and written every `every` steps (1 on CPU), so that on CUDA
    the loop does not wait for the GPU at each step. Each flush makes one all-reduce of the stacked
    values (the global loss for the log) and of the Ctrl-C flag, so every rank agrees when to stop;
    it checks finiteness and, under fp16, the GradScaler's scale (always before a checkpoint)."""

    def __init__(self, run_dir: Path, state, every: int, bar, ckpt_path: Path, amp: bool, w: World,
                 sigint: dict, write: bool = True, board=None):
        self.slog, self.elog = (open(run_dir / name, "a") if write else io.StringIO()
                                for name in ("log_steps.jsonl", "log_epochs.jsonl"))
        self.state, self.every, self.bar, self.ckpt_path, self.amp = state, every, bar, ckpt_path, amp
        self.w, self.sigint, self.stop = w, sigint, False
        self.pending, self.scale, self.epoch_skipped, self.eta_start = [], None, 0, None
        self.board = board  # a TensorBoard SummaryWriter, or None

    def add(self, row: dict, loss, parts, scale=None) -> None:
        """scale: the GradScaler's scale after this step (a device tensor), or None without fp16."""
        self.pending.append((row, loss, parts, scale))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([torch.stack([loss.float(), *[p.float() for p in parts.values()]])
                              for _, loss, parts, _ in self.pending])
        flag = torch.tensor([float(self.sigint["hit"])], device=values.device)
        summed = sum_over_ranks(torch.cat([values.flatten(), flag]), self.w)
        self.stop = bool(summed[-1] > 0)
        values = (summed[:-1] / self.w.size).view_as(values).tolist()
        scales = [float(s) for s in torch.stack([s for *_, s in self.pending]).tolist()] \
            if self.pending[0][3] is not None else [None] * len(self.pending)
        for (row, _, parts, _), vals, scale in zip(self.pending, values, scales):
            if not math.isfinite(vals[0]):
                self.non_finite(row["step"] - 1, vals[0], f"found when checking every {self.every} steps; "
                                                          "nothing after it was saved", dict(zip(parts, vals[1:])))
            row.update(loss=vals[0], **dict(zip(parts, vals[1:])))
            if scale is not None:
                self._check_scale(row, scale)
            self.slog.write(json.dumps(row) + "\n")
            if self.board is not None:
                for key in ("loss", *parts, "lr", "mask_ratio", "loss_scale"):
                    if key in row:
                        self.board.add_scalar(f"train/{key}", row[key], row["step"])
            self.state.epoch_loss, self.state.epoch_count = self.state.epoch_loss + vals[0], self.state.epoch_count + 1
        self.bar.update(len(self.pending))
        self.bar.set_postfix(loss=f"{values[-1][0]:.4f}", lr=f"{row['lr']:.2e}", mask=f"{row['mask_ratio']:.2f}")
        self.pending = []
        self.slog.flush()

    def _check_scale(self, row: dict, scale: float) -> None:
        """A GradScaler halves its scale exactly when it skips a step (inf/NaN gradients): count them,
        and stop when the scale falls below 1, where fp16 can no longer represent the gradients."""
        skipped = self.scale is not None and scale < self.scale
        self.scale = scale
        self.state.skipped += skipped
        self.epoch_skipped += skipped
        row.update(loss_scale=scale, skipped_steps=self.state.skipped)
        if scale < 1:
            self.collapse(f"the fp16 loss scale fell to {scale:g} at step {row['step']}")

    def collapse(self, what: str):
        good = f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists() else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{what}: the gradients overflow fp16 and the GradScaler is skipping updates, so the "
                                 f"loss only looks finite; {good}. Start again in a new run folder with a lower "
                                 "train.blr, or set train.amp false to train in fp32.")

    def non_finite(self, step: int, value: float, what: str, parts: dict | None = None):
        good = f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists() else "no checkpoint was written yet"
        advice = "lower train.blr" + (", or set train.amp false to train in fp32" if self.amp else "")
        bad = [f"{k} is {v}" for k, v in (parts or {}).items() if not math.isfinite(v)]
        value = f"{value} ({', '.join(bad)})" if bad else value
        raise NonFiniteLossError(f"loss is {value} at step {step}; {what}; {good}. A resume keeps the config and "
                                 f"would meet the same loss: start again in a new run folder with a {advice}.")

    def end_epoch(self, step: int, epoch: int, seconds: float, health: dict | None = None) -> None:
        self.flush()
        count = self.state.epoch_count
        if self.scale is not None and self.epoch_skipped > count / 2:
            self.collapse(f"the GradScaler skipped {self.epoch_skipped} of the {count} steps of epoch {epoch}")
        self.elog.write(json.dumps({"step": step, "epoch": epoch, "loss": self.state.epoch_loss / count,
                                    "seconds": seconds, **(health or {}), **({"skipped_steps": self.epoch_skipped}
                                                                         if self.scale is not None else {})}) + "\n")
        self.elog.flush()
        self.state.epoch_loss, self.state.epoch_count, self.epoch_skipped = 0.0, 0, 0

    def monitor(self, step: int, epoch: float, values: dict) -> None:
        """A k-NN monitor point: a row of its own in log_epochs.jsonl, and TensorBoard's monitor/."""
        self.flush()
        self.elog.write(json.dumps({"step": step, "epoch": round(epoch, 4), **values}) + "\n")
        self.elog.flush()
        if self.board is not None:
            for key in ("knn_top1_mean", "knn_top1_cls"):
                self.board.add_scalar(f"monitor/{key}", values[key], step)

    def close(self) -> None:
        self.slog.close()
        self.elog.close()
        self.bar.close()
        if self.board is not None:
            self.board.close()


def tensorboard_writer(run_dir: Path, t, w: World):
    """A SummaryWriter on run_dir/tensorboard (rank 0, train.tensorboard on), or None where the
    tensorboard package is not installed: the run goes on with its JSON logs alone."""
    if not (t.tensorboard and w.main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


HEALTH_IMAGES = 256  # the fixed images whose features are measured for collapse at every epoch's end


@torch.no_grad()
def feature_health_of(model, images_u8, img_size: int) -> dict:
    """metrics.feature_health of the mean-pooled features of the first HEALTH_IMAGES training images
    (whole images, no mask; draws no random numbers, so training and resume are unchanged)."""
    from .metrics import feature_health
    model = getattr(model, "module", model)
    model.eval()
    x = prepare(images_u8, img_size, next(model.parameters()).device)
    health = feature_health(pool_tokens(model.forward_tokens(x), "mean"))
    model.train()
    return {k: round(v, 5) for k, v in health.items()}


@torch.no_grad()
def board_reconstructions(board, model, images_u8, img_size: int, step: int) -> None:
    """One reconstruction grid per epoch, always the same images under the same masks."""
    from .viz import draw_recon_grid
    model.eval()
    fig, _, _ = draw_recon_grid({"model": model}, images_u8, img_size)
    board.add_figure("reconstructions", fig, step)
    model.train()


ETA_WARMUP, ETA_STEPS = 2, 5  # steps left out (CUDA start-up, autotuning), then steps measured


def eta_message(seconds_per_step: float, remaining: int, device: torch.device, preset: str) -> str:
    """The expected duration of the rest of a run, from the steps measured so far."""
    total = seconds_per_step * remaining
    h, m = divmod(round(total / 60), 60)
    text = (f"measured {seconds_per_step:.2f} s/step over {ETA_STEPS} steps (after {ETA_WARMUP} warm-up steps): "
            f"the remaining {remaining} steps take about {f'{h} h {m} min' if h else f'{max(m, 1)} min'}")
    if device.type == "cpu" and preset == "paper" and total > 3600:
        text += (". The 'paper' preset (224 px) is meant for a GPU; on a CPU use preset 'fast' (96 px, ~5x cheaper) "
                 "or 'smoke' to check the set-up")
    return text


def report_eta(log, done: int, t0: float, remaining: int, device, preset: str, progress: bool) -> None:
    """After ETA_WARMUP steps start the clock, after ETA_STEPS more print the measured duration.
    The flushes (on every rank: a flush is collective) let the device catch up, so the time is real."""
    if done == ETA_WARMUP:
        log.flush()
        log.eta_start = time.perf_counter()
    elif done == ETA_WARMUP + ETA_STEPS and remaining > 0:
        log.flush()
        if progress:
            print(eta_message((time.perf_counter() - log.eta_start) / ETA_STEPS, remaining, device, preset))
