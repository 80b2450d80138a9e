"""The study's arms (a variant and its overrides, as data), the stages' registered arms and seeds,
and the config of one (arm, seed, steps)."""
from ..config import make_config


HEADLINE = "knn_top1_mean"


METRICS = ("lp_top1_mean", "knn_top1_mean", "lp_top1_cls", "knn_top1_cls", "ft_top1", "nmse_masked",
           "psnr_masked", "psnr_masked_floor", "hf_error_masked", "pretrain_time_s")


def _uniformity_arms():
    """Both forms x both features x 0.1, 1, 10, 100 times today's weight (0.01). The U-MAE form at
    1.0 is U-MAE's pretraining-script strength (lambda 0.01 on (cos / tau)^2 with tau 0.1)."""
    arms = {}
    for form, short in (("wang_isola", "wi"), ("umae", "umae")):
        for feat in ("mean", "cls"):
            for times, w in (("0.1x", 0.001), ("1x", 0.01), ("10x", 0.1), ("100x", 1.0)):
                arms[f"unif_{short}_{feat}_{times}"] = ("original", {
                    "variant.uniformity_weight": w, "variant.uniformity_form": form,
                    "variant.uniformity_features": feat})
    return arms


# arm -> (variant in VARIANTS, dotted overrides): data, not code branches
ARMS = {
    "original": ("original", {}),
    "improved": ("improved", {}),
    "curriculum": ("curriculum", {}),
    "decreasing": ("decreasing", {}),
    "random_ratio": ("random_ratio", {}),
    "lowpass": ("lowpass", {}),
    "original_pixels": ("original_pixels", {}),   # plain-pixel target: what norm-pix targets buy on the probes
    "lap_interior_1x": ("laplacian", {}),
    "lap_interior_10x": ("laplacian", {"variant.laplacian_weight": 0.5}),
    "lap_replicate_1x": ("laplacian", {"variant.laplacian_form": "replicate"}),
    "lap_replicate_10x": ("laplacian", {"variant.laplacian_form": "replicate", "variant.laplacian_weight": 0.5}),
    **_uniformity_arms(),
    # improved without one of its three additions: with curriculum, lap_interior_1x, unif_wi_mean_1x,
    # original and improved they make the full 2 x 2 x 2 factorial (benchmarks/preregistered.md)
    "improved_no_curriculum": ("improved", {"variant.mask_schedule": "constant", "variant.mask_ratio_start": 0.75}),
    "improved_no_laplacian": ("improved", {"variant.laplacian_weight": 0.0}),
    "improved_no_uniformity": ("improved", {"variant.uniformity_weight": 0.0}),
}


BASELINES = ("random", "raw_pixels")


# the held-out confirmation (benchmarks/preregistered.md): arms, fresh seeds no earlier record used
HELDOUT_ARMS = ("original", "improved", "unif_umae_mean_100x", "unif_wi_mean_1x", "improved_no_curriculum",
                "improved_no_laplacian", "improved_no_uniformity", "curriculum", "lap_interior_1x", "lowpass")


HELDOUT_SEEDS = tuple(range(100, 110))


# the long-budget stage (benchmarks/preregistered.md, "Where MAE starts to work"): 16,000 steps, fresh
# seeds, scored on the held-out split, fine-tuned, beside scratch and raw pixels with the same seeds
LONG_ARMS = ("original", "improved", "unif_umae_mean_100x")


LONG_SEEDS = (200, 201, 202)


LONG_STEPS = 16000


# its k-NN monitor: the whole probe split as bank and every validation image as query, so a point is the
# validation k-NN of the encoder at that step; points at doublings and at 6,000 and 12,000
LONG_MONITOR = {"train.monitor_at": (500, 1000, 2000, 4000, 6000, 8000, 12000, 16000),
                "train.monitor_bank": 5000, "train.monitor_queries": 5000}


ENCODER_METRICS = ("lp_top1_mean", "knn_top1_mean", "lp_top1_cls", "knn_top1_cls")


def steps_per_epoch(settings) -> int:
    """Of the preset, whose train.max_images fixes the pretraining set (the ablation preset: 125)."""
    t = make_config("original", settings.preset, settings.dataset).train
    return t.max_images // t.batch_size


def arm_spec(arm: str, settings) -> tuple:
    """(variant, overrides) of an arm: the project's ARMS, or arms given to compare() / --arms-file."""
    extra = getattr(settings, "extra_arms", None) or {}
    if arm not in extra and arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join([*ARMS, *extra, *BASELINES])}")
    return extra.get(arm) or ARMS[arm]


def arm_config(arm: str, settings, seed: int, steps: int):
    variant, overrides = arm_spec(arm, settings)
    epochs = steps // steps_per_epoch(settings)
    return make_config(variant, settings.preset, settings.dataset, seed, {
        **overrides, "train.epochs": epochs, "train.warmup_epochs": 0.05 * epochs, "eval.pool": "mean",
        **getattr(settings, "monitor", {})})
