"""End-to-end fine-tuning: the whole encoder trains, as the official `main_finetune.py`.

The official models_vit with global pooling (ViTClassifier), layer-wise lr decay, drop path, label
smoothing, warmup + cosine, batched random resized crop (scale 0.08-1) + flip, then the official
RandAugment, random erasing and mixup / cutmix, batched on the device (ft_augment.py; the short
presets turn those off). A random encoder fine-tuned without layer-wise decay is the "scratch"
baseline. The training images (where they fit) and the labels stay on the device: no step copies
from the host or waits for the GPU.
"""
import time
from dataclasses import asdict

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .config import PretrainConfig
from .data import ImageSet, augment, gatherer, prepare, resident, step_generator
from .devices import amp_dtype, pick_device
from .ft_augment import ft_augmenter
from .model import ViTClassifier
from .optim import lr_at, param_groups_lrd
from .runs import pack_bits


@torch.no_grad()
def classify(model, images_u8, labels, img_size: int, batch_size: int, device, amp: bool = True):
    """(top-1 in %, per-image correctness on the host) of a classifier on whole images."""
    model.eval()
    dtype = amp_dtype(device, amp)
    labels, right = labels.to(device), []
    for i in range(0, len(images_u8), batch_size):
        x = prepare(images_u8[i:i + batch_size], img_size, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            right.append(model(x).argmax(1) == labels[i:i + batch_size])
    right = torch.cat(right).cpu()
    return 100.0 * right.sum().item() / len(images_u8), right


def _classifier(cfg: PretrainConfig, num_classes: int, encoder_state: dict | None, seed: int, device):
    """The ViT classifier (global pooling, drop path), its encoder from `encoder_state` or random."""
    torch.manual_seed(seed)
    model = ViTClassifier(num_classes, drop_path=cfg.eval.ft_drop_path, **asdict(cfg.model))
    if encoder_state is not None:
        model.load_encoder(encoder_state)
    return model.to(device)


def _update(model, opt, scaler, criterion, x, y, lr: float, dtype) -> torch.Tensor:
    """One step at base lr `lr`, each group scaled by its layer's decay; the loss, detached."""
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = criterion(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def finetune(cfg: PretrainConfig, train: ImageSet, test: ImageSet, encoder_state: dict | None = None,
             seed: int = 0, device=None, progress: bool = True, layer_decay: float | None = None):
    """Fine-tune the whole encoder (from `encoder_state`, or random for the scratch baseline).
    layer_decay: defaults to eval.ft_layer_decay. Returns (results dict, the trained ViTClassifier)."""
    device, e = pick_device(device), cfg.eval
    num_classes = len(train.classes) or int(train.labels.max()) + 1
    model = _classifier(cfg, num_classes, encoder_state, seed, device)
    lr = e.ft_blr * e.batch_size / 256
    layer_decay = e.ft_layer_decay if layer_decay is None else layer_decay
    opt = torch.optim.AdamW(param_groups_lrd(model, e.ft_weight_decay, layer_decay), lr=lr, fused=device.type == "cuda")
    dtype = amp_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    augmenter = ft_augmenter(e, num_classes, device, seed)
    criterion = nn.CrossEntropyLoss(label_smoothing=e.ft_label_smoothing)
    steps_per_epoch = len(train) // e.batch_size or 1
    total, warmup = e.ft_epochs * steps_per_epoch, e.ft_warmup_epochs * steps_per_epoch
    t0, step, curve = time.perf_counter(), 0, []
    order_g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc="fine-tune" if encoder_state is not None else "fine-tune (scratch)",
               disable=not progress, leave=False)
    # images (where they fit) and labels stay on the device, indexed there: no step copies from the host
    images, labels = resident(train.images, device), train.labels.to(device)
    gather = gatherer(images, device)
    for epoch in range(e.ft_epochs):
        model.train()
        order = torch.randperm(len(train), generator=order_g).to(images.device)  # one copy per epoch
        epoch_sum = torch.zeros((), device=device)  # read once per epoch: no step waits for the GPU
        for i in range(steps_per_epoch):
            idx = order[i * e.batch_size:(i + 1) * e.batch_size]
            x01 = augment(gather(idx), cfg.model.img_size, e.ft_crop_scale,
                          generator=step_generator(seed, step, device), device=device, normalized=False)
            x, y = augmenter(x01, labels[idx.to(device, non_blocking=True)])
            epoch_sum = epoch_sum + _update(model, opt, scaler, criterion, x, y, lr_at(step, total, warmup, lr, 1e-6),
                                            dtype)
            step += 1
            bar.update(1)
        curve.append({"epoch": epoch + 1, "train_loss": epoch_sum.item() / steps_per_epoch})
        bar.set_postfix(loss=f"{curve[-1]['train_loss']:.3f}")
    bar.close()
    top1, right = classify(model, test.images, test.labels, cfg.model.img_size, e.batch_size, device, cfg.train.amp)
    return {"top1": top1, "correct": pack_bits(right), "epochs": e.ft_epochs, "steps": total, "layer_decay": layer_decay,
            "final_train_loss": curve[-1]["train_loss"], "curve": curve,
            "time_s": round(time.perf_counter() - t0, 2)}, model


FT_RECIPES = {"pretrained": "official: layer-wise lr decay eval.ft_layer_decay",
              "scratch": "from scratch: no layer-wise lr decay (eval.ft_scratch_layer_decay), as the MAE "
                         "paper's ViT trained from scratch"}
