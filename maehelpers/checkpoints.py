"""Models from what a run leaves: the MAE of a config, and the encoder or the whole MAE of a run
folder's checkpoint (loaded with weights_only=True, as every file here)."""
from dataclasses import asdict, replace
from pathlib import Path

from .config import PretrainConfig, from_dict
from .model import MAE, adapt_pos_embeds
from .runs import CheckpointError, load_torch


def build_model(cfg: PretrainConfig) -> MAE:
    """The MAE of a config (model sizes and norm_pix_loss), freshly initialised."""
    return MAE(**asdict(cfg.model))


def load_run_checkpoint(path):
    """A maehelpers checkpoint (full or encoder-only) and its config; CheckpointError otherwise."""
    obj = load_torch(path)
    if "model" not in obj or "config" not in obj:
        raise CheckpointError(f"{path} has no 'model' and 'config' entries: not a maehelpers checkpoint")
    return obj, from_dict(obj["config"])


def load_encoder(path, img_size: int | None = None):
    """Load `encoder_pretrained.pt` (or a full checkpoint) into an MAE whose encoder holds those
    weights; position embeddings are interpolated when img_size differs from the checkpoint's."""
    obj, cfg = load_run_checkpoint(path)
    if img_size and img_size != cfg.model.img_size:
        cfg = replace(cfg, model=replace(cfg.model, img_size=img_size))
    model = build_model(cfg)
    state = adapt_pos_embeds(obj["model"], model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if k.startswith(("patch_embed.", "cls_token", "blocks.", "norm."))] + unexpected
    if bad:
        raise CheckpointError(f"{path} does not fit the model of its own config: {bad[:5]}")
    return model, cfg


def load_mae(run_dir):
    """The full MAE (decoder included) of a run folder, from its checkpoint_last.pt."""
    ckpt, cfg = load_run_checkpoint(Path(run_dir) / "checkpoint_last.pt")
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg
