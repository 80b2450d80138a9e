"""maehelpers: a paper-faithful Masked Autoencoder, its improved variant, and their evaluation."""
from .config import DATASETS, PRESETS, VARIANTS, PretrainConfig, make_config
from .data import ImageSet, load_dataset
from .model import MAE
from .pretrain import load_encoder, pick_device, pretrain

__all__ = ["MAE", "PretrainConfig", "make_config", "VARIANTS", "PRESETS", "DATASETS", "ImageSet",
           "load_dataset", "pretrain", "load_encoder", "pick_device"]
