"""Pretraining losses: the official masked MSE and the two terms of the improved variant.

Spaces, stated once: every reconstruction term compares prediction and target in the SAME space,
the model's target space (`MAE.target`): pixels of the normalised input, further normalised per
patch when `norm_pix_loss` is on. (An earlier implementation of this project's idea compared a
per-patch-normalised prediction with raw pixels, which penalises the model for being right.)
Precision: under autocast the target, the loss terms and their reductions run in fp32.

Terms beyond the masked MSE are plain functions registered by name, built-in and user ones alike:

    @register_term("var_floor")
    def var_floor(x: TermInputs) -> torch.Tensor:          # a scalar
        return F.relu(1 - x.pooled("mean").std(dim=0)).mean()

    make_config("original", "smoke", "synthetic", 0, {"variant.extra_terms": (("var_floor", 0.1),)})

The objective is mse + sum of weight * term over `loss_terms(variant)`: the built-in Laplacian and
uniformity terms come from their weight fields, user terms from `variant.extra_terms`.
"""
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad
from .model import pool_tokens

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
    return upper_logsumexp(-t * sq, upper, masked=z.device.type != "cpu") - math.log(n * (n - 1) / 2)


def upper_logsumexp(x, upper, masked: bool):
    """logsumexp of x's entries where `upper` is True. masked: the others set to -inf (exp gives 0, so
    the same value and gradient), with no host wait; indexing with a boolean mask makes the host wait
    for the GPU, since its size depends on the data. The CPU keeps the index: it costs no wait there,
    and it keeps the committed CPU records reproducible to the bit (the two forms sum in different
    orders and now and then differ in the last bit)."""
    if masked:
        return torch.logsumexp(x.masked_fill(~upper, -math.inf).flatten(), dim=0)
    return torch.logsumexp(x[upper], dim=0)


def uniformity_umae(features):
    """U-MAE (Zhang et al. 2022): mean over pairs i != j of (z_i . z_j)^2, z L2-normalised.
    1 for fully collapsed features, about 1/D for spread-out ones."""
    z = F.normalize(features.float(), dim=-1)
    sim2 = (z @ z.T).pow(2)
    n = z.shape[0]
    return (sim2.sum() - sim2.diagonal().sum()) / (n * (n - 1))


UNIFORMITY = {"wang_isola": uniformity_wang_isola, "umae": uniformity_umae}


# ----------------------------------------------------------------------------- registered terms
class LossTermError(ValueError):
    """A loss term is unknown, or returned something other than a finite scalar."""


@dataclass(frozen=True)
class TermInputs:
    """What every loss term is given, in fp32 (also under autocast)."""
    pred: torch.Tensor     # (N, L, p*p*C) the decoder's prediction, in the target space
    target: torch.Tensor   # (N, L, p*p*C) the target: pixels, normalised per patch with norm_pix_loss
    mask: torch.Tensor     # (N, L) 1 where a patch was removed
    tokens: torch.Tensor   # (N, 1 + visible, D) the encoder's tokens after its final norm, cls first
    patch_size: int
    in_chans: int
    variant: object        # the VariantConfig, for settings a term reads (e.g. uniformity_t)

    def pooled(self, pool: str = "mean") -> torch.Tensor:
        """(B, D) pooled features ('mean' of the visible tokens, or 'cls') of the WHOLE batch: under
        torchrun the rows of every process, gradients flowing back to each one's own. A term that
        compares samples with each other should use this rather than `tokens`."""
        return gather_with_grad(pool_tokens(self.tokens, pool))


TERMS = {}


def register_term(name: str):
    """Decorator: make fn(TermInputs) -> scalar tensor available to variants by name."""
    def add(fn):
        TERMS[name] = fn
        return fn
    return add


@register_term("laplacian")
def laplacian_term(x: TermInputs) -> torch.Tensor:
    return laplacian_loss(x.pred, x.target, x.mask, x.patch_size, x.in_chans, x.variant.laplacian_form)


@register_term("uniformity")
def uniformity_term(x: TermInputs) -> torch.Tensor:
    features, v = x.pooled(x.variant.uniformity_features), x.variant
    form = UNIFORMITY[v.uniformity_form]
    return form(features, v.uniformity_t) if v.uniformity_form == "wang_isola" else form(features)


def loss_terms(variant) -> list:
    """[(name, weight)] of the terms a variant adds to the MSE: the built-in ones from their weight
    fields (0 = off), then variant.extra_terms in their order."""
    builtin = [("laplacian", variant.laplacian_weight), ("uniformity", variant.uniformity_weight)]
    return [(n, w) for n, w in builtin if w > 0] + [(n, float(w)) for n, w in variant.extra_terms]


def run_term(name: str, x: TermInputs) -> torch.Tensor:
    if name not in TERMS:
        raise LossTermError(f"unknown loss term {name!r}; registered: {', '.join(TERMS)} (register_term adds one)")
    out = TERMS[name](x)
    if not torch.is_tensor(out) or out.ndim != 0:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise LossTermError(f"loss term {name!r} must return a scalar tensor; it returned {shape}")
    return out


def pretrain_loss(model, imgs, mask_ratio: float, variant, noise=None):
    """The full pretraining objective of a variant. Returns (total, parts, pred, mask):
    total = masked MSE + sum of weight * term over loss_terms(variant)."""
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio, noise)
    pred = model.forward_decoder(latent, ids_restore)
    with torch.autocast(imgs.device.type, enabled=False):  # targets and losses in fp32
        target = model.target(gaussian_blur(imgs.float(), variant.target_blur))
        x = TermInputs(pred.float(), target, mask, latent.float(), model.patch_embed.patch_size, model.in_chans, variant)
        parts = {"mse": masked_mse(x.pred, x.target, x.mask)}
        total = parts["mse"]
        for name, weight in loss_terms(variant):
            parts[name] = run_term(name, x)
            total = total + weight * parts[name]
    return total, parts, pred, mask


@torch.no_grad()
def check_terms(model, imgs, variant) -> None:
    """Run every term of the variant once on a few images before training, so a term that fails,
    returns a non-scalar or a non-finite value is named before any work."""
    noise = torch.rand(imgs.shape[0], model.num_patches, generator=torch.Generator().manual_seed(0)).to(imgs.device)
    _, parts, _, _ = pretrain_loss(model, imgs, variant.mask_ratio, variant, noise)
    bad = [name for name, value in parts.items() if not math.isfinite(value.item())]
    if bad:
        raise LossTermError(f"loss term {bad[0]!r} is {parts[bad[0]].item()} on the first images, before training: "
                            "check the term (a division by a zero spread, a log of 0)")
