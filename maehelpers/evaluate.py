"""How a pretrained encoder is judged: linear probe, k-NN and end-to-end fine-tuning.

Protocol (RECIPE.md sections 1 and 5), stated once:
- Features: the frozen encoder on the WHOLE image (no masking), resized to the run's image size,
  normalised as in pretraining; `cls` token (official linear probe) or mean of patch tokens.
  Cached per run folder, keyed by the encoder file's hash, so a second probe does not re-encode.
- Linear probe: BatchNorm1d(affine=False, eps 1e-6) + Linear (init std 0.01), as official. The
  official LARS at blr 0.1 assumes batch 16384; at batch 128 its trust-ratio steps are ~100x too
  small, so we use AdamW (lr 1e-3, no weight decay) with 10 % warmup and cosine. Top-1 is read on
  the test split at the LAST epoch: no model selection on the test split.
- k-NN: cosine similarity on L2-normalised features, k = 20, votes weighted by exp(sim / 0.07).
- Fine-tuning: the WHOLE encoder trains (official models_vit with global pooling), layer-wise lr
  decay, drop path, label smoothing, warmup + cosine, optional mixup/cutmix, batched random
  resized crop (scale 0.08-1) + flip; no RandAugment / random erasing. The same recipe from a
  random encoder is the "scratch" baseline (run folder `scratch/`).
"""
import hashlib
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import PretrainConfig, apply_overrides, from_dict, to_dict, validate
from .data import ImageSet, augment, load_dataset, prepare
from .model import MAE, ViTClassifier, encoder_state_dict
from .pretrain import amp_dtype, build_model, load_encoder, lr_at, pick_device, step_generator
from .runs import load_torch, merge_results, read_results, save_json, save_torch


# ----------------------------------------------------------------------------- features
def file_key(path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


@torch.no_grad()
def extract_features(model: MAE, images_u8, img_size: int, pool: str = "cls", batch_size: int = 128,
                     device=None, progress: bool = True, desc: str = "features") -> torch.Tensor:
    """(N, D) float32 features of the frozen encoder on full, unmasked images."""
    device = pick_device(device)
    model = model.to(device).eval()
    dtype = amp_dtype(device)
    out = []
    for i in tqdm(range(0, len(images_u8), batch_size), desc=desc, disable=not progress, leave=False):
        x = prepare(images_u8[i:i + batch_size], img_size, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(model.forward_features(x, pool).float().cpu())
    return torch.cat(out)


def cached_features(run_dir, data: ImageSet, split: str, pool: str, batch_size: int = 128, device=None,
                    progress: bool = True):
    """Features of `data` from run_dir/encoder_pretrained.pt, cached in run_dir/features/."""
    run_dir = Path(run_dir)
    enc_path = run_dir / "encoder_pretrained.pt"
    # the file's hash fixes the weights and their config (image size included)
    cache = run_dir / "features" / f"{data.name}_{split}_{len(data)}_{pool}_{file_key(enc_path)}.pt"
    if cache.exists():
        return load_torch(cache)["features"]
    model, cfg = load_encoder(enc_path)
    feats = extract_features(model, data.images, cfg.model.img_size, pool, batch_size, device, progress,
                             desc=f"{run_dir.name} {split} features")
    save_torch({"features": feats}, cache)
    return feats


# ----------------------------------------------------------------------------- linear probe, k-NN
def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 90, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0, device=None, progress: bool = True) -> dict:
    """Train BN + Linear on frozen features; top-1 (%) on the test features at the last epoch."""
    device = pick_device(device)
    torch.manual_seed(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Linear(train_x.shape[1], num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False, eps=1e-6), head).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    x, y = train_x.to(device), train_y.to(device)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total, warmup = epochs * steps_per_epoch, int(0.1 * epochs) * steps_per_epoch
    g, step = torch.Generator().manual_seed(seed), 0
    for _ in tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False):
        probe.train()
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr)
            loss = F.cross_entropy(probe(x[idx.to(device)]), y[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    probe.eval()
    with torch.no_grad():
        test_pred = probe(test_x.to(device)).argmax(1).cpu()
        train_pred = probe(x).argmax(1).cpu()
    return {"top1": 100.0 * (test_pred == test_y).float().mean().item(),
            "train_top1": 100.0 * (train_pred == train_y).float().mean().item()}


@torch.no_grad()
def knn_predict(train_x, train_y, test_x, k: int = 20, t: float = 0.07, chunk: int = 1024):
    """Weighted k-NN on cosine similarity: each of the k neighbours votes exp(sim / t)."""
    num_classes = int(train_y.max()) + 1
    train_x = F.normalize(train_x.float(), dim=1)
    k = min(k, len(train_x))
    preds = []
    for part in F.normalize(test_x.float(), dim=1).split(chunk):
        sim, idx = (part @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(part), num_classes).scatter_add_(1, train_y[idx], (sim / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_top1(train_x, train_y, test_x, test_y, k: int = 20, t: float = 0.07) -> float:
    return 100.0 * (knn_predict(train_x, train_y, test_x, k, t) == test_y).float().mean().item()


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
def classify(model, images_u8, labels, img_size: int, batch_size: int, device) -> float:
    model.eval()
    dtype = amp_dtype(device)
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        x = prepare(images_u8[i:i + batch_size], img_size, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            correct += (model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
    return 100.0 * correct / len(images_u8)


def finetune(cfg: PretrainConfig, train: ImageSet, test: ImageSet, encoder_state: dict | None = None,
             seed: int = 0, device=None, progress: bool = True):
    """Fine-tune the whole encoder (from `encoder_state`, or random for the scratch baseline).
    Returns (results dict, the trained ViTClassifier)."""
    device, e = pick_device(device), cfg.eval
    torch.manual_seed(seed)
    num_classes = len(train.classes) or int(train.labels.max()) + 1
    model = ViTClassifier(num_classes, drop_path=e.ft_drop_path, **asdict(cfg.model))
    if encoder_state is not None:
        model.load_encoder(encoder_state)
    model.to(device)
    lr = e.ft_blr * e.batch_size / 256
    opt = torch.optim.AdamW(param_groups_lrd(model, e.ft_weight_decay, e.ft_layer_decay), lr=lr)
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    mix = _mixer(e, num_classes)
    criterion = nn.CrossEntropyLoss(label_smoothing=e.ft_label_smoothing)
    steps_per_epoch = len(train) // e.batch_size or 1
    total, warmup = e.ft_epochs * steps_per_epoch, int(e.ft_warmup_epochs * steps_per_epoch)
    t0, step, loss_sum = time.perf_counter(), 0, 0.0
    order_g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=total, desc="fine-tune" if encoder_state is not None else "fine-tune (scratch)",
               disable=not progress, leave=False)
    for epoch in range(e.ft_epochs):
        model.train()
        order = torch.randperm(len(train), generator=order_g)
        for i in range(steps_per_epoch):
            idx = order[i * e.batch_size:(i + 1) * e.batch_size]
            x = augment(train.images[idx], cfg.model.img_size, e.ft_crop_scale,
                        generator=step_generator(seed, step, device), device=device)
            y = train.labels[idx].to(device)
            if mix is not None:
                x, y = mix(x, y)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr, 1e-6) * group["lr_scale"]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = criterion(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step, loss_sum = step + 1, loss_sum + loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    top1 = classify(model, test.images, test.labels, cfg.model.img_size, e.batch_size, device)
    return {"top1": top1, "epochs": e.ft_epochs, "steps": total, "final_train_loss": loss_sum / max(step, 1)
            if total else None, "time_s": round(time.perf_counter() - t0, 2)}, model


def _mixer(e, num_classes):
    if e.ft_mixup <= 0 and e.ft_cutmix <= 0:
        return None
    from torchvision.transforms import v2
    options = ([v2.MixUp(alpha=e.ft_mixup, num_classes=num_classes)] if e.ft_mixup > 0 else []) + \
              ([v2.CutMix(alpha=e.ft_cutmix, num_classes=num_classes)] if e.ft_cutmix > 0 else [])
    return v2.RandomChoice(options)


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


def load_eval_data(cfg: PretrainConfig, data_root="data"):
    e = cfg.eval
    return (load_dataset(cfg.dataset, "train", data_root, max_images=e.max_train),
            load_dataset(cfg.dataset, "test", data_root, max_images=e.max_test))


def evaluate_run(run_dir, data_root="data", steps=("lp", "knn", "ft"), data=None, device=None,
                 progress: bool = True, force: bool = False, overrides: dict | None = None) -> dict:
    """Linear probe, k-NN and fine-tuning of one run folder; each result is merged into its
    results.json. A step whose result is already there is skipped unless force=True.
    overrides: dotted eval settings, e.g. {"eval.lp_epochs": 10}."""
    run_dir = Path(run_dir)
    cfg, done = apply_overrides(run_config(run_dir), overrides or {}), read_results(run_dir)
    validate(cfg)
    train, test = data or load_eval_data(cfg, data_root)
    e, seed = cfg.eval, cfg.seed
    common = {"n_train": len(train), "n_test": len(test), "seed": seed}
    if {"lp", "knn"} & set(steps) and (force or not {"lp_top1", "knn_top1"} <= set(done)):
        t0 = time.perf_counter()
        tr = cached_features(run_dir, train, "train", e.pool, e.batch_size, device, progress)
        te = cached_features(run_dir, test, "test", e.pool, e.batch_size, device, progress)
        t_feat = time.perf_counter() - t0
        if "lp" in steps:
            t0 = time.perf_counter()
            lp = linear_probe(tr, train.labels, te, test.labels, e.lp_epochs, e.batch_size, e.lp_lr, seed,
                              device, progress)
            merge_results(run_dir, {"lp_top1": lp["top1"], "lp": {**lp, **common, "epochs": e.lp_epochs,
                          "pool": e.pool, "optimizer": "AdamW+cosine", "lr": e.lp_lr,
                          "time_s": round(time.perf_counter() - t0, 2), "feature_time_s": round(t_feat, 2)}})
        if "knn" in steps:
            merge_results(run_dir, {"knn_top1": knn_top1(tr, train.labels, te, test.labels, e.knn_k, e.knn_t),
                                    "knn": {**common, "k": e.knn_k, "t": e.knn_t, "pool": e.pool}})
    if "ft" in steps and (force or "ft_top1" not in done):
        state = load_torch(run_dir / "encoder_pretrained.pt")["model"]
        ft, _ = finetune(cfg, train, test, state, seed, device, progress)
        merge_results(run_dir, {"ft_top1": ft["top1"], "ft": {**ft, **common, **{
            k: v for k, v in to_dict(e).items() if k.startswith("ft_")}}})
    return read_results(run_dir)


def recon_run(run_dir, test: ImageSet, device=None) -> dict:
    """Masked PSNR and HF error of the run's MAE on the first eval.recon_images test images,
    with the fixed mask noise (seed 0) that every run shares; merged into results.json."""
    from .metrics import reconstruction_metrics
    from .pretrain import load_mae
    model, cfg = load_mae(run_dir)
    m = reconstruction_metrics(model.to(pick_device(device)), test.images[:cfg.eval.recon_images],
                               cfg.model.img_size)
    return merge_results(run_dir, {"psnr_masked": m["psnr_masked"], "hf_error_masked": m["hf_error_masked"],
                                   "recon": m})


# ----------------------------------------------------------------------------- comparison table
COLUMNS = ("run", "variant", "seed", "lp_top1", "knn_top1", "ft_top1", "psnr_masked", "hf_error_masked",
           "pretrain_time_s")


def compare_runs(run_dirs, out_dir) -> list[dict]:
    """Collect the runs' results into out_dir/compare.json and compare.md (markdown table).
    The scratch row (if present) gives scratch_ft_top1: what pretraining bought."""
    run_dirs = [Path(d) for d in run_dirs if read_results(d)]
    rows = [{"run": d.name, **{c: read_results(d).get(c) for c in COLUMNS[1:]}} for d in run_dirs]
    scratch = next((r["ft_top1"] for r in rows if r["variant"] == "scratch" and r.get("ft_top1") is not None), None)
    for run_dir, row in zip(map(Path, run_dirs), rows):
        row["scratch_ft_top1"] = scratch
        if scratch is not None and row["variant"] != "scratch":
            merge_results(run_dir, {"scratch_ft_top1": scratch})
    out_dir = Path(out_dir)
    save_json(rows, out_dir / "compare.json")
    (out_dir / "compare.md").write_text(markdown_table(rows, COLUMNS))
    return rows


def markdown_table(rows, columns) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def find_runs(runs_root) -> list[Path]:
    """Run folders under runs_root (those with an encoder), scratch last."""
    runs = sorted(p.parent for p in Path(runs_root).glob("*/encoder_pretrained.pt"))
    return sorted(runs, key=lambda p: p.name == "scratch")
