"""How a pretrained encoder is judged: linear probe, k-NN and end-to-end fine-tuning.

Protocol, stated once (docs/protocol.md has the details and the reasons):
- Features: the frozen encoder on the WHOLE image (no masking), resized to the run's image size,
  normalised as in pretraining; the cls token (official linear probe) AND the mean of the patch
  tokens, from one pass. Cached per run folder, keyed by the encoder file's hash and the images.
- Linear probe: BatchNorm1d(affine=False, eps 1e-6) + Linear (init std 0.01), as official. The
  official LARS at blr 0.1 assumes batch 16384; at batch 128 its trust-ratio steps are ~100x too
  small, so we use AdamW (lr 1e-3, no weight decay) with 10 % warmup and cosine. Top-1 is read on
  the test split at the LAST epoch: no model selection on the test split.
- k-NN: cosine similarity on L2-normalised features, k = 20, votes weighted by exp(sim / 0.07).
- Fine-tuning: the WHOLE encoder trains (official models_vit with global pooling), layer-wise lr
  decay, drop path, label smoothing, warmup + cosine, batched random resized crop (scale 0.08-1) +
  flip, then the official RandAugment, random erasing and mixup/cutmix, batched on the device
  (ft_augment.py; the short presets turn those off). A random encoder is the
  "scratch" baseline (run folder `scratch/`), fine-tuned without layer-wise decay.
- Results are stored with their key (encoder hash, data fingerprint, settings) and reused only
  when it matches.
"""
import hashlib
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import PretrainConfig, apply_overrides, from_dict, to_dict, validate
from .data import ImageSet, augment, gatherer, load_dataset, prepare, resident
from .model import MAE, ViTClassifier, encoder_state_dict, pool_tokens
from .ft_augment import ft_augmenter
from .pretrain import amp_dtype, build_model, load_encoder, lr_at, pick_device, precision_name, step_generator
from .runs import HEADLINES, load_torch, merge_results, pack_bits, read_results, run_lock, save_json, save_torch


# ----------------------------------------------------------------------------- features
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


# ----------------------------------------------------------------------------- linear probe, k-NN
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


# ----------------------------------------------------------------------------- fine-tuning
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


def finetune(cfg: PretrainConfig, train: ImageSet, test: ImageSet, encoder_state: dict | None = None,
             seed: int = 0, device=None, progress: bool = True, layer_decay: float | None = None):
    """Fine-tune the whole encoder (from `encoder_state`, or random for the scratch baseline).
    layer_decay: defaults to eval.ft_layer_decay. Returns (results dict, the trained ViTClassifier)."""
    device, e = pick_device(device), cfg.eval
    torch.manual_seed(seed)
    num_classes = len(train.classes) or int(train.labels.max()) + 1
    model = ViTClassifier(num_classes, drop_path=e.ft_drop_path, **asdict(cfg.model))
    if encoder_state is not None:
        model.load_encoder(encoder_state)
    model.to(device)
    lr = e.ft_blr * e.batch_size / 256
    layer_decay = e.ft_layer_decay if layer_decay is None else layer_decay
    opt = torch.optim.AdamW(param_groups_lrd(model, e.ft_weight_decay, layer_decay), lr=lr, fused=device.type == "cuda")
    dtype = amp_dtype(device, cfg.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    augmenter = ft_augmenter(e, num_classes, device, seed)
    criterion = nn.CrossEntropyLoss(label_smoothing=e.ft_label_smoothing)
    steps_per_epoch = len(train) // e.batch_size or 1
    total, warmup = e.ft_epochs * steps_per_epoch, e.ft_warmup_epochs * steps_per_epoch
    t0, step = time.perf_counter(), 0
    order_g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc="fine-tune" if encoder_state is not None else "fine-tune (scratch)",
               disable=not progress, leave=False)
    curve = []
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
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr, 1e-6) * group["lr_scale"]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = criterion(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step, epoch_sum = step + 1, epoch_sum + loss.detach()
            bar.update(1)
        curve.append({"epoch": epoch + 1, "train_loss": epoch_sum.item() / steps_per_epoch})
        bar.set_postfix(loss=f"{curve[-1]['train_loss']:.3f}")
    bar.close()
    top1, right = classify(model, test.images, test.labels, cfg.model.img_size, e.batch_size, device, cfg.train.amp)
    return {"top1": top1, "correct": pack_bits(right), "epochs": e.ft_epochs, "steps": total, "layer_decay": layer_decay,
            "final_train_loss": curve[-1]["train_loss"], "curve": curve,
            "time_s": round(time.perf_counter() - t0, 2)}, model


# ----------------------------------------------------------------------------- run folders
def run_config(run_dir) -> PretrainConfig:
    results = read_results(run_dir)
    if "config" not in results:
        raise FileNotFoundError(f"{run_dir} has no results.json with a config: pretrain it first")
    return from_dict(results["config"])


def make_scratch_run(cfg: PretrainConfig, run_dir, seed: int = 0) -> Path:
    """A run folder holding a randomly initialised encoder: the no-pretraining baseline."""
    run_dir = Path(run_dir)
    if not (run_dir / "encoder_pretrained.pt").exists():
        torch.manual_seed(seed)
        scfg = replace(cfg, seed=seed, variant=replace(cfg.variant, name="scratch"))
        save_torch({"model": encoder_state_dict(build_model(scfg)), "config": to_dict(scfg)},
                   run_dir / "encoder_pretrained.pt")
        merge_results(run_dir, {"variant": "scratch", "seed": seed, "config": to_dict(scfg),
                                "dataset": cfg.dataset, "preset": cfg.preset, "pretrain_time_s": 0.0,
                                "status": "random init"})
    return run_dir


EVAL_SPLITS = ("validation", "heldout")


def load_eval_data(cfg: PretrainConfig, data_root="data", split: str = "validation", download: bool = True):
    """(probe-training images, scored images). 'validation' scores the first eval.max_test test
    images (every choice of arm or setting was made there); 'heldout' scores the NEXT max_test
    test images, which no choice saw: a confirmation that cannot be tuned to."""
    e = cfg.eval
    train = load_dataset(cfg.dataset, "train", data_root, download, max_images=e.max_train)
    if split == "validation":
        return train, load_dataset(cfg.dataset, "test", data_root, download, max_images=e.max_test)
    if split != "heldout":
        raise ValueError(f"unknown evaluation split {split!r}; valid: {', '.join(EVAL_SPLITS)}")
    test = load_dataset(cfg.dataset, "test", data_root, download)
    if not e.max_test or len(test) < 2 * e.max_test:
        raise ValueError(f"a held-out split needs eval.max_test > 0 and twice as many test images: "
                         f"max_test {e.max_test}, {len(test)} test images")
    return train, test.part(e.max_test, 2 * e.max_test)


def _keyed(run_dir: Path, name: str, key: dict, force: bool, progress: bool, compute) -> dict:
    """Reuse results[name] when it was computed for the same key (encoder hash, data, settings),
    else compute() -> (entry, headline values) and store both; an entry's old fields never linger."""
    done = read_results(run_dir).get(name)
    if not force and isinstance(done, dict) and done.get("key") == key:
        if progress:
            print(f"{run_dir.name}: {name} reused (encoder {key['encoder']}, same data and settings)")
        return done
    entry, headline = compute()
    with run_lock(run_dir):
        results = read_results(run_dir)
        results.update({name: {**entry, "key": key}, **headline})
        save_json(results, run_dir / "results.json")
    return results[name]


def evaluate_run(run_dir, data_root="data", steps=("lp", "knn", "ft"), data=None, device=None,
                 progress: bool = True, force: bool = False, overrides: dict | None = None) -> dict:
    """Linear probe and k-NN (on cls and mean-pooled features) and fine-tuning of one run folder,
    each stored in its results.json with the key it was computed for: the encoder file's hash, the
    data's fingerprint and the step's own settings. A step whose key matches is reused (and says
    so) unless force=True; a retrained encoder or changed settings recompute it.
    overrides: dotted eval settings, e.g. {"eval.lp_epochs": 10}. The headline lp_top1 / knn_top1
    use eval.pool; lp_top1_cls, lp_top1_mean, ... keep both."""
    run_dir = Path(run_dir)
    cfg = apply_overrides(run_config(run_dir), overrides or {})
    validate(cfg)
    train, test = data or load_eval_data(cfg, data_root)
    e, seed = cfg.eval, cfg.seed
    encoder, data_keys = file_key(run_dir / "encoder_pretrained.pt"), (data_key(train), data_key(test))
    base = {"encoder": encoder, "data": "+".join(data_keys), "n_train": len(train), "n_test": len(test), "seed": seed}
    feats = {}

    def features():
        if not feats:
            for split, data, key in (("train", train, data_keys[0]), ("test", test, data_keys[1])):
                feats[split] = cached_features(run_dir, data, split, e.batch_size, device, progress, (encoder, key),
                                               cfg.train.amp)
        return feats["train"], feats["test"]

    def probe():
        tr, te = features()
        t0 = time.perf_counter()
        out = {pool: linear_probe(tr[pool], train.labels, te[pool], test.labels, e.lp_epochs, e.batch_size,
                                  e.lp_lr, seed, device, progress) for pool in POOLS}
        entry = {**out, "optimizer": "AdamW+cosine", "time_s": round(time.perf_counter() - t0, 2)}
        return entry, {"lp_top1": out[e.pool]["top1"], **{f"lp_top1_{p}": out[p]["top1"] for p in POOLS}}

    def knn():
        tr, te = features()
        out = {pool: knn_top1(tr[pool], train.labels, te[pool], test.labels, e.knn_k, e.knn_t, pick_device(device))
               for pool in POOLS}
        return out, {"knn_top1": out[e.pool], **{f"knn_top1_{p}": out[p] for p in POOLS}}

    def ft():
        scratch = cfg.variant.name == "scratch"
        state = load_torch(run_dir / "encoder_pretrained.pt")["model"]
        res, _ = finetune(cfg, train, test, state, seed, device, progress,
                          e.ft_scratch_layer_decay if scratch else e.ft_layer_decay)
        return {**res, "recipe": FT_RECIPES["scratch" if scratch else "pretrained"]}, {"ft_top1": res["top1"]}

    ft_settings = {k: v for k, v in to_dict(e).items() if k.startswith("ft_") or k == "batch_size"}
    plans = {"lp": ({"epochs": e.lp_epochs, "batch_size": e.batch_size, "lr": e.lp_lr}, probe),
             "knn": ({"k": e.knn_k, "t": e.knn_t}, knn), "ft": (ft_settings, ft)}
    for step in steps:
        settings, compute = plans[step]
        _keyed(run_dir, step, {**base, **settings}, force, progress, compute)
    return read_results(run_dir)


FT_RECIPES = {"pretrained": "official: layer-wise lr decay eval.ft_layer_decay",
              "scratch": "from scratch: no layer-wise lr decay (eval.ft_scratch_layer_decay), as the MAE "
                         "paper's ViT trained from scratch"}


def recon_run(run_dir, test: ImageSet, device=None, force: bool = False, progress: bool = False) -> dict:
    """Masked reconstruction metrics (metrics.reconstruction_metrics) of the run's MAE on the first
    eval.recon_images test images, with the fixed mask noise (seed 0) that every run shares;
    stored in results.json, keyed like every evaluation."""
    from .metrics import reconstruction_metrics
    from .pretrain import load_mae
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    images = test.head(cfg.eval.recon_images)
    key = {"encoder": file_key(run_dir / "encoder_pretrained.pt"), "data": data_key(images), "mask_ratio": 0.75,
           "mask_seed": 0}

    def compute():
        model, _ = load_mae(run_dir)
        m = reconstruction_metrics(model.to(pick_device(device)), images.images, cfg.model.img_size)
        return m, {k: m[k] for k in HEADLINES["recon"]}
    _keyed(run_dir, "recon", key, force, progress, compute)
    return read_results(run_dir)


def fresh_results(run_dir) -> dict:
    """results.json without the evaluations whose encoder is not the one in the folder now
    (a run trained again after it was evaluated): stale numbers are never shown."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    enc_path = run_dir / "encoder_pretrained.pt"
    current = file_key(enc_path) if enc_path.exists() else None
    for name, keys in HEADLINES.items():
        entry = results.get(name)
        if not isinstance(entry, dict) or entry.get("key", {}).get("encoder") != current:
            for k in (name, *keys):
                results.pop(k, None)
    return results


# ----------------------------------------------------------------------------- comparison table
METRICS = ("lp_top1", "lp_top1_cls", "lp_top1_mean", "knn_top1", "knn_top1_cls", "knn_top1_mean", "ft_top1",
           "nmse_masked", "psnr_masked", "psnr_masked_floor", "hf_error_masked", "hf_error_floor", "pretrain_time_s")
COLUMNS = ("variant", "seeds", "knn_top1_mean", "lp_top1_mean", "knn_top1_cls", "lp_top1_cls", "ft_top1", "ft_recipe",
           "nmse_masked", "psnr_masked", "psnr_masked_floor", "hf_error_masked", "pretrain_time_s")
# the study's headline first and named as such, in every table of the series
HEADERS = {"seeds": "n seeds", "knn_top1_mean": "k-NN, mean pool (headline)", "lp_top1_mean": "LP, mean pool",
           "knn_top1_cls": "k-NN, cls", "lp_top1_cls": "LP, cls"}


def summarise_variants(results: list[dict]) -> list[dict]:
    """One row per variant: each metric as mean (and sd over seeds where there are several);
    `seeds` lists them. A metric no run of the variant has stays None (shown blank)."""
    groups = {}
    for r in results:
        groups.setdefault(r.get("variant"), []).append(r)
    rows = []
    for variant, runs in groups.items():
        row = {"variant": variant, "seeds": sorted(r.get("seed") for r in runs), "runs": [r["run"] for r in runs],
               "ft_recipe": "scratch" if variant == "scratch" else "pretrained"}
        for m in METRICS:
            vals = [r[m] for r in runs if r.get(m) is not None]
            row[m] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            row[f"{m}_n"] = len(vals)
        rows.append(row)
    return rows


def compare_runs(run_dirs, out_dir) -> list[dict]:
    """Collect the runs' fresh results into out_dir/compare.json and compare.md: one row per
    variant, mean ± sd over seeds where there are several, the number of seeds always shown."""
    runs = [{"run": Path(d).name, **fresh_results(d)} for d in run_dirs if read_results(d)]
    rows = summarise_variants(runs)
    out_dir = Path(out_dir)
    save_json({"variants": rows, "runs": [{k: r.get(k) for k in ("run", "variant", "seed", *METRICS)} for r in runs]},
              out_dir / "compare.json")
    (out_dir / "compare.md").write_text(markdown_table(rows, COLUMNS) + _seed_note(rows))
    return rows


def seed_list(rows) -> str:
    """'seeds: original 0, 1; improved 0': the seeds behind the counts in a table."""
    return "seeds: " + "; ".join(f"{r['variant']} {', '.join(map(str, r['seeds']))}" for r in rows if r.get("seeds"))


def _seed_note(rows) -> str:
    single = [r["variant"] for r in rows if len(r["seeds"]) == 1]
    note = f"\n{seed_list(rows)}.\nValues are mean ± sd over those seeds; "
    if single:
        note += f"{', '.join(map(str, single))} ha{'s' if len(single) == 1 else 've'} ONE seed, so no spread is shown. "
    return note + "A blank (-) is a metric not measured. The scratch row is fine-tuned without layer-wise lr decay.\n"


def markdown_table(rows, columns) -> str:
    """Markdown table; a value with a `<column>_sd` entry is shown as mean ± sd, None as '-'."""
    def fmt(row, c):
        v, sd = row.get(c), row.get(f"{c}_sd")
        if v is None:
            return "-"
        if isinstance(v, list):  # the seeds: their number (seed_list names them)
            return str(len(v)) if v else "-"
        text = f"{v:.2f}" if isinstance(v, float) else str(v)
        return text + (f" ± {sd:.2f}" if sd is not None else "")
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def find_runs(runs_root) -> list[Path]:
    """Run folders under runs_root (those with an encoder), scratch last."""
    runs = sorted(p.parent for p in Path(runs_root).glob("*/encoder_pretrained.pt"))
    return sorted(runs, key=lambda p: p.name == "scratch")
