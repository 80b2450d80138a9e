"""maehelpers: a paper-faithful Masked Autoencoder, its improved variant, and their evaluation.

One concern per module (docs/reference.md#the-package lists them): the model and what it learns
(model, masking, losses, config), data (data, ft_augment), training (pretrain, optim, train_log,
monitor, distributed), devices and files (devices, checkpoints, runs, paths, generated), judging an
encoder (probes, finetune, evaluate, metrics), showing (viz, widgets, walkthrough, official),
running (notebook, series, cli, export), and the seeded study (the `study` subpackage).
"""
from .config import DATASETS, PRESETS, VARIANTS, PretrainConfig, make_config
from .data import ImageSet, load_dataset
from .model import MAE
from .checkpoints import load_encoder, load_mae
from .devices import pick_device
from . import study  # noqa: E402  (mh.study.compare in notebooks)

__all__ = ["MAE", "PretrainConfig", "make_config", "VARIANTS", "PRESETS", "DATASETS", "ImageSet",
           "load_dataset", "load_encoder", "load_mae", "pick_device", "study"]
