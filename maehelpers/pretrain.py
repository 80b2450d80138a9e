"""Pretraining: the official recipe (AdamW 0.9/0.95, wd 0.05 off biases and norms, lr = blr*B/256,
per-step warmup + half-cycle cosine), resumable to the bit from `checkpoint_last.pt`.

Randomness is a pure function of (seed, step): the epoch's image order comes from (seed, epoch),
augmentation and mask noise from a generator seeded with (seed, step). Resuming at any step
therefore replays exactly what an uninterrupted run would have done: bit-identical weights on CPU
(tested). On CUDA nothing is made deterministic: the image order and the schedule are replayed, but
random numbers drawn on the GPU can depend on the GPU model and kernels (atomics in backward passes)
are not deterministic, so a resumed CUDA run follows the same recipe, not the same bits.

train.accum_iter splits each step's batch into micro-batches (memory only: the step, its batch,
lr, crops and masks stay the same). Mixed precision on CUDA: bf16 where the GPU has it, else fp16
with a GradScaler whose scale and skipped steps are logged; a collapsing scale stops the run.
"""
import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoints import build_model
from .config import RESUME_FREE, PretrainConfig, config_diff, from_dict, to_dict, validate
from .data import augment, epoch_order, gatherer, load_dataset, locked, prepare, resident, step_generator
from .devices import amp_dtype, device_name, pick_device, precision_name
from .distributed import World, agreed, barrier, device_for, gather_objects, mean_over_ranks, world
from .losses import check_terms, loss_terms, pretrain_loss
from .masking import mask_ratio_at
from .model import MAE, encoder_state_dict
from .monitor import make_monitor, monitor_steps
from .optim import lr_at, param_groups
from .runs import (EVAL_KEYS, CheckpointError, epoch_rows, git_commit, load_torch, merge_results, prepare_run_dir,
                   read_jsonl, read_results, run_lock, save_json, save_torch, write_text)
from .train_log import HEALTH_IMAGES, StepLog, board_reconstructions, feature_health_of, report_eta, tensorboard_writer


@contextlib.contextmanager
def deferred_sigint():
    """Turn the first Ctrl-C (Colab's stop button) into a flag checked between steps, so the
    loop can save a checkpoint at a step boundary; a second Ctrl-C interrupts at once."""
    flag = {"hit": False}
    try:
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if flag["hit"]:
                raise KeyboardInterrupt
            flag["hit"] = True
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread: leave Ctrl-C alone
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _check_resumable(ckpt: dict, cfg: PretrainConfig, path: Path, run: dict) -> None:
    """Refuse a resume that would not continue the same trajectory, with one sentence saying why."""
    old = to_dict(from_dict(ckpt.get("config", {})))  # keys added since then take their defaults
    diff = [d for d in config_diff(old, to_dict(cfg)) if not d.startswith(RESUME_FREE)]
    if diff:
        hint = ""
        if any(d.startswith(("model.img_size", "model.patch_size")) for d in diff):
            hint = (" To use these weights at another image size, load the encoder with "
                    "maehelpers.load_encoder(...), which interpolates the position embeddings.")
        raise CheckpointError(f"{path} was written with a different config ({'; '.join(diff)}). "
                              "Resume with the same settings, or use another run folder / delete it "
                              f"to start over.{hint}")
    for key, what in (("n_images", "images"), ("steps_per_epoch", "steps per epoch")):
        if key in ckpt and ckpt[key] != run[key]:
            raise CheckpointError(f"{path} was trained on {ckpt['n_images']} images ({ckpt['steps_per_epoch']} "
                                  f"steps per epoch); this dataset gives {run['n_images']} ({run['steps_per_epoch']}). "
                                  "Resume with the same data, or start a new run folder.")
    old, new = ckpt.get("precision", run["precision"]), run["precision"]
    if old != new and "fp32" in (old, new):
        raise CheckpointError(f"{path} was trained in {old} but this resume would run in {new} (device "
                              f"{run['device']}); resume on the same kind of device, set train.amp to match "
                              "(false = fp32), or start a new run folder.")


@dataclass
class _State:
    """What a checkpoint holds besides the weights: where training is and the open epoch's sums."""
    step: int = 0
    seconds: float = 0.0
    epoch_loss: float = 0.0
    epoch_count: int = 0
    skipped: int = 0                    # fp16 steps the GradScaler skipped (overflowing gradients)
    precision_changes: tuple = ()       # ({"step", "from", "to"}, ...): a run resumed on another GPU


def _restore(ckpt, model, optimizer, scaler, device, precision: str) -> _State:
    """The checkpoint's weights, optimiser, RNG and counters. fp16 <-> bf16 is allowed (the weights
    and Adam's moments are fp32 either way): the GradScaler's state is kept only when both are fp16,
    and the change is recorded."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng_cuda"])
    changes = tuple(ckpt.get("precision_changes", ()))
    if ckpt.get("precision", precision) != precision:
        changes += ({"step": ckpt["step"], "from": ckpt["precision"], "to": precision},)
    return _State(ckpt["step"], ckpt["pretrain_time_s"], ckpt.get("epoch_loss", 0.0), ckpt.get("epoch_count", 0),
                  ckpt.get("skipped", 0), changes)


def _trim_logs(run_dir: Path, step: int) -> None:
    """Drop log lines past the checkpoint's step (written before a crash); atomic rewrite."""
    for log in (run_dir / "log_steps.jsonl", run_dir / "log_epochs.jsonl"):
        rows = [r for r in read_jsonl(log) if r["step"] <= step]
        write_text(log, "".join(json.dumps(r) + "\n" for r in rows))


def _step_inputs(cfg, images_u8, step: int, total_steps: int, num_patches: int, device, rows: slice, batch: int):
    """Rows `rows` of the step's global batch of `batch` images (their images in `images_u8`):
    augmented images, mask noise and the mask ratio, a pure function of (seed, step). The random
    draws are made for the whole global batch, so they do not depend on how it is split over
    processes or micro-batches, but only these rows are resampled."""
    g = step_generator(cfg.seed, step, device)
    imgs = augment(images_u8, cfg.model.img_size, cfg.train.crop_scale, generator=g, device=device, rows=rows,
                   batch=batch)
    noise = torch.rand(batch, num_patches, generator=g, device=device)[rows]
    return imgs, noise, mask_ratio_at(step / total_steps, cfg.variant, schedule_draw(cfg.seed, step))


def schedule_draw(seed: int, step: int) -> float:
    """The step's uniform draw for the mask schedule (the 'random' one uses it): on the host, from a
    generator of its own, so it is the same on every device and for any batch, and reading it never
    waits for a GPU. (Until 2026-12-07 it came after the images' draws from the step's generator on
    the CPU; the one record of the `random_ratio` arm reproduces at its own commit.)"""
    return torch.rand(1, generator=torch.Generator().manual_seed(2 ** 40 + seed * 1_000_003 + step)).item()


def _train_step(objective, optimizer, scaler, micro_inputs, accum: int, lr, dtype, log, step: int, w: World):
    """One update from `accum` micro-batches (micro_inputs(k) -> images, noise, ratio), gradients
    summed locally and synchronised across ranks once, at the last one. Returns this rank's loss and
    loss terms, detached, on the device, and the step's mask ratio. When the log checks every step
    (CPU) a non-finite loss stops before the update; on CUDA the check waits for the next log flush,
    so no step waits for the GPU."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total, terms = 0.0, {}
    for k in range(accum):
        imgs, noise, ratio = micro_inputs(k)
        last = k == accum - 1
        with objective.no_sync() if w.group and not last else contextlib.nullcontext():
            with torch.autocast(imgs.device.type, dtype=dtype, enabled=dtype is not None):
                loss, parts, _, _ = objective(imgs, ratio, noise)
            if log.every == 1:
                everyone = mean_over_ranks(loss.detach(), w).item()  # the same on every rank: all stop together
                if not math.isfinite(everyone):
                    log.non_finite(step, everyone, "stopped before updating the weights",
                                   {name: v.item() for name, v in parts.items()})
            scaler.scale(loss / accum).backward()
        total = total + loss.detach() / accum
        terms = {name: terms.get(name, 0.0) + v.detach() / accum for name, v in parts.items()}
    scaler.step(optimizer)
    scaler.update()
    return total, terms, ratio


def pretrain(cfg: PretrainConfig, run_dir, data=None, data_root="data", resume: bool = True,
             device=None, progress: bool = True, stop_at_epoch: int | None = None) -> dict:
    """Pretrain `cfg` into `run_dir`; returns the run's results dict.

    data: an ImageSet (else loaded from `cfg.dataset` under data_root, split 'pretrain').
    resume: continue from run_dir/checkpoint_last.pt if present (else refuse to overwrite it).
    stop_at_epoch: end this call after that many epochs (a checkpoint is written); a later call
    resumes. Ctrl-C saves a checkpoint at the current step and re-raises KeyboardInterrupt.
    The run folder is locked while this runs: a second process on it is refused.
    Under torchrun (see distributed.py) every rank trains its slice of the same global batch and
    rank 0 alone writes the run folder, which every machine must see (a shared file system).
    """
    validate(cfg)
    device = pick_device(device)
    w = world(device)
    split = w.size * cfg.train.accum_iter
    if cfg.train.batch_size % split:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is the global batch and must divide by the "
                         f"{w.size} processes x {cfg.train.accum_iter} micro-batches (train.accum_iter): "
                         f"choose a multiple of {split}")
    device = device_for(w, device)
    agreed(w, lambda: prepare_run_dir(run_dir) if w.main else None)
    run_dir = Path(run_dir)
    with run_lock(run_dir) if w.main else contextlib.nullcontext():
        result = _pretrain(cfg, run_dir, data, data_root, resume, device, progress and w.main, stop_at_epoch, w)
    barrier(w)
    return result if w.main else read_results(run_dir)


class _Objective(torch.nn.Module):
    """The pretraining objective as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: MAE, variant):
        super().__init__()
        self.model, self.variant = model, variant

    def forward(self, imgs, ratio, noise):
        return pretrain_loss(self.model, imgs, ratio, self.variant, noise)


def _load_checkpoint(ckpt_path: Path, cfg, run: dict, resume: bool, w: World):
    """The checkpoint to resume from, or None. Every rank reads it and all must see the same one:
    a rank that sees none (a run folder that is not shared) would start at step 0 while the others
    resume, so that is refused on every rank."""
    def read():
        if ckpt_path.exists() and not resume:
            raise CheckpointError(f"{ckpt_path} exists. Pass resume=True (--resume) to continue it, "
                                  "or choose another run folder / delete it to start over.")
        ckpt = load_torch(ckpt_path) if ckpt_path.exists() else None
        if ckpt is not None:
            _check_resumable(ckpt, cfg, ckpt_path, run)
        return ckpt
    ckpt = agreed(w, read)
    seen = gather_objects(w, None if ckpt is None else ckpt["step"])
    if len(set(seen)) > 1:
        raise CheckpointError(f"the processes disagree about {ckpt_path} (step seen by each rank: {seen}); "
                              "under torchrun every machine must see the same run folder (a shared file system)")
    return ckpt


def _optimizer(model, t, device):
    """AdamW as official; fused on CUDA, which also lets the GradScaler skip a step without a host sync."""
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=t.betas,
                             fused=device.type == "cuda")


@dataclass
class _Training:
    """What one pretraining holds while it runs: the model with its optimiser and scaler, the
    objective (wrapped for DDP under torchrun), the counters, and where its checkpoint goes."""
    cfg: PretrainConfig
    model: MAE
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    objective: torch.nn.Module
    state: _State
    dtype: torch.dtype | None           # autocast's dtype; None: fp32
    run: dict                           # n_images, steps_per_epoch, precision, device: what a resume must match
    total_steps: int
    warmup_steps: float
    ckpt_path: Path
    device: torch.device
    w: World
    saved_step: int = 0                 # the step of the newest checkpoint on disk

    @property
    def steps_per_epoch(self) -> int:
        return self.run["steps_per_epoch"]


def _setup(cfg, run_dir: Path, data, resume: bool, device, w: World) -> _Training:
    """The model, optimiser and scaler, from the checkpoint when one is resumed; the loss terms checked."""
    t = cfg.train
    steps_per_epoch = len(data) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} images are fewer than one batch of {t.batch_size}; "
                         "lower train.batch_size or use more images")
    dtype = amp_dtype(device, t.amp)
    run = {"n_images": len(data), "steps_per_epoch": steps_per_epoch, "precision": precision_name(dtype),
           "device": device.type}
    ckpt_path = run_dir / "checkpoint_last.pt"
    ckpt = _load_checkpoint(ckpt_path, cfg, run, resume, w)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    optimizer = _optimizer(model, t, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state = _restore(ckpt, model, optimizer, scaler, device, run["precision"]) if ckpt is not None else _State()
    if loss_terms(cfg.variant):  # a term that fails or gives no finite scalar is named before any work
        check_terms(model, prepare(data.images[:4], cfg.model.img_size, device), cfg.variant)
    objective = _Objective(model, cfg.variant)
    if w.group:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    if w.main:
        _trim_logs(run_dir, state.step)
    return _Training(cfg, model, optimizer, scaler, objective, state, dtype, run, t.epochs * steps_per_epoch,
                     t.warmup_epochs * steps_per_epoch, ckpt_path, device, w, saved_step=state.step)


def _save(tr: _Training, seconds: float) -> None:
    """checkpoint_last.pt: weights, optimiser, scaler, counters and RNG (rank 0 writes, every rank waits)."""
    tr.saved_step, state = tr.state.step, tr.state
    if tr.w.main:
        save_torch({"model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
                    "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else {},
                    "step": state.step, "epoch": state.step // tr.steps_per_epoch, "pretrain_time_s": seconds,
                    "epoch_loss": state.epoch_loss, "epoch_count": state.epoch_count, "skipped": state.skipped,
                    "precision_changes": list(state.precision_changes),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state() if tr.device.type == "cuda" else None,
                    "config": to_dict(tr.cfg), **tr.run}, tr.ckpt_path)
    barrier(tr.w)


def _step(tr: _Training, idx, gather, log: StepLog) -> None:
    """One optimisation step on the global batch `idx` (this rank's rows, in micro-batches), logged."""
    t, w, step = tr.cfg.train, tr.w, tr.state.step
    per_rank = t.batch_size // w.size
    micro = per_rank // t.accum_iter

    def micro_inputs(k):
        rows = slice(w.rank * per_rank + k * micro, w.rank * per_rank + (k + 1) * micro)
        return _step_inputs(tr.cfg, gather(idx[rows]), step, tr.total_steps, tr.model.num_patches, tr.device, rows,
                            t.batch_size)
    lr = lr_at(step, tr.total_steps, tr.warmup_steps, t.lr, t.min_lr)
    loss, parts, ratio = _train_step(tr.objective, tr.optimizer, tr.scaler, micro_inputs, t.accum_iter, lr, tr.dtype,
                                     log, step, w)
    tr.state.step += 1
    log.add({"step": tr.state.step, "epoch": step // tr.steps_per_epoch + 1, "lr": lr, "mask_ratio": ratio}, loss,
            parts, tr.scaler._scale.clone() if tr.scaler.is_enabled() else None)  # noqa: SLF001 - read without a sync


def _end_epoch(tr: _Training, log: StepLog, board, data, epoch: int, seconds: float, end_step: int) -> None:
    """The epoch's row (loss, feature health), TensorBoard's reconstructions, and a checkpoint when due."""
    t, step = tr.cfg.train, tr.state.step
    log.end_epoch(step, epoch + 1, seconds, feature_health_of(tr.model, data.images[:HEALTH_IMAGES],
                                                              tr.cfg.model.img_size))
    if board is not None:
        board_reconstructions(board, tr.model, data.images[:4], tr.cfg.model.img_size, step)
    if (epoch + 1) % t.save_every == 0 or step == end_step:
        _save(tr, seconds)


def _pretrain(cfg, run_dir, data, data_root, resume, device, progress, stop_at_epoch, w: World) -> dict:
    t = cfg.train
    download = data is None  # data handed in: the monitor reads only files already there
    if data is None:  # the processes of a machine download one at a time, waiting on a file lock, not in a collective
        data = agreed(w, lambda: locked(w.size > 1, data_root, lambda: load_dataset(cfg.dataset, "pretrain", data_root)))
    data = data.head(t.max_images)
    tr = _setup(cfg, run_dir, data, resume, device, w)
    state, total_steps = tr.state, tr.total_steps
    end_step = total_steps if stop_at_epoch is None else min(total_steps, stop_at_epoch * tr.steps_per_epoch)
    if state.step >= total_steps and progress:
        print(f"{tr.ckpt_path} is already complete ({state.step} steps): nothing to train")
    tr.model.train()
    t0, time_before = time.perf_counter(), state.seconds
    elapsed = lambda: time_before + time.perf_counter() - t0  # noqa: E731
    bar = tqdm(total=total_steps, initial=state.step, desc=f"pretrain {cfg.variant.name}", unit="step",
               disable=not progress, dynamic_ncols=True)
    every = t.log_every or (1 if device.type == "cpu" else 25)
    images = resident(data.images, device)
    gather = gatherer(images, device)  # host images bound for a GPU: pinned, non-blocking copies
    monitor, monitor_at = agreed(w, lambda: locked(w.size > 1, data_root, lambda: _monitor(
        cfg, data_root, download, total_steps, progress, w)))
    first_step = state.step
    with deferred_sigint() as sigint:
        board = tensorboard_writer(run_dir, t, w)
        log = StepLog(run_dir, state, every, bar, tr.ckpt_path, tr.dtype is not None, w, sigint, write=w.main,
                      board=board)
        try:
            order = None
            while state.step < end_step:
                epoch, i = divmod(state.step, tr.steps_per_epoch)
                if order is None or i == 0:  # the epoch's order, on the device that holds the images
                    order = epoch_order(len(data), cfg.seed, epoch).to(images.device)
                _step(tr, order[i * t.batch_size:(i + 1) * t.batch_size], gather, log)
                report_eta(log, state.step - first_step, t0, end_step - state.step, device, cfg.preset, progress)
                if state.step in monitor_at:  # before any checkpoint of this step, so a resume never skips it
                    log.monitor(state.step, state.step / tr.steps_per_epoch, monitor.measure(tr.model))
                if state.step % tr.steps_per_epoch == 0:
                    _end_epoch(tr, log, board, data, epoch, elapsed(), end_step)
                if log.stop:
                    log.flush()
                    _save(tr, elapsed())
                    print(f"Interrupted at step {state.step}: checkpoint saved to {tr.ckpt_path}; run again to resume.")
                    raise KeyboardInterrupt
            log.flush()
        finally:
            log.close()
    seconds = elapsed()
    if state.step != tr.saved_step or not tr.ckpt_path.exists():
        _save(tr, seconds)  # the end, when save_every skipped the last epoch
    if state.step < total_steps:
        return {"status": "paused", "step": state.step, "total_steps": total_steps}
    return _finish(cfg, run_dir, tr.model, seconds, total_steps, len(data), device, tr.run["precision"], w,
                   state) if w.main else {}


def _monitor(cfg, data_root, download: bool, total_steps: int, progress: bool, w: World):
    """The k-NN monitor (rank 0 only: the others wait for it at the next collective) and its steps."""
    t = cfg.train
    monitor, what = make_monitor(cfg, data_root, download) if w.main else (None, "")
    if progress and w.main:
        print(f"k-NN monitor: {what}")
    return monitor, set(monitor_steps(total_steps, t.monitor_points, t.monitor_at) if monitor else ())


def _finish(cfg, run_dir, model, seconds, total_steps, n_images, device, precision, w: World, state: _State) -> dict:
    """Write the encoder file and the run's results; evaluations of an older encoder are dropped."""
    save_torch({"model": encoder_state_dict(model), "config": to_dict(cfg)}, run_dir / "encoder_pretrained.pt")
    last = epoch_rows(run_dir)
    results = {k: v for k, v in read_results(run_dir).items() if k not in EVAL_KEYS}
    save_json(results, run_dir / "results.json")
    return merge_results(run_dir, {
        "variant": cfg.variant.name, "preset": cfg.preset, "dataset": cfg.dataset, "seed": cfg.seed,
        "config": to_dict(cfg), "pretrain_time_s": round(seconds, 2), "pretrain_steps": total_steps,
        "pretrain_images": n_images, "pretrain_final_loss": last[-1]["loss"] if last else None,
        "torch": torch.__version__, "device": device_name(device), "precision": precision, "world_size": w.size,
        "process_group": torch.distributed.get_backend() if w.group else None,
        "matmul_precision": torch.get_float32_matmul_precision(), "skipped_steps": state.skipped,
        "precision_changes": list(state.precision_changes), "git_commit": git_commit(), "status": "done"})


