"""Pretraining: the official recipe (AdamW 0.9/0.95, wd 0.05 off biases and norms, lr = blr*B/256,
per-step warmup + half-cycle cosine), resumable to the bit from `checkpoint_last.pt`.

Randomness is a pure function of (seed, step): the epoch's image order comes from (seed, epoch),
augmentation and mask noise from a generator seeded with (seed, step). Resuming at any step
therefore replays exactly what an uninterrupted run would have done: bit-identical weights on CPU.
On CUDA the same data, masks and schedule are replayed, but some GPU kernels (atomics in backward
passes) are not deterministic, so a resumed run matches an uninterrupted one only to float noise.
"""
import contextlib
import io
import json
import math
import platform
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import RESUME_FREE, PretrainConfig, config_diff, from_dict, to_dict, validate
from .data import augment, epoch_order, load_dataset
from .losses import pretrain_loss
from .masking import mask_ratio_at
from .model import MAE, encoder_state_dict
from .distributed import World, barrier, device_for, mean_over_ranks, world
from .runs import (EVAL_KEYS, CheckpointError, git_commit, load_torch, merge_results, prepare_run_dir, read_jsonl,
                   read_results, run_lock, save_json, save_torch, write_text)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


def pick_device(device=None) -> torch.device:
    """The device to use: the one asked for, else CUDA when present, else CPU."""
    if device not in (None, "", "auto"):
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device, enabled: bool = True, capability: tuple | None = None):
    """Mixed precision on CUDA only, as the official recipe: bf16 on compute capability >= 8.0
    (A100, L4, H100, ...), fp16 with a GradScaler below (T4, V100: their bf16 is emulated).
    None (fp32) on CPU or when switched off (train.amp false)."""
    if device.type != "cuda" or not enabled:
        return None
    major, _ = capability or torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def precision_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def build_model(cfg: PretrainConfig) -> MAE:
    return MAE(**asdict(cfg.model))


def param_groups(model: torch.nn.Module, weight_decay: float):
    """As the official recipe (timm's rule): no weight decay on biases and 1-D weights (norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: float, total_steps: float, warmup_steps: float, lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 over warmup_steps, then half-cycle cosine from lr down to min_lr.
    Any unit works; the official code uses fractional epochs, so a fractional warmup is kept as is."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    t = (step - warmup_steps) / max(total_steps - warmup_steps, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


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
    if ckpt.get("precision", run["precision"]) != run["precision"]:
        raise CheckpointError(f"{path} was trained in {ckpt['precision']} but this resume would run in "
                              f"{run['precision']} (device {run['device']}); resume on the same kind of device, "
                              "set train.amp to match (false = fp32), or start a new run folder.")


@dataclass
class _State:
    """What a checkpoint holds besides the weights: where training is and the open epoch's sums."""
    step: int = 0
    seconds: float = 0.0
    epoch_loss: float = 0.0
    epoch_count: int = 0


def _restore(ckpt, model, optimizer, scaler, device) -> _State:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng_cuda"])
    return _State(ckpt["step"], ckpt["pretrain_time_s"], ckpt.get("epoch_loss", 0.0), ckpt.get("epoch_count", 0))


def _trim_logs(run_dir: Path, step: int) -> None:
    """Drop log lines past the checkpoint's step (written before a crash); atomic rewrite."""
    for log in (run_dir / "log_steps.jsonl", run_dir / "log_epochs.jsonl"):
        rows = [r for r in read_jsonl(log) if r["step"] <= step]
        write_text(log, "".join(json.dumps(r) + "\n" for r in rows))


def _step_inputs(cfg, images_u8, step: int, total_steps: int, num_patches: int, device, w: World = World()):
    """The step's augmented batch, mask noise and mask ratio: a pure function of (seed, step).
    Every rank draws the whole global batch and keeps its own slice of it."""
    g = step_generator(cfg.seed, step, device)
    imgs = augment(images_u8, cfg.model.img_size, cfg.train.crop_scale, generator=g, device=device)
    noise = torch.rand(imgs.shape[0], num_patches, generator=g, device=device)
    u = 0.5
    if cfg.variant.mask_schedule == "random":  # drawn on the host on CUDA: .item() of a GPU value would wait
        host = g if g.device.type == "cpu" else step_generator(cfg.seed, step, torch.device("cpu"))
        u = torch.rand(1, generator=host).item()
    mine = w.slice(imgs.shape[0])
    return imgs[mine], noise[mine], mask_ratio_at(step / total_steps, cfg.variant, u)


def _train_step(objective, optimizer, scaler, imgs, noise, ratio, lr, dtype, log, step: int, w: World):
    """One update; returns the loss and loss terms averaged over ranks, detached and still on the
    device. When the log checks every step (CPU) a non-finite loss stops before the update; on CUDA
    the check waits for the next log flush, so the step does not wait for the device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(imgs.device.type, dtype=dtype, enabled=dtype is not None):
        loss, parts, _, _ = objective(imgs, ratio, noise)
    everyone = mean_over_ranks(loss.detach(), w)  # the same value on every rank, so all stop together
    if log.every == 1 and not math.isfinite(everyone.item()):
        log.non_finite(step, everyone.item(), "stopped before updating the weights")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return everyone, {k: mean_over_ranks(v.detach(), w) for k, v in parts.items()}


class _StepLog:
    """Per-step rows kept on the device and written every `every` steps (1 on CPU), so that on CUDA
    the loop does not wait for the GPU at each step; the finiteness check happens at each flush,
    and always before a checkpoint is written."""

    def __init__(self, run_dir: Path, state: _State, every: int, bar, ckpt_path: Path, amp: bool, write: bool = True):
        self.slog, self.elog = (open(run_dir / name, "a") if write else io.StringIO()
                                for name in ("log_steps.jsonl", "log_epochs.jsonl"))
        self.state, self.every, self.bar, self.ckpt_path, self.amp = state, every, bar, ckpt_path, amp
        self.pending = []

    def add(self, row: dict, loss, parts) -> None:
        self.pending.append((row, loss, parts))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([torch.stack([loss.float(), *[p.float() for p in parts.values()]])
                              for _, loss, parts in self.pending]).tolist()
        for (row, _, parts), vals in zip(self.pending, values):
            if not math.isfinite(vals[0]):
                self.non_finite(row["step"] - 1, vals[0], f"found when checking every {self.every} steps; "
                                                          "nothing after it was saved")
            row.update(loss=vals[0], **dict(zip(parts, vals[1:])))
            self.slog.write(json.dumps(row) + "\n")
            self.state.epoch_loss, self.state.epoch_count = self.state.epoch_loss + vals[0], self.state.epoch_count + 1
        self.bar.update(len(self.pending))
        self.bar.set_postfix(loss=f"{values[-1][0]:.4f}", lr=f"{row['lr']:.2e}", mask=f"{row['mask_ratio']:.2f}")
        self.pending = []
        self.slog.flush()

    def non_finite(self, step: int, value: float, what: str):
        good = f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists() else "no checkpoint was written yet"
        advice = "lower train.blr" + (", or set train.amp false to train in fp32" if self.amp else "")
        raise NonFiniteLossError(f"loss is {value} at step {step}; {what}; {good}. A resume keeps the config and "
                                 f"would meet the same loss: start again in a new run folder with a {advice}.")

    def end_epoch(self, step: int, epoch: int, seconds: float) -> None:
        self.flush()
        self.elog.write(json.dumps({"step": step, "epoch": epoch, "loss": self.state.epoch_loss / self.state.epoch_count,
                                    "seconds": seconds}) + "\n")
        self.elog.flush()
        self.state.epoch_loss, self.state.epoch_count = 0.0, 0

    def close(self) -> None:
        self.slog.close()
        self.elog.close()
        self.bar.close()


def pretrain(cfg: PretrainConfig, run_dir, data=None, data_root="data", resume: bool = True,
             device=None, progress: bool = True, stop_at_epoch: int | None = None) -> dict:
    """Pretrain `cfg` into `run_dir`; returns the run's results dict.

    data: an ImageSet (else loaded from `cfg.dataset` under data_root, split 'pretrain').
    resume: continue from run_dir/checkpoint_last.pt if present (else refuse to overwrite it).
    stop_at_epoch: end this call after that many epochs (a checkpoint is written); a later call
    resumes. Ctrl-C saves a checkpoint at the current step and re-raises KeyboardInterrupt.
    The run folder is locked while this runs: a second process on it is refused.
    Under torchrun (see distributed.py) every rank trains its slice of the same global batch and
    rank 0 alone writes the run folder.
    """
    validate(cfg)
    w = world()
    if cfg.train.batch_size % w.size:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is the global batch and must divide by the "
                         f"{w.size} processes: choose a multiple of {w.size}")
    device = device_for(w, pick_device(device))
    if w.main:
        prepare_run_dir(run_dir)
    barrier(w)
    run_dir = Path(run_dir)
    with run_lock(run_dir) if w.main else contextlib.nullcontext():
        result = _pretrain(cfg, run_dir, data, data_root, resume, device, progress and w.main, stop_at_epoch, w)
    barrier(w)
    return result if w.main else read_results(run_dir)


ETA_STEPS = 5  # steps measured before the expected duration is printed


def eta_message(seconds_per_step: float, remaining: int, device: torch.device, preset: str) -> str:
    """The expected duration of the rest of a run, from the steps measured so far."""
    total = seconds_per_step * remaining
    h, m = divmod(round(total / 60), 60)
    text = (f"measured {seconds_per_step:.2f} s/step over the first {ETA_STEPS} steps: the remaining {remaining} "
            f"steps take about {f'{h} h {m} min' if h else f'{max(m, 1)} min'}")
    if device.type == "cpu" and preset == "paper" and total > 3600:
        text += (". The 'paper' preset (224 px) is meant for a GPU; on a CPU use preset 'fast' (96 px, ~5x cheaper) "
                 "or 'smoke' to check the set-up")
    return text


def resident(images, device: torch.device, limit_bytes: int = 2 << 30):
    """A dataset small enough (Fashion-MNIST, CIFAR-10) lives on the GPU, so no step waits for a copy."""
    if device.type == "cuda" and images.numel() * images.element_size() <= limit_bytes:
        return images.to(device)
    return images


class _Objective(torch.nn.Module):
    """The pretraining objective as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: MAE, variant):
        super().__init__()
        self.model, self.variant = model, variant

    def forward(self, imgs, ratio, noise):
        return pretrain_loss(self.model, imgs, ratio, self.variant, noise)


def _pretrain(cfg, run_dir, data, data_root, resume, device, progress, stop_at_epoch, w: World) -> dict:
    ckpt_path, t = run_dir / "checkpoint_last.pt", cfg.train
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{ckpt_path} exists. Pass resume=True (--resume) to continue it, "
                              "or choose another run folder / delete it to start over.")
    data = (data if data is not None else load_dataset(cfg.dataset, "pretrain", data_root)).head(t.max_images)
    steps_per_epoch = len(data) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} images are fewer than one batch of {t.batch_size}; "
                         "lower train.batch_size or use more images")
    total_steps, warmup_steps = t.epochs * steps_per_epoch, t.warmup_epochs * steps_per_epoch
    dtype = amp_dtype(device, t.amp)
    run = {"n_images": len(data), "steps_per_epoch": steps_per_epoch, "precision": precision_name(dtype),
           "device": device.type}
    ckpt = load_torch(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:
        _check_resumable(ckpt, cfg, ckpt_path, run)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=t.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state = _restore(ckpt, model, optimizer, scaler, device) if ckpt is not None else _State()
    objective = _Objective(model, cfg.variant)
    if w.size > 1:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    if w.main:
        _trim_logs(run_dir, state.step)
    saved = {"step": state.step}  # the step of the newest checkpoint on disk

    def save(seconds: float):
        saved["step"] = state.step
        if w.main:
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                        "step": state.step, "epoch": state.step // steps_per_epoch, "pretrain_time_s": seconds,
                        "epoch_loss": state.epoch_loss, "epoch_count": state.epoch_count,
                        "rng_cpu": torch.get_rng_state(),
                        "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                        "config": to_dict(cfg), **run}, ckpt_path)
        barrier(w)  # every rank waits for the checkpoint

    end_step = total_steps if stop_at_epoch is None else min(total_steps, stop_at_epoch * steps_per_epoch)
    if state.step >= total_steps and progress:
        print(f"{ckpt_path} is already complete ({state.step} steps): nothing to train")
    model.train()
    t0, time_before = time.perf_counter(), state.seconds
    elapsed = lambda: time_before + time.perf_counter() - t0  # noqa: E731
    bar = tqdm(total=total_steps, initial=state.step, desc=f"pretrain {cfg.variant.name}", unit="step",
               disable=not progress, dynamic_ncols=True)
    every = t.log_every or (1 if device.type == "cpu" else 25)
    log = _StepLog(run_dir, state, every, bar, ckpt_path, dtype is not None, write=w.main)
    images = resident(data.images, device)
    order, first_step = None, state.step
    try:
        with deferred_sigint() as sigint:
            while state.step < end_step:
                epoch, i = divmod(state.step, steps_per_epoch)
                if order is None or i == 0:
                    order = epoch_order(len(data), cfg.seed, epoch)
                idx = order[i * t.batch_size:(i + 1) * t.batch_size]
                imgs, noise, ratio = _step_inputs(cfg, images[idx.to(images.device)], state.step, total_steps,
                                                  model.num_patches, device, w)
                lr = lr_at(state.step, total_steps, warmup_steps, t.lr, t.min_lr)
                loss, parts = _train_step(objective, optimizer, scaler, imgs, noise, ratio, lr, dtype, log, state.step, w)
                state.step += 1
                if progress and state.step - first_step == ETA_STEPS and end_step > state.step:
                    log.flush()  # the device catches up, so the time is real
                    print(eta_message((time.perf_counter() - t0) / ETA_STEPS, end_step - state.step, device, cfg.preset))
                log.add({"step": state.step, "epoch": epoch + 1, "lr": lr, "mask_ratio": ratio}, loss, parts)
                if state.step % steps_per_epoch == 0:
                    log.end_epoch(state.step, epoch + 1, elapsed())
                    if (epoch + 1) % t.save_every == 0 or state.step == end_step:
                        save(elapsed())
                if _anyone(sigint["hit"], w, device):
                    log.flush()
                    save(elapsed())
                    print(f"Interrupted at step {state.step}: checkpoint saved to {ckpt_path}; run again to resume.")
                    raise KeyboardInterrupt
            log.flush()
    finally:
        log.close()
    seconds = elapsed()
    if state.step != saved["step"] or not ckpt_path.exists():
        save(seconds)  # the end, when save_every skipped the last epoch
    if state.step < total_steps:
        return {"status": "paused", "step": state.step, "total_steps": total_steps}
    return _finish(cfg, run_dir, model, seconds, total_steps, len(data), device, run["precision"], w) if w.main else {}


def _anyone(flag: bool, w: World, device) -> bool:
    """True on every rank when any rank saw Ctrl-C, so all of them stop at the same step."""
    if w.size == 1:
        return flag
    return bool(mean_over_ranks(torch.tensor(float(flag), device=device), w) > 0)


def _finish(cfg, run_dir, model, seconds, total_steps, n_images, device, precision, w: World) -> dict:
    """Write the encoder file and the run's results; evaluations of an older encoder are dropped."""
    save_torch({"model": encoder_state_dict(model), "config": to_dict(cfg)}, run_dir / "encoder_pretrained.pt")
    last = read_jsonl(run_dir / "log_epochs.jsonl")
    results = {k: v for k, v in read_results(run_dir).items() if k not in EVAL_KEYS}
    save_json(results, run_dir / "results.json")
    return merge_results(run_dir, {
        "variant": cfg.variant.name, "preset": cfg.preset, "dataset": cfg.dataset, "seed": cfg.seed,
        "config": to_dict(cfg), "pretrain_time_s": round(seconds, 2), "pretrain_steps": total_steps,
        "pretrain_images": n_images, "pretrain_final_loss": last[-1]["loss"] if last else None,
        "torch": torch.__version__, "device": device_name(device), "precision": precision, "world_size": w.size,
        "git_commit": git_commit(), "status": "done"})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def load_run_checkpoint(path):
    """A maehelpers checkpoint (full or encoder-only) and its config; CheckpointError otherwise."""
    from .config import from_dict
    obj = load_torch(path)
    if "model" not in obj or "config" not in obj:
        raise CheckpointError(f"{path} has no 'model' and 'config' entries: not a maehelpers checkpoint")
    return obj, from_dict(obj["config"])


def load_encoder(path, img_size: int | None = None):
    """Load `encoder_pretrained.pt` (or a full checkpoint) into an MAE whose encoder holds those
    weights; position embeddings are interpolated when img_size differs from the checkpoint's."""
    from dataclasses import replace
    from .model import adapt_pos_embeds
    obj, cfg = load_run_checkpoint(path)
    if img_size and img_size != cfg.model.img_size:
        cfg = replace(cfg, model=replace(cfg.model, img_size=img_size))
    model = build_model(cfg)
    state = adapt_pos_embeds(obj["model"], model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if k.startswith(("patch_embed.", "cls_token", "blocks.", "norm."))] + unexpected
    if bad:
        raise CheckpointError(f"{path} does not fit the model of its own config: {bad[:5]}")
    return model, cfg


def load_mae(run_dir):
    """The full MAE (decoder included) of a run folder, from its checkpoint_last.pt."""
    ckpt, cfg = load_run_checkpoint(Path(run_dir) / "checkpoint_last.pt")
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg
