"""Frozen features and what reads them: the linear probe, k-NN, and the raw-pixel baseline.

- Features: the frozen encoder on the WHOLE image (no masking), resized to the run's image size,
  normalised as in pretraining; the cls token (official linear probe) AND the mean of the patch
  tokens, from one pass. Cached per run folder, keyed by the encoder file's hash, the images and
  the precision.
- Linear probe: BatchNorm1d(affine=False, eps 1e-6) + Linear (init std 0.01), as official. The
  official LARS at blr 0.1 assumes batch 16384; at batch 128 its trust-ratio steps are ~100x too
  small, so we use AdamW (lr 1e-3, no weight decay) with 10 % warmup and cosine. Top-1 is read on
  the test split at the LAST epoch: no model selection on the test split.
- k-NN: cosine similarity on L2-normalised features, k = 20, votes weighted by exp(sim / 0.07).
"""
import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import load_encoder
from .config import PretrainConfig
from .data import ImageSet, prepare
from .devices import amp_dtype, pick_device, precision_name
from .model import MAE, pool_tokens
from .optim import lr_at
from .runs import load_torch, pack_bits, save_torch


POOLS = ("cls", "mean")


def file_key(path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def data_key(data: ImageSet) -> str:
    """A fingerprint of the images and labels themselves: two datasets never share cached
    features or results because they have the same name or image count."""
    h = hashlib.sha1(data.images.contiguous().numpy().tobytes())
    if data.labels is not None:
        h.update(data.labels.numpy().tobytes())
    return h.hexdigest()[:12]


@torch.no_grad()
def extract_features(model: MAE, images_u8, img_size: int, batch_size: int = 128, device=None,
                     progress: bool = True, desc: str = "features", amp: bool = True) -> dict:
    """{'cls': (N, D), 'mean': (N, D)} float32 features (on the host) of the frozen encoder on
    full, unmasked images, from one pass: the cls token and the mean of the patch tokens (cls
    excluded). They stay on the device until the end: one copy back, not one per batch.
    amp: mixed precision on CUDA as in pretraining (the run's train.amp)."""
    device = pick_device(device)
    model = model.to(device).eval()
    dtype = amp_dtype(device, amp)
    out = {pool: [] for pool in POOLS}
    for i in tqdm(range(0, len(images_u8), batch_size), desc=desc, disable=not progress, leave=False):
        x = prepare(images_u8[i:i + batch_size], img_size, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            tokens = model.forward_tokens(x)
        for pool in POOLS:
            out[pool].append(pool_tokens(tokens, pool).float())
    return {pool: torch.cat(v).cpu() for pool, v in out.items()}


def cached_features(run_dir, data: ImageSet, split: str, batch_size: int = 128, device=None,
                    progress: bool = True, keys: tuple | None = None, amp: bool = True) -> dict:
    """Both pools' features of `data` from run_dir/encoder_pretrained.pt, cached in
    run_dir/features/ under the encoder file's hash, the data's fingerprint and the precision they
    are computed in (bf16 / fp16 features on CUDA are not fp32 ones; amp: the run's train.amp)."""
    run_dir = Path(run_dir)
    enc_path = run_dir / "encoder_pretrained.pt"
    enc, dat = keys or (file_key(enc_path), data_key(data))
    cache = run_dir / "features" / f"{split}_{dat}_{enc}_{precision_name(amp_dtype(pick_device(device), amp))}.pt"
    if cache.exists():
        return load_torch(cache)
    model, cfg = load_encoder(enc_path)
    feats = extract_features(model, data.images, cfg.model.img_size, batch_size, device, progress,
                             desc=f"{run_dir.name} {split} features", amp=amp)
    save_torch(feats, cache)
    return feats


class PixelFeatures:
    """Raw pixels as probe features, made a batch at a time on the device: `prepare`d images
    (resized to `size`, normalised) flattened. Every value is the one the whole matrix would hold,
    but the matrix itself (N x 3 x size x size floats: 7.3 GB for STL-10's 13,000 labelled images at
    224 px, before the temporaries of resizing) never exists;
    the uint8 images move to the device once."""

    def __init__(self, images_u8: torch.Tensor, size: int, device):
        self.images, self.size = images_u8.to(pick_device(device)), size
        self.device = self.images.device
        self.shape = (len(images_u8), 3 * size * size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        return prepare(self.images[idx], self.size, self.device).flatten(1)


def _on(x, device):
    """A feature tensor moved to the device; PixelFeatures are made there already."""
    return x.to(device) if torch.is_tensor(x) else x


def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 90, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0, device=None, progress: bool = True, predict: bool = False) -> dict:
    """Train BN + Linear on frozen features; top-1 (%) on the test features at the last epoch.
    `curve` records, per epoch, the mean training loss and the test top-1 (for the picture only:
    the reported top-1 is the last epoch's, never the best one). predict=True adds `pred`, the
    class predicted for each test feature. Features, labels and the batch order live on the device;
    the host reads one number per epoch. Features may be tensors or PixelFeatures."""
    device = pick_device(device)
    torch.manual_seed(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Linear(train_x.shape[1], num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False, eps=1e-6), head).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    x, y, test_x, test_y = _on(train_x, device), train_y.to(device), _on(test_x, device), test_y.to(device)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total, warmup = epochs * steps_per_epoch, int(0.1 * epochs) * steps_per_epoch
    g, step, curve = torch.Generator().manual_seed(seed), 0, []
    for epoch in tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False):
        probe.train()
        loss_sum, batches = torch.zeros((), device=device), 0
        for idx in torch.randperm(len(x), generator=g).to(device).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr)
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, batches, loss_sum = step + 1, batches + 1, loss_sum + loss.detach()
        curve.append({"epoch": epoch + 1, "train_loss": (loss_sum / max(batches, 1)).item(),
                      "test_top1": _accuracy(probe, test_x, test_y)})
    out = {"top1": curve[-1]["test_top1"], "train_top1": _accuracy(probe, x, y), "curve": curve}
    if predict:
        out["pred"] = _predict(probe, test_x).cpu()
    return out


@torch.no_grad()
def _predict(probe, x, batch: int = 512) -> torch.Tensor:
    """Predicted classes: one pass for a feature tensor, batches for PixelFeatures."""
    probe.eval()
    if torch.is_tensor(x):
        return probe(x).argmax(1)
    return torch.cat([probe(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def _accuracy(probe, x, y) -> float:
    return 100.0 * (_predict(probe, x) == y).float().mean().item()


@torch.no_grad()
def knn_predict(train_x, train_y, test_x, k: int = 20, t: float = 0.07, chunk: int = 1024, device=None,
                train_chunk: int = 65536):
    """Weighted k-NN on cosine similarity: each of the k neighbours votes exp(sim / t). On `device`
    (default: where the features are), in chunks of test rows and of training rows, so neither the
    similarity matrix nor (for PixelFeatures) the training matrix needs to fit at once."""
    device = torch.device(device) if device is not None else train_x.device  # tensors and PixelFeatures alike
    num_classes = int(train_y.max()) + 1
    train_y = train_y.to(device)
    k = min(k, len(train_x))
    preds = []
    for start in range(0, len(test_x), chunk):
        part = F.normalize(_on(test_x[start:start + chunk], device).float(), dim=1)
        sim, idx = _nearest(part, train_x, k, device, train_chunk)
        votes = torch.zeros(len(part), num_classes, device=device).scatter_add_(1, train_y[idx], (sim / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds).cpu()


def _nearest(part, train_x, k: int, device, train_chunk: int):
    """Cosine similarities and indices of the k training rows nearest to each row of `part`,
    merged over chunks of training rows (one chunk: a single matmul and top-k)."""
    best = None
    for start in range(0, len(train_x), train_chunk):
        rows = F.normalize(_on(train_x[start:start + train_chunk], device).float(), dim=1)
        sim, idx = (part @ rows.T).topk(min(k, len(rows)), dim=1)
        idx = idx + start
        if best is not None:
            sim, pick = torch.cat([best[0], sim], 1).topk(k, dim=1)
            idx = torch.cat([best[1], idx], 1).gather(1, pick)
        best = (sim, idx)
    return best


def knn_top1(train_x, train_y, test_x, test_y, k: int = 20, t: float = 0.07, device=None, **chunks) -> float:
    return 100.0 * (knn_predict(train_x, train_y, test_x, k, t, device=device, **chunks) == test_y).float().mean().item()


def raw_pixel_baseline(cfg: PretrainConfig, train: ImageSet, test: ImageSet, seed: int = 0, device=None) -> dict:
    """Linear probe and k-NN on the normalised pixels themselves, with the run's eval settings:
    what an encoder must beat to be worth its features. The pixels are made batch by batch on
    `device` (PixelFeatures), so STL-10 at 224 px needs no 7.3 GB matrix on the host."""
    size, e, device = cfg.model.img_size, cfg.eval, pick_device(device)
    tr, te = PixelFeatures(train.images, size, device), PixelFeatures(test.images, size, device)
    lp = linear_probe(tr, train.labels, te, test.labels, e.lp_epochs, e.batch_size, e.lp_lr, seed, device, progress=False,
                      predict=True)
    knn = knn_predict(tr, train.labels, te, e.knn_k, e.knn_t, device=device, chunk=512, train_chunk=512)
    knn_right, lp_right = knn == test.labels, lp["pred"] == test.labels
    return {"lp_top1": lp["top1"], "knn_top1": 100.0 * knn_right.float().mean().item(), "lp_curve": lp["curve"],
            "lp_correct": pack_bits(lp_right), "knn_correct": pack_bits(knn_right)}  # per image, packed (runs.pack_bits)
