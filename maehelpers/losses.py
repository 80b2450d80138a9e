"""Pretraining losses: the official masked MSE and the two terms of the improved variant.

Spaces, stated once: every reconstruction term compares prediction and target in the SAME space,
the model's target space (`MAE.target`): pixels of the normalised input, further normalised per
patch when `norm_pix_loss` is on. (An earlier implementation of this project's idea compared a
per-patch-normalised prediction with raw pixels, which penalises the model for being right.)
Precision: under autocast the target, the loss terms and their reductions run in fp32.
"""
import functools
import math

import torch
import torch.nn.functional as F

LAPLACIAN_3x3 = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


@functools.lru_cache(maxsize=None)
def _laplacian_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The kernel on the training device, made once: a copy per step would make the GPU wait."""
    return LAPLACIAN_3x3.to(device, dtype)


def masked_mean(per_patch, mask):
    """Average of a (N, L) per-patch quantity over masked patches (mask = 1 where removed)."""
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred, target, mask):
    """MSE per patch, averaged over the removed patches only (official MAE loss)."""
    return masked_mean(((pred - target) ** 2).mean(dim=-1), mask)


def patch_laplacian(patches, patch_size: int, in_chans: int, form: str = "interior"):
    """Laplacian (3x3) of every patch on its own, (N, L, p*p*C) ->
    'interior': (N, L, C*(p-2)^2), no padding: only pixels whose 3x3 neighbourhood lies in the patch;
    'replicate': (N, L, C*p*p), the patch's own edge pixels repeated outwards, so border pixels count.

    Working inside each patch keeps visible neighbours and per-patch normalisation seams out of it.
    """
    N, L, _ = patches.shape
    x = patches.reshape(N * L, patch_size, patch_size, in_chans).permute(0, 3, 1, 2)
    if form == "replicate":
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    kernel = _laplacian_kernel(x.device, x.dtype).expand(in_chans, 1, 3, 3)
    return F.conv2d(x, kernel, groups=in_chans).reshape(N, L, -1)


def laplacian_loss(pred, target, mask, patch_size: int, in_chans: int, form: str = "interior"):
    """Masked high-frequency loss: L1 between the Laplacians of prediction and target,
    averaged per patch, then over removed patches (both in the model's target space)."""
    diff = patch_laplacian(pred, patch_size, in_chans, form) - patch_laplacian(target, patch_size, in_chans, form)
    return masked_mean(diff.abs().mean(dim=-1), mask)


def gaussian_blur(imgs, sigma: float):
    """Separable Gaussian low-pass of (N, C, H, W) images, radius ceil(2 sigma), reflect padding."""
    if sigma <= 0:
        return imgs
    r = max(1, math.ceil(2 * sigma))
    x = torch.arange(-r, r + 1, dtype=imgs.dtype, device=imgs.device)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k, c = k / k.sum(), imgs.shape[1]
    out = F.conv2d(F.pad(imgs, (r, r, r, r), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def uniformity_wang_isola(features, t: float = 2.0):
    """Wang & Isola (2020): log mean_{i<j} exp(-t |z_i - z_j|^2) on L2-normalised features.
    Lower is more uniform; its minimum depends on batch size and dimension (it is negative).

    From one matmul: |z_i - z_j|^2 = 2 - 2 z_i.z_j for unit vectors, and the log of the mean over
    the n(n-1)/2 pairs as a logsumexp over the upper triangle. Memory O(n^2); torch.pdist's CUDA
    backward takes O(n^2 d) (13 GB at a batch of 2048 x 768)."""
    z = F.normalize(features.float(), dim=-1)
    n = z.shape[0]
    sq = (2 - 2 * z @ z.T).clamp_min(0)
    upper = torch.ones(n, n, dtype=torch.bool, device=z.device).triu(1)
    return torch.logsumexp(-t * sq[upper], dim=0) - math.log(n * (n - 1) / 2)


def uniformity_umae(features):
    """U-MAE (Zhang et al. 2022): mean over pairs i != j of (z_i . z_j)^2, z L2-normalised.
    1 for fully collapsed features, about 1/D for spread-out ones."""
    z = F.normalize(features.float(), dim=-1)
    sim2 = (z @ z.T).pow(2)
    n = z.shape[0]
    return (sim2.sum() - sim2.diagonal().sum()) / (n * (n - 1))


UNIFORMITY = {"wang_isola": uniformity_wang_isola, "umae": uniformity_umae}


def pretrain_loss(model, imgs, mask_ratio: float, variant, noise=None):
    """The full pretraining objective of a variant. Returns (total, parts, pred, mask).

    total = masked MSE + laplacian_weight * Laplacian + uniformity_weight * uniformity, where the
    uniformity term sees the encoder's output on the visible patches (`variant.uniformity_features`:
    'mean' of visible patch tokens, or the 'cls' token; both after the final norm).
    """
    from .distributed import gather_with_grad
    from .model import pool_tokens
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
    pred = model.forward_decoder(latent, ids_restore)
    with torch.autocast(imgs.device.type, enabled=False):  # targets and losses in fp32
        target = model.target(gaussian_blur(imgs.float(), variant.target_blur))
        pred32 = pred.float()
        mse = masked_mse(pred32, target, mask)
        parts = {"mse": mse}
        total = mse
        if variant.laplacian_weight > 0:
            p, c = model.patch_embed.patch_size, model.in_chans
            parts["laplacian"] = laplacian_loss(pred32, target, mask, p, c, variant.laplacian_form)
            total = total + variant.laplacian_weight * parts["laplacian"]
        if variant.uniformity_weight > 0:
            # under torchrun: the whole global batch, gradients flowing back to each rank's rows
            features = gather_with_grad(pool_tokens(latent, variant.uniformity_features).float())
            if variant.uniformity_form == "wang_isola":
                parts["uniformity"] = uniformity_wang_isola(features, variant.uniformity_t)
            else:
                parts["uniformity"] = UNIFORMITY[variant.uniformity_form](features)
            total = total + variant.uniformity_weight * parts["uniformity"]
    return total, parts, pred, mask
