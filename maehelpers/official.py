"""A quick look at the official MAE: its ViT-B visualisation checkpoint next to the series' models.

facebookresearch/mae publishes `mae_visualize_vit_base.pth`, a ViT-B/16 MAE at 224 px trained
without the norm-pix target, so it predicts (ImageNet-normalised) pixels that can be shown as they
are. Its parameter names are the ones this package's `MAE` uses, so it loads as it is. Without a
network, `load_official` says so and returns None; callers skip the comparison.
"""
import socket
import urllib.error
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import prepare
from .metrics import fixed_noise, reconstruct
from .model import MAE

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_base.pth"
VIT_B = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
             decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, norm_pix_loss=False)


def official_model(state_dict: dict, arch: dict = VIT_B) -> MAE:
    """An MAE of `arch` holding an official state dict (the checkpoint's 'model' entry or the dict
    itself); a name or shape that does not fit is refused with the names that differ."""
    state_dict = state_dict.get("model", state_dict)
    model = MAE(**arch)
    ours = model.state_dict()
    missing, extra = sorted(set(ours) - set(state_dict)), sorted(set(state_dict) - set(ours))
    wrong = [k for k in ours if k in state_dict and state_dict[k].shape != ours[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"not an official MAE checkpoint of this size: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, other shapes {wrong[:5]}")
    model.load_state_dict(state_dict)
    return model.eval()


def load_official(cache_dir="data/official", url: str = OFFICIAL_URL, timeout_s: float = 30.0,
                  arch: dict = VIT_B) -> MAE | None:
    """The official model, downloaded once into cache_dir (about 450 MB: 112 M parameters in fp32); None offline."""
    path = Path(cache_dir) / Path(url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)  # torch.hub's downloader takes no timeout of its own
        try:
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except (urllib.error.URLError, OSError) as e:
            print(f"The official checkpoint could not be downloaded ({e}); without a network the "
                  f"comparison is skipped. With one, rerun this cell, or put the file at {path}.")
            return None
        finally:
            socket.setdefaulttimeout(previous)
    return official_model(torch.load(path, map_location="cpu", weights_only=True), arch)


def matched_noise(noise: torch.Tensor, grid_to: int) -> torch.Tensor:
    """Mask noise on one patch grid resampled (nearest) to another, so that both models lose the
    same image regions (exactly when one grid is a multiple of the other, up to the rounding of
    the kept count). A tiny per-patch offset breaks the ties between copies of one value."""
    n, L = noise.shape
    g = round(L ** 0.5)
    grid = noise.view(n, 1, g, g)
    resampled = F.interpolate(grid, size=(grid_to, grid_to), mode="nearest").flatten(1)
    return resampled + 1e-6 * torch.linspace(0, 1, grid_to * grid_to)


@torch.no_grad()
def side_by_side(ours: MAE, official: MAE, images_u8, img_size: int, mask_ratio: float = 0.75, seed: int = 0):
    """(ours, official): each reconstruct()'s display tensors for the same images, with masks that
    cover the same regions: our model's evaluation noise, resampled to the official grid."""
    noise = fixed_noise(len(images_u8), ours.num_patches, seed)
    out = []
    for model, size, z in ((ours, img_size, noise), (official, official.patch_embed.img_size,
                                                     matched_noise(noise, official.patch_embed.grid_size))):
        device = next(model.parameters()).device
        out.append(reconstruct(model, prepare(images_u8, size, device), mask_ratio, z.to(device)))
    return out
