"""The optimiser recipe, as the official code: AdamW parameter groups without weight decay on biases
and norms, layer-wise lr decay for fine-tuning, and the per-step warmup + half-cycle cosine."""
import math

import torch

from .model import ViTClassifier


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


def param_groups_lrd(model: ViTClassifier, weight_decay: float, layer_decay: float):
    """Official layer-wise lr decay: patch embed / cls / pos = layer 0, block i = layer i + 1,
    fc_norm and head = last; scale = decay^(last - layer). No decay on 1-D weights, biases,
    cls_token and pos_embed."""
    num_layers = len(model.blocks) + 1
    groups = {}
    for name, p in model.named_parameters():
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers
        no_decay = p.ndim == 1 or name.endswith(".bias") or name in ("cls_token", "pos_embed")
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (num_layers - layer)}
        groups[key]["params"].append(p)
    return list(groups.values())
