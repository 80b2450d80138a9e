"""maehelpers: a paper-faithful Masked Autoencoder, its improved variant, and their evaluation.

Modules: model (MAE), masking (ratio schedules), losses, config (variants, presets), data,
pretrain (`pretrain.pretrain`), evaluate, metrics, viz, widgets, runs (run folders), notebook
(what the notebooks call), runner (papermill series), study / study_report / stats (the seeded
study), distributed (torchrun), official (the authors' checkpoint), explain, cli.
"""
from .config import DATASETS, PRESETS, VARIANTS, PretrainConfig, make_config
from .data import ImageSet, load_dataset
from .model import MAE
from .pretrain import load_encoder, load_mae, pick_device
from . import study  # noqa: E402  (mh.study.compare in notebooks)

__all__ = ["MAE", "PretrainConfig", "make_config", "VARIANTS", "PRESETS", "DATASETS", "ImageSet",
           "load_dataset", "load_encoder", "load_mae", "pick_device", "study"]
