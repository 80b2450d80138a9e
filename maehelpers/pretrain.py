"""Pretraining: the official recipe (AdamW 0.9/0.95, wd 0.05 off biases and norms, lr = blr*B/256,
per-step warmup + half-cycle cosine), resumable to the bit from `checkpoint_last.pt`.

Randomness is a pure function of (seed, step): the epoch's image order comes from (seed, epoch),
augmentation and mask noise from a generator seeded with (seed, step). Resuming at any step
therefore replays exactly what an uninterrupted run would have done.
"""
import contextlib
import json
import math
import platform
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import RESUME_FREE, PretrainConfig, config_diff, to_dict, validate
from .data import augment, epoch_order, load_dataset
from .losses import pretrain_loss
from .masking import mask_ratio_at
from .model import MAE, encoder_state_dict
from .runs import CheckpointError, git_commit, load_torch, merge_results, prepare_run_dir, read_jsonl, save_torch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


def pick_device(device=None) -> torch.device:
    """The device to use: the one asked for, else CUDA when present, else CPU."""
    if device not in (None, "", "auto"):
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device):
    """Mixed precision on CUDA only: bf16 where supported, else fp16 (with a GradScaler)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 over warmup_steps, then half-cycle cosine from lr down to min_lr."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


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


def _check_resumable(ckpt: dict, cfg: PretrainConfig, path: Path) -> None:
    diff = [d for d in config_diff(ckpt.get("config", {}), to_dict(cfg)) if not d.startswith(RESUME_FREE)]
    if diff:
        hint = ""
        if any(d.startswith(("model.img_size", "model.patch_size")) for d in diff):
            hint = (" To use these weights at another image size, load the encoder with "
                    "maehelpers.load_encoder(...), which interpolates the position embeddings.")
        raise CheckpointError(f"{path} was written with a different config ({'; '.join(diff)}). "
                              "Resume with the same settings, or use another run folder / delete it "
                              f"to start over.{hint}")


def pretrain(cfg: PretrainConfig, run_dir, data=None, data_root="data", resume: bool = True,
             device=None, progress: bool = True, stop_at_epoch: int | None = None) -> dict:
    """Pretrain `cfg` into `run_dir`; returns the run's results dict.

    data: an ImageSet (else loaded from `cfg.dataset` under data_root, split 'pretrain').
    resume: continue from run_dir/checkpoint_last.pt if present (else refuse to overwrite it).
    stop_at_epoch: end this call after that many epochs (a checkpoint is written); a later call
    resumes. Ctrl-C saves a checkpoint at the current step and re-raises KeyboardInterrupt.
    """
    validate(cfg)
    run_dir, device = prepare_run_dir(run_dir), pick_device(device)
    ckpt_path = run_dir / "checkpoint_last.pt"
    ckpt = None
    if ckpt_path.exists():
        if not resume:
            raise CheckpointError(f"{ckpt_path} exists. Pass resume=True (--resume) to continue it, "
                                  "or choose another run folder / delete it to start over.")
        ckpt = load_torch(ckpt_path)
        _check_resumable(ckpt, cfg, ckpt_path)

    t = cfg.train
    if data is None:
        data = load_dataset(cfg.dataset, "pretrain", data_root)
    data = data.head(t.max_images)
    steps_per_epoch = len(data) // t.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} images are fewer than one batch of {t.batch_size}; "
                         "lower train.batch_size or use more images")
    total_steps, warmup_steps = t.epochs * steps_per_epoch, int(t.warmup_epochs * steps_per_epoch)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=t.betas)
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    step, time_before = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
        step, time_before = ckpt["step"], ckpt["pretrain_time_s"]

    saved = {"step": step}  # the step of the newest checkpoint on disk

    def save(at_step: int, seconds: float):
        saved["step"] = at_step
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "step": at_step, "epoch": at_step // steps_per_epoch, "pretrain_time_s": seconds,
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                    "config": to_dict(cfg)}, ckpt_path)

    step_log, epoch_log = run_dir / "log_steps.jsonl", run_dir / "log_epochs.jsonl"
    for log in (step_log, epoch_log):  # drop lines past the checkpoint (written before a crash)
        rows = [r for r in read_jsonl(log) if r["step"] <= step] if ckpt is not None else []
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))

    end_step = total_steps if stop_at_epoch is None else min(total_steps, stop_at_epoch * steps_per_epoch)
    if step >= total_steps and progress:
        print(f"{ckpt_path} is already complete ({step} steps): nothing to train")
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=f"pretrain {cfg.variant.name}", unit="step",
               disable=not progress, dynamic_ncols=True)
    epoch_loss, epoch_count, order = 0.0, 0, None
    with deferred_sigint() as sigint, open(step_log, "a") as slog, open(epoch_log, "a") as elog:
        while step < end_step:
            epoch, i = divmod(step, steps_per_epoch)
            if order is None or i == 0:
                order = epoch_order(len(data), cfg.seed, epoch)
            idx = order[i * t.batch_size:(i + 1) * t.batch_size]
            g = step_generator(cfg.seed, step, device)
            imgs = augment(data.images[idx], cfg.model.img_size, t.crop_scale, generator=g, device=device)
            noise = torch.rand(imgs.shape[0], model.num_patches, generator=g, device=device)
            ratio = mask_ratio_at(step / total_steps, cfg.variant)
            lr = lr_at(step, total_steps, warmup_steps, t.lr, t.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, parts, _, _ = pretrain_loss(model, imgs, ratio, cfg.variant, noise)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                good = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
                raise NonFiniteLossError(f"loss is {loss_value} at step {step} (epoch {epoch}); stopped before "
                                         f"updating the weights; {good}. Try a lower blr or fp32.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            row = {"step": step, "epoch": epoch + 1, "loss": loss_value, "lr": lr, "mask_ratio": ratio,
                   **{k: v.item() for k, v in parts.items()}}
            slog.write(json.dumps(row) + "\n")
            epoch_loss, epoch_count = epoch_loss + loss_value, epoch_count + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", mask=f"{ratio:.2f}")
            if step % steps_per_epoch == 0:
                elog.write(json.dumps({"step": step, "epoch": epoch + 1, "loss": epoch_loss / epoch_count,
                                       "seconds": time_before + time.perf_counter() - t0}) + "\n")
                slog.flush()
                elog.flush()
                epoch_loss, epoch_count = 0.0, 0
                if (epoch + 1) % t.save_every == 0 or step == end_step:
                    save(step, time_before + time.perf_counter() - t0)
            if sigint["hit"]:
                save(step, time_before + time.perf_counter() - t0)
                bar.close()
                print(f"Interrupted at step {step}: checkpoint saved to {ckpt_path}; run again to resume.")
                raise KeyboardInterrupt
    bar.close()
    seconds = time_before + time.perf_counter() - t0
    if step != saved["step"] or not ckpt_path.exists():
        save(step, seconds)  # the end, when save_every skipped the last epoch
    if step < total_steps:
        return {"status": "paused", "step": step, "total_steps": total_steps}

    save_torch({"model": encoder_state_dict(model), "config": to_dict(cfg)}, run_dir / "encoder_pretrained.pt")
    last = read_jsonl(epoch_log)
    return merge_results(run_dir, {
        "variant": cfg.variant.name, "preset": cfg.preset, "dataset": cfg.dataset, "seed": cfg.seed,
        "config": to_dict(cfg), "pretrain_time_s": round(seconds, 2), "pretrain_steps": total_steps,
        "pretrain_images": len(data), "pretrain_final_loss": last[-1]["loss"] if last else None,
        "torch": torch.__version__, "device": device_name(device), "git_commit": git_commit(),
        "status": "done"})


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
