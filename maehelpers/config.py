"""Configs as plain dataclasses. Variants and presets are data: an ablation is a dict, not code.

A `PretrainConfig` = model sizes + variant (masking and loss terms) + training recipe + dataset.
`make_config(variant, preset, dataset, **overrides)` builds one; overrides use dotted names
(`{"variant.laplacian_weight": 0.1, "train.epochs": 3}`) so any single knob can be turned alone.
"""
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from .losses import TERMS
from .masking import SCHEDULES


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 8
    num_heads: int = 6
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = True


@dataclass(frozen=True)
class VariantConfig:
    name: str = "original"
    mask_schedule: str = "constant"      # constant | linear | cosine | random (see masking.py)
    mask_ratio: float = 0.75             # the ratio at the end of the schedule
    mask_ratio_start: float = 0.75       # the ratio at step 0 ('random': the other end of the range)
    mask_schedule_frac: float = 0.5      # fraction of training over which start -> end
    laplacian_weight: float = 0.0        # masked Laplacian high-frequency loss; 0 = off
    laplacian_form: str = "interior"     # interior: (p-2)^2 pixels per patch | replicate: all p^2
    target_blur: float = 0.0             # Gaussian sigma (px) of a low-pass reconstruction target; 0 = off
    uniformity_weight: float = 0.0       # uniformity regulariser on encoder features; 0 = off
    uniformity_form: str = "wang_isola"  # wang_isola (log-mean-exp, t) | umae (mean squared cosine)
    uniformity_features: str = "mean"    # mean of visible patch tokens | cls token (after final norm)
    uniformity_t: float = 2.0
    extra_terms: tuple = ()              # ((name, weight), ...) of terms registered with losses.register_term


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    blr: float = 1.5e-4                  # lr = blr * batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    warmup_epochs: float = 1.0
    crop_scale: tuple = (0.2, 1.0)       # RandomResizedCrop scale range
    max_images: int = 0                  # 0 = the whole split; else the first max_images
    save_every: int = 1                  # checkpoint every N epochs (and at the end, on interrupt)
    amp: bool = True                     # mixed precision on CUDA (bf16 on cc >= 8.0, else fp16); never on CPU
    log_every: int = 0                   # steps between loss checks / log writes; 0 = 1 on CPU, 25 on CUDA
    accum_iter: int = 1                  # micro-batches per step (memory only: batch_size stays the step's batch)
    tensorboard: bool = True             # TensorBoard logs in <run>/tensorboard/ where the package is installed
    monitor_points: int = 8              # k-NN monitor points per run, evenly spaced (monitor.py); 0 = off
    monitor_at: tuple = ()               # the monitor's steps instead, when given (e.g. doublings)
    monitor_bank: int = 256              # monitor: labelled probe-training images its neighbours come from
    monitor_queries: int = 128           # monitor: validation images it classifies (never held-out ones)

    @property
    def lr(self) -> float:
        return self.blr * self.batch_size / 256


@dataclass(frozen=True)
class EvalConfig:
    pool: str = "cls"                    # headline feature for probe and k-NN (both are always reported)
    batch_size: int = 128
    max_train: int = 0                   # 0 = whole labelled split
    max_test: int = 0
    lp_epochs: int = 90
    lp_lr: float = 1e-3                  # AdamW + warmup/cosine (stated instead of LARS, see evaluate.py)
    knn_k: int = 20
    knn_t: float = 0.07
    ft_epochs: int = 10
    ft_blr: float = 1e-3                 # lr = ft_blr * batch_size / 256
    ft_layer_decay: float = 0.75         # for pretrained encoders (official)
    ft_scratch_layer_decay: float = 1.0  # the scratch baseline: none, as the paper's from-scratch ViT
    ft_drop_path: float = 0.1
    ft_label_smoothing: float = 0.1
    ft_weight_decay: float = 0.05
    ft_warmup_epochs: float = 1.0
    # the official augmentation (timm's 'rand-m9-mstd0.5-inc1', reprob 0.25, mixup 0.8, cutmix 1.0),
    # here from torchvision.transforms.v2; 0 turns a part off (the short presets turn them all off)
    ft_randaug_magnitude: float = 9.0    # RandAugment magnitude on timm's 0-10 scale
    ft_randaug_mstd: float = 0.5         # each image's magnitude ~ N(magnitude, mstd)
    ft_randaug_ops: int = 2              # ops per image
    ft_reprob: float = 0.25              # random erasing probability (per-pixel noise, after normalising)
    ft_mixup: float = 0.8                # alpha; mixup or cutmix (one of them per batch, as timm's switch 0.5)
    ft_cutmix: float = 1.0               # alpha
    ft_crop_scale: tuple = (0.08, 1.0)
    recon_images: int = 64               # fixed evaluation set for masked PSNR / HF error


@dataclass(frozen=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dataset: str = "stl10"
    preset: str = "paper"
    seed: int = 0


_CURRICULUM = dict(mask_schedule="linear", mask_ratio_start=0.5, mask_ratio=0.75, mask_schedule_frac=0.5)
_LAPLACIAN = dict(laplacian_weight=0.05)
_UNIFORMITY = dict(uniformity_weight=0.01, uniformity_form="wang_isola", uniformity_features="mean")

VARIANTS = {
    "original": VariantConfig("original"),
    "improved": VariantConfig("improved", **_CURRICULUM, **_LAPLACIAN, **_UNIFORMITY),
    "curriculum": VariantConfig("curriculum", **_CURRICULUM),
    "laplacian": VariantConfig("laplacian", **_LAPLACIAN),
    "uniformity": VariantConfig("uniformity", **_UNIFORMITY),
    "uniformity_umae": VariantConfig("uniformity_umae", uniformity_weight=0.01, uniformity_form="umae",
                                     uniformity_features="cls"),
    "decreasing": VariantConfig("decreasing", mask_schedule="linear", mask_ratio_start=0.9,
                                mask_ratio=0.75, mask_schedule_frac=0.5),
    # a ratio drawn uniformly per step (R2MAE); the range is centred on the paper's 0.75
    "random_ratio": VariantConfig("random_ratio", mask_schedule="random", mask_ratio_start=0.6, mask_ratio=0.9),
    # a low-pass target: high frequencies removed before the loss (PixMIM's finding)
    "lowpass": VariantConfig("lowpass", target_blur=1.0),
    # the paper's MAE predicting plain pixels (no per-patch normalisation): its reconstructions borrow nothing
    "original_pixels": VariantConfig("original_pixels"),
}
VARIANT_MODEL = {"original_pixels": {"norm_pix_loss": False}}  # what a variant changes in the model

# the short presets fine-tune for a few epochs, where the official augmentation only slows learning:
# crop, flip, label smoothing and drop path stay, the rest is off (each result records its settings)
_FT_LIGHT = dict(ft_randaug_magnitude=0.0, ft_reprob=0.0, ft_mixup=0.0, ft_cutmix=0.0)
_SMOKE_MODEL = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                           decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
PRESETS = {
    # the project's description: 224 px (STL-10 upscaled), batch 64, 10 epochs
    "paper": dict(model=ModelConfig(img_size=224), train=TrainConfig(epochs=10, batch_size=64),
                  eval=EvalConfig(batch_size=128, lp_epochs=90, ft_epochs=10)),
    # same model at STL-10's native 96 px (36 patches): ~5x cheaper per image
    "fast": dict(model=ModelConfig(img_size=96), train=TrainConfig(epochs=10, batch_size=64),
                 eval=EvalConfig(batch_size=128, lp_epochs=50, ft_epochs=5)),
    # benchmarks/ablation.py on 28 px images (Fashion-MNIST): a smaller ViT (128 wide, 6 deep;
    # decoder 64 x 2) on 49 patches of 4 px, 500 steps of 128 images, so 18 runs fit in ~90 min on 2 CPU cores
    "ablation": dict(model=ModelConfig(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                                       decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
                     train=TrainConfig(epochs=4, batch_size=128, blr=1e-3, warmup_epochs=0.2, max_images=16000),
                     # fine-tuning 20 epochs: the smallest measured budget where it passes the probe
                     # (benchmarks/ft_curve.py); at 2 or 10 it ended below or at the probe
                     eval=EvalConfig(batch_size=256, lp_epochs=30, max_train=5000, max_test=5000, recon_images=256,
                                     ft_epochs=20, **_FT_LIGHT)),
    # the same study sized for one GPU: the ablation model on all 60,000 Fashion-MNIST training images,
    # 100 epochs of batch 256 (23,400 steps); probes on the full train / test splits
    "ablation_gpu": dict(model=ModelConfig(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                                           decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
                         train=TrainConfig(epochs=100, batch_size=256, blr=1e-3, warmup_epochs=5, max_images=60000),
                         eval=EvalConfig(batch_size=512, lp_epochs=50, recon_images=1024, ft_epochs=20)),
    # tiny model and data so that a whole pipeline finishes in seconds on 2 CPU cores (tests, CI)
    "smoke": dict(model=_SMOKE_MODEL,
                  train=TrainConfig(epochs=2, batch_size=16, blr=1.5e-3, warmup_epochs=1, max_images=128),
                  eval=EvalConfig(batch_size=64, lp_epochs=5, ft_epochs=2, ft_warmup_epochs=0.5, max_train=128, max_test=128,
                                  recon_images=8, **_FT_LIGHT)),
}

DATASETS = ("stl10", "fashion_mnist", "cifar10", "folder", "synthetic")


def preset_summary(name: str) -> str:
    """'fast (96 px)': a preset's name and image size, for lists that must name every preset."""
    return f"{name} ({PRESETS[name]['model'].img_size} px)"


def presets_table() -> str:
    """Every preset as a markdown row, read from PRESETS (docs/reference.md carries it; a test checks)."""
    rows = ["| preset | image, patch | encoder (wide x deep, heads); decoder | pretraining | probe, fine-tuning |",
            "|---|---|---|---|---|"]
    for name, p in PRESETS.items():
        m, t, e = p["model"], p["train"], p["eval"]
        images = f"first {t.max_images:,}" if t.max_images else "all"
        rows.append(f"| `{name}` | {m.img_size} px, {m.patch_size} ({(m.img_size // m.patch_size) ** 2} patches) | "
                    f"{m.embed_dim} x {m.depth} ({m.num_heads}); {m.decoder_embed_dim} x {m.decoder_depth} | batch "
                    f"{t.batch_size}, {t.epochs} epochs of {images} images, blr {t.blr:g} | LP {e.lp_epochs} epochs, "
                    f"FT {e.ft_epochs} epochs{', official augmentation' if e.ft_randaug_magnitude else ''} |")
    return "\n".join(rows) + "\n"


def _choose(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")


def make_config(variant: str = "original", preset: str = "paper", dataset: str = "stl10",
                seed: int = 0, overrides: dict | None = None) -> PretrainConfig:
    """Build and validate the config of `variant` under `preset`, then apply dotted overrides."""
    _choose("variant", variant, VARIANTS)
    _choose("preset", preset, PRESETS)
    _choose("dataset", dataset, DATASETS)
    cfg = PretrainConfig(variant=VARIANTS[variant], dataset=dataset, preset=preset, seed=seed,
                         **PRESETS[preset])
    cfg = replace(cfg, model=replace(cfg.model, **VARIANT_MODEL.get(variant, {})))
    overrides = {k: _tuples(v) for k, v in (overrides or {}).items()}  # JSON lists and tuples name a variant alike
    changed = [k for k in overrides if k.startswith("variant.") and k != "variant.name"]
    if changed and "variant.name" not in overrides:  # a changed variant must not carry the old name
        overrides["variant.name"] = variant + "".join(f"+{k[8:]}={overrides[k]}" for k in sorted(changed))
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def apply_overrides(cfg, overrides: dict):
    """Return cfg with dotted keys replaced, e.g. {'train.epochs': 3, 'model.img_size': 96}."""
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        names = {f.name for f in fields(cfg)}
        if head not in names:
            raise ValueError(f"unknown config key {key!r}; valid: {', '.join(sorted(names))}")
        current = getattr(cfg, head)
        if rest:
            if not is_dataclass(current):
                raise ValueError(f"config key {head!r} has no field {rest!r}")
            value = apply_overrides(current, {rest: value})
        else:
            value = _coerce(value, current, key)
        cfg = replace(cfg, **{head: value})
    return cfg


def _coerce(value, current, key):
    """Turn command-line strings into the type of the field they replace."""
    if not isinstance(value, str) or isinstance(current, str):
        return tuple(value) if isinstance(current, tuple) else value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(type(c)(v) for c, v in zip(current, value.split(",")))
        return type(current)(value)
    except ValueError:
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {type(current).__name__}") from None


def validate(cfg: PretrainConfig) -> None:
    """Raise ValueError with one clear sentence for the first bad value found."""
    m, v, t, e = cfg.model, cfg.variant, cfg.train, cfg.eval
    checks = [
        (m.img_size > 0 and m.patch_size > 0 and m.img_size % m.patch_size == 0,
         f"model.img_size {m.img_size} must be a positive multiple of model.patch_size {m.patch_size}"),
        (m.embed_dim % m.num_heads == 0 and m.decoder_embed_dim % m.decoder_num_heads == 0,
         "embed dims must be divisible by their numbers of heads"),
        (0 <= v.mask_ratio < 1 and 0 <= v.mask_ratio_start < 1,
         f"mask ratios must lie in [0, 1): got start {v.mask_ratio_start}, end {v.mask_ratio}"),
        (0 <= v.mask_schedule_frac <= 1, "variant.mask_schedule_frac must lie in [0, 1]"),
        (v.laplacian_form in ("interior", "replicate"), "variant.laplacian_form must be interior or replicate"),
        (v.target_blur >= 0, f"variant.target_blur must be >= 0 (0 = off), got {v.target_blur}"),
        (v.mask_schedule in SCHEDULES,
         f"unknown mask schedule {v.mask_schedule!r}; valid: {', '.join(SCHEDULES)}"),
        (v.laplacian_weight >= 0 and v.uniformity_weight >= 0,
         f"loss weights must be >= 0 (0 switches a term off): got laplacian {v.laplacian_weight}, "
         f"uniformity {v.uniformity_weight}"),
        (v.uniformity_form in ("wang_isola", "umae"), "variant.uniformity_form must be wang_isola or umae"),
        (all(len(t) == 2 and t[0] in TERMS for t in v.extra_terms),
         f"variant.extra_terms must be (name, weight) pairs of registered loss terms ({', '.join(TERMS)}; "
         f"losses.register_term adds one), got {v.extra_terms!r}"),
        (all(len(t) != 2 or float(t[1]) >= 0 for t in v.extra_terms),
         f"extra term weights must be >= 0, got {v.extra_terms!r}"),
        (v.uniformity_features in ("mean", "cls"), "variant.uniformity_features must be mean or cls"),
        (t.epochs > 0, f"train.epochs must be positive, got {t.epochs}"),
        (t.batch_size > 0 and e.batch_size > 0,
         f"batch sizes must be positive, got {t.batch_size} and {e.batch_size}"),
        (t.blr > 0 and t.weight_decay >= 0 and t.warmup_epochs >= 0 and t.save_every > 0,
         "train.blr must be > 0, weight_decay and warmup_epochs >= 0, save_every > 0"),
        (t.warmup_epochs < t.epochs,
         f"train.warmup_epochs ({t.warmup_epochs}) must be shorter than train.epochs ({t.epochs})"),
        (v.uniformity_weight == 0 or t.batch_size >= 2,
         "the uniformity term compares samples within a batch: train.batch_size must be >= 2"),
        (t.max_images >= 0, "train.max_images must be >= 0 (0 = all)"),
        (t.log_every >= 0, "train.log_every must be >= 0 (0 = automatic)"),
        (t.monitor_points >= 0 and all(s > 0 for s in t.monitor_at) and t.monitor_bank > 0 and t.monitor_queries > 0,
         "train.monitor_points must be >= 0 (0 = off), train.monitor_at positive steps, monitor_bank and "
         "monitor_queries > 0"),
        (t.accum_iter >= 1 and t.batch_size % t.accum_iter == 0,
         f"train.accum_iter ({t.accum_iter}) must be >= 1 and divide train.batch_size ({t.batch_size})"),
        (t.accum_iter == 1 or (v.uniformity_weight == 0 and not v.extra_terms),
         "the uniformity term (and any registered term, which may compare samples) sees the whole batch, which "
         "train.accum_iter > 1 would split into micro-batches that never meet: use accum_iter 1 (more processes "
         "under torchrun split the batch without this problem)"),
        (e.pool in ("cls", "mean"), "eval.pool must be cls or mean"),
        (e.lp_epochs > 0 and e.ft_epochs > 0 and e.knn_k > 0,
         f"eval.lp_epochs, eval.ft_epochs and eval.knn_k must be positive, got {e.lp_epochs}, {e.ft_epochs}, {e.knn_k}"),
        (e.max_train >= 0 and e.max_test >= 0 and e.recon_images > 0, "eval image counts must be >= 0"),
        (e.ft_mixup >= 0 and e.ft_cutmix >= 0 and 0 <= e.ft_label_smoothing < 1 and 0 <= e.ft_drop_path < 1,
         "eval.ft_mixup/ft_cutmix must be >= 0, ft_label_smoothing and ft_drop_path in [0, 1)"),
        (0 <= e.ft_randaug_magnitude <= 10 and e.ft_randaug_mstd >= 0 and e.ft_randaug_ops >= 1 and 0 <= e.ft_reprob <= 1,
         "eval.ft_randaug_magnitude must be in [0, 10] (timm's scale), ft_randaug_mstd >= 0, ft_randaug_ops >= 1, "
         "ft_reprob in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    L = (m.img_size // m.patch_size) ** 2
    if int(L * (1 - max(v.mask_ratio, v.mask_ratio_start))) < 1:
        raise ValueError("the mask ratio leaves no visible patch at this image and patch size")
    if int(L * (1 - min(v.mask_ratio, v.mask_ratio_start))) >= L:
        raise ValueError(f"a mask ratio of {min(v.mask_ratio, v.mask_ratio_start)} masks no patch out of {L}: "
                         "there would be nothing to reconstruct; raise it")


def to_dict(cfg) -> dict:
    """Plain, JSON- and weights_only-safe dict (tuples become lists)."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return plain(asdict(cfg))


def _tuples(x):
    """JSON lists back to the tuples a frozen config holds (nested: extra_terms)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def from_dict(d: dict) -> PretrainConfig:
    sub = {"model": ModelConfig, "variant": VariantConfig, "train": TrainConfig, "eval": EvalConfig}
    kwargs = {}
    for k, v in d.items():
        if k in sub:
            cls = sub[k]
            known = {f.name: f for f in fields(cls)}
            kwargs[k] = cls(**{n: _tuples(x) for n, x in v.items() if n in known})
        else:
            kwargs[k] = v
    return PretrainConfig(**kwargs)


# what may differ between a checkpoint and the resuming config without changing the trajectory
# (precision, the other thing train.amp decides, is checked on its own when resuming)
RESUME_FREE = ("train.save_every", "train.amp", "train.log_every", "train.accum_iter", "train.tensorboard",
               "train.monitor_", "eval.")


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """['train.epochs: 2 -> 3', ...] for the keys that differ between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
